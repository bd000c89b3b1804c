"""MP4 camera streams of LeRobot datasets, with PyAV: frame-exact decoding of an episode's slice of a (possibly
concatenated) video, and encoding of store frames for export.

LeRobot places episode k of a concatenated mp4 at ``from_timestamp`` (the summed durations of the episodes
before it) and asks for frame i at ``from_timestamp + timestamp_i``. Decoding here is sequential: a
:class:`VideoReader` keeps its container open and continues where the previous episode stopped, because
re-opening and seeking per episode costs more than decoding the few frames up to the next keyframe.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.common import one_line
from genctl.errors import DataError

# Encoders tried for export, best first. LeRobot records AV1 (libsvtav1) by default; H.264 loads everywhere.
ENCODERS = {"av1": ("libsvtav1", "libaom-av1"), "h264": ("libx264", "h264"), "hevc": ("libx265",)}


def _av() -> Any:
    try:
        import av
    except ImportError as e:  # pyproject lists it; a broken install should still say what is missing
        raise DataError(f"LeRobot videos need PyAV (pip install av): {e}") from None
    return av


def codec_support() -> dict[str, dict[str, list[str]]]:
    """Which of the LeRobot codecs this PyAV build can encode / decode (names of the libav codecs)."""
    av = _av()
    out: dict[str, dict[str, list[str]]] = {}
    decoders = {"av1": ("libdav1d", "av1", "libaom-av1"), "h264": ("h264",), "hevc": ("hevc",)}
    for name in ENCODERS:
        enc = [c for c in ENCODERS[name] if _has(av, c, "w")]
        dec = [c for c in decoders[name] if _has(av, c, "r")]
        out[name] = {"encode": enc, "decode": dec}
    return out


class FrameConverter:
    """Pixel-format conversion with one reused swscale context on the calling thread.

    PyAV's ``frame.to_ndarray(format="rgb24")`` builds a new reformatter per frame and lets swscale pick its thread
    count (``threads=0``: auto), which starts and stops worker threads on every call: 150-1200 us of mostly kernel
    time per 96x96 frame on this machine, against ~10 us for the same conversion with a reused context and one
    thread (bit-identical output; measured in benchmarks/datasets.py)."""

    def __init__(self) -> None:
        from av.video.reformatter import VideoReformatter

        self._fmt = VideoReformatter()
        self._threads_kw = True

    def convert(self, frame: Any, fmt: str) -> Any:
        if self._threads_kw:
            try:
                return self._fmt.reformat(frame, format=fmt, threads=1)
            except TypeError:  # a PyAV without the threads argument (< 15): its default
                self._threads_kw = False
        return self._fmt.reformat(frame, format=fmt)

    def rgb(self, frame: Any) -> np.ndarray:
        return self.convert(frame, "rgb24").to_ndarray()


def _has(av: Any, codec: str, mode: str) -> bool:
    try:
        av.codec.Codec(codec, mode)
        return True
    except Exception:  # UnknownCodecError, or a codec that exists only the other way round
        return False


def pick_encoder(codec: str = "auto") -> tuple[str, str]:
    """(family, libav encoder) for ``auto`` (AV1 if the build has it, else H.264), ``av1``, ``h264`` or ``hevc``."""
    av = _av()
    families = ("av1", "h264") if codec == "auto" else (codec,)
    for fam in families:
        if fam not in ENCODERS:
            raise DataError(f"unknown video codec {codec!r}: expected auto, av1, h264 or hevc")
        for enc in ENCODERS[fam]:
            if _has(av, enc, "w"):
                return fam, enc
    raise DataError(f"this PyAV build has no encoder for {codec!r} (tried {', '.join(ENCODERS.get(codec, ()))})")


class VideoReader:
    """Sequential frame-exact reader of one camera's mp4 files (one reader per camera)."""

    def __init__(self, fps: float) -> None:
        self.av = _av()
        self.tol = 0.3 / fps  # frames are 1/fps apart: a third of that separates "this frame" from "the next"
        self.path: Path | None = None
        self._container: Any = None
        self._frames: Any = None
        self._stream: Any = None
        self._pending: tuple[float, Any] | None = None  # a frame read ahead by the previous episode
        self._pos = -1.0  # timestamp of the last frame handed out
        self._tb = 0.0
        self._convert = FrameConverter()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._frames = self._stream = self._pending = None
        self.path = None

    def _open(self, path: Path, start: float) -> None:
        self.close()
        if not path.is_file():
            raise DataError(f"{path}: missing video file (expected an mp4 for this camera)")
        try:
            self._container = self.av.open(str(path))
            self._stream = self._container.streams.video[0]
            # one codec thread: small frames do not decode faster with frame threads (measured 12.9k vs 12.2k
            # frames/s at 96x96), and the ingest runs one decoder per camera on its own thread instead
            self._stream.codec_context.thread_count = 1
            if start > self.tol:
                self._container.seek(max(int(start / self._stream.time_base) - 1, 0), stream=self._stream,
                                     backward=True, any_frame=False)
            self._frames = self._container.decode(self._stream)
            self._tb = float(self._stream.time_base)
        except DataError:
            raise
        except Exception as e:
            self.close()
            raise DataError(f"{path}: not a decodable video ({type(e).__name__}: {one_line(e)}); expected an mp4 with "
                            "one video stream (AV1, H.264 or HEVC)") from None
        self.path, self._pos = path, -1.0

    def _next(self) -> tuple[float, Any] | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        try:
            for frame in self._frames:
                if frame.pts is not None:
                    return frame.pts * self._tb, frame
        except Exception as e:
            raise DataError(f"{self.path}: video is corrupt or truncated ({type(e).__name__}: {one_line(e)})") from None
        return None

    def episode(self, path: Path, timestamps: np.ndarray, start: float, stop: float | None,
                where: str) -> np.ndarray:
        """(T, H, W, 3) uint8 frames shown at ``start + timestamps``; every frame of the video in
        [start, stop) must be one of them (``stop`` None: up to the end of the file)."""
        query = start + np.asarray(timestamps, np.float64)
        if path != self.path or query[0] < self._pos + self.tol:
            self._open(path, float(query[0]))
        out: np.ndarray | None = None
        end = np.inf if stop is None else stop - self.tol
        i = 0
        while True:
            item = self._next()
            if item is None:
                break
            t, frame = item
            if i == 0 and t < start - self.tol:
                continue  # before this episode (decoded from the keyframe the seek landed on)
            if t >= end:
                self._pending = item  # the next episode's first frame
                break
            if i == len(query):
                raise DataError(f"{where}: frame counts disagree: video {path} has more frames in "
                                f"[{start:.4f}s, {'end' if stop is None else f'{stop:.4f}s'}) than the "
                                f"{len(query)} parquet rows of the episode")
            if abs(t - query[i]) > self.tol:
                raise DataError(f"{where}: frame counts disagree: video {path} has a frame at {t:.4f}s where "
                                f"parquet row {i} expects {query[i]:.4f}s (from_timestamp + timestamp)")
            rgb = self._convert.rgb(frame)
            if out is None:
                out = np.empty((len(query), *rgb.shape), np.uint8)
            elif rgb.shape != out.shape[1:]:
                raise DataError(f"{path}: frame size changes from {out.shape[1:3]} to {rgb.shape[:2]}")
            out[i] = rgb
            self._pos = t
            i += 1
        if i < len(query):
            raise DataError(f"{where}: frame counts disagree: video {path} has {i} frames from {start:.4f}s, "
                            f"expected {len(query)} (the episode's parquet rows)")
        return out


class CameraDecoders:
    """Every video camera of a dataset decoding on its own thread (a single-thread executor per camera, so its
    :class:`VideoReader` sees the episodes in order); PyAV releases the GIL while decoding."""

    def __init__(self, cameras: list[str], fps: float) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.readers = {k: VideoReader(fps) for k in cameras}
        self.pools = {k: ThreadPoolExecutor(1, thread_name_prefix=f"genctl-video-{i}") for i, k in enumerate(cameras)}

    def submit(self, video_meta: dict[str, tuple[Path, float, float | None]], table: Any, where: str
               ) -> dict[str, Any]:
        """Start decoding one episode (``video_meta[camera]`` = (mp4, start, stop); ``table`` its parquet rows
        with ``timestamp``): a Future of (T, H, W, 3) uint8 frames per camera."""
        if not self.readers:
            return {}
        from genctl.datasets.lerobot_meta import column_array

        ts = column_array(table, "timestamp", {"shape": [1]}, where).reshape(table.num_rows)
        out = {}
        for k, reader in self.readers.items():
            path, start, stop = video_meta[k]
            out[k] = self.pools[k].submit(reader.episode, path, ts, start, stop, f"{where}, feature {k!r}")
        return out

    def close(self) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        for r in self.readers.values():
            r.close()


def encoder_options(encoder: str, fps: int) -> dict[str, str]:
    """LeRobot's recording defaults (g=2 keeps random access cheap; crf 30 for AV1), applied to each encoder."""
    if encoder == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config to stderr otherwise
        return {"g": "2", "crf": "30", "preset": "12"}
    if encoder == "libx265":
        return {"g": "2", "crf": "23", "preset": "fast", "x265-params": "log-level=error"}
    return {"g": "2", "crf": "23", "preset": "fast"}


class VideoWriter:
    """One mp4 of concatenated episodes; frame n is at n/fps, so episode k starts at its first frame's n/fps."""

    def __init__(self, path: Path, encoder: str, fps: int, height: int, width: int) -> None:
        av = _av()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.fps, self.n, self.bytes = path, fps, 0, 0
        self._av = av
        self._container = av.open(str(path), "w")
        self._stream = self._container.add_stream(encoder, rate=fps, options=encoder_options(encoder, fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.time_base = Fraction(1, fps)
        self._convert = FrameConverter()

    def write(self, frames: np.ndarray) -> None:
        for img in frames:
            rgb = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img[..., :3]), format="rgb24")
            frame = self._convert.convert(rgb, "yuv420p")  # the encoder's format, converted here on one thread
            frame.pts, frame.time_base = self.n, Fraction(1, self.fps)
            packets = self._stream.encode(frame)
            self.bytes += sum(p.size for p in packets)
            self._container.mux(packets)
            self.n += 1

    def close(self, flush: bool = True) -> None:
        if self._container is None:
            return
        try:
            if flush:
                self._container.mux(self._stream.encode())
        finally:
            self._container.close()
            self._container = None


def video_info(path: Path, encoder: str) -> dict[str, Any]:
    """The ``features[key]["info"]`` entries LeRobot writes for a video feature (probed from the file)."""
    av = _av()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info: dict[str, Any] = {"video.height": s.height, "video.width": s.width,
                                "video.codec": s.codec.canonical_name,
                                "video.pix_fmt": s.pix_fmt, "video.fps": int(s.base_rate or 0),
                                "video.channels": 3, "has_audio": len(c.streams.audio) > 0}
    opts = encoder_options(encoder, info["video.fps"])
    preset = opts.get("preset")
    info.update({"video.g": int(opts["g"]), "video.crf": int(opts["crf"]),
                 "video.preset": int(preset) if preset and preset.isdigit() else preset,
                 "video.fast_decode": 0, "is_depth_map": False})
    return info
