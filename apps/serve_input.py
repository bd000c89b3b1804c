"""Validation of what a client sends the policy server: every failure is a ``WireError`` whose text names what
was expected (it goes back to that client as an error reply; the server carries on)."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

from genctl.apps.wire import WireError
from genctl.datasets.obs_spec import CameraSpec, check_frames
from genctl.errors import DataError

MAX_IMAGES = 8
MAX_PIXELS = 4096 * 4096  # per image, checked from the header before a compressed image is decoded


def check_obs(obs: Any, obs_dim: int, n_obs_steps: int) -> np.ndarray:
    """(obs_dim,) or (n_obs_steps, obs_dim), any real dtype -> finite float32."""
    if not isinstance(obs, np.ndarray):
        raise WireError(f"'obs': expected an array of shape ({obs_dim},) or ({n_obs_steps}, {obs_dim}), "
                        f"got {type(obs).__name__}")
    if obs.dtype.kind not in "fiu":
        raise WireError(f"'obs': expected a float or int array, got dtype {obs.dtype}")
    if obs.shape not in ((obs_dim,), (n_obs_steps, obs_dim)):
        raise WireError(f"'obs' of shape {obs.shape}: expected ({obs_dim},) (one observation; the server "
                        f"keeps the history) or ({n_obs_steps}, {obs_dim}) (the last {n_obs_steps}, "
                        "oldest first)")
    out = obs.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise WireError("'obs' has NaN or Inf values (or values beyond float32 range)")
    return out


def check_time(stamp: Any, dt: Any, default_dt: float) -> tuple[float, float]:
    """(observation timestamp, action spacing), seconds; the timestamp defaults to the server's clock."""
    import time

    if stamp is None:
        stamp = time.time()
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise WireError(f"'timestamp': expected a finite number of seconds, got {stamp!r}")
    if dt is None:
        dt = default_dt
    if isinstance(dt, bool) or not isinstance(dt, int | float) or not (0 < dt < 3600):
        raise WireError(f"'dt': expected the seconds between actions, a number in (0, 3600), got {dt!r}")
    return float(stamp), float(dt)


def _decode_compressed(name: str, data: bytes) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.format not in ("JPEG", "PNG"):
            raise WireError(f"image {name!r}: expected JPEG or PNG bytes, got {img.format}")
        if img.width * img.height > MAX_PIXELS:
            raise WireError(f"image {name!r} is {img.width}x{img.height}: at most {MAX_PIXELS} pixels")
        img.load()
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB", "RGBA") else img)
    except WireError:
        raise
    except Exception as e:  # PIL's UnidentifiedImageError, truncated data, decompression bomb...
        raise WireError(f"image {name!r}: expected JPEG or PNG bytes, got undecodable data "
                        f"({type(e).__name__})") from None


def _check_map(images: Any) -> None:
    if not isinstance(images, dict) or len(images) > MAX_IMAGES:
        raise WireError(f"'images': expected a map of at most {MAX_IMAGES} camera names to frames")


def check_images(images: Any) -> dict[str, np.ndarray]:
    """``{name: uint8 (H, W) / (H, W, 1|3|4) array or JPEG/PNG bytes}`` -> decoded uint8 arrays.

    For a state policy: frames sent anyway are validated and kept with the session (they do not change the
    actions); a camera policy's frames go through ``camera_frames``."""
    _check_map(images)
    out = {}
    for name, img in images.items():
        if not isinstance(name, str):
            raise WireError(f"'images': camera names must be strings, got {name!r}")
        if isinstance(img, bytes):
            img = _decode_compressed(name, img)
        elif not isinstance(img, np.ndarray):
            raise WireError(f"image {name!r}: expected a uint8 array or JPEG/PNG bytes, "
                            f"got {type(img).__name__}")
        elif img.dtype != np.uint8:
            raise WireError(f"image {name!r}: expected dtype uint8, got {img.dtype}")
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (1, 3, 4))) or 0 in img.shape:
            raise WireError(f"image {name!r} of shape {img.shape}: expected (H, W) or (H, W, 1|3|4)")
        out[name] = img
    return out


def _frame(name: str, img: Any, what: str) -> np.ndarray:
    """One frame: a uint8 (H, W[, C]) array or JPEG/PNG bytes, decoded."""
    if isinstance(img, bytes):
        return _decode_compressed(name, img)
    if not isinstance(img, np.ndarray):
        raise WireError(f"image {name!r}: expected {what}, got {type(img).__name__}")
    return img


def camera_frames(images: Any, cameras: tuple[CameraSpec, ...], steps: int) -> dict[str, np.ndarray]:
    """A camera policy's frames for ``steps`` observations -> ``{image/<cam>: (steps, H, W, C) uint8}``.

    ``images`` maps each camera the policy sees (``top`` or ``image/top``) to one frame when ``obs`` is one
    observation, or, with a full history, to ``steps`` frames oldest first: a (steps, H, W, C) array or a list
    of frames. A frame is a uint8 array or JPEG/PNG bytes, at the size the policy was trained on (no resizing:
    the encoder's features depend on the pixel scale); an RGBA frame for an RGB camera loses its alpha."""
    want = [c.camera for c in cameras]
    if not isinstance(images, dict) or not images:
        raise WireError(f"'images': this policy sees cameras {want}: send their frames with every observation, "
                        f"e.g. {{{want[0]!r}: uint8 (H, W, C) array or JPEG/PNG bytes}}")
    _check_map(images)
    given = {(k.split("/", 1)[1] if isinstance(k, str) and k.startswith("image/") else k): v
             for k, v in images.items()}
    extra = [k for k in given if k not in want]
    missing = [k for k in want if k not in given]
    if extra or missing:
        raise WireError(f"'images' has cameras {sorted(map(str, given))}: this policy sees {want}"
                        + (f" (missing {missing})" if missing else ""))
    single = "a uint8 (H, W[, C]) array or JPEG/PNG bytes"
    out = {}
    for cam in cameras:
        v = given[cam.camera]
        if isinstance(v, list):
            frames = [_frame(cam.camera, f, single) for f in v]
        elif isinstance(v, np.ndarray) and v.ndim == 4:  # (T, H, W, C), also T = 1
            frames = list(v)
        elif steps == 1:
            frames = [_frame(cam.camera, v, single)]
        else:
            raise WireError(f"image {cam.camera!r}: with a history of {steps} observations, expected {steps} "
                            f"frames: a uint8 ({steps}, H, W, C) array or a list of frames")
        if len(frames) != steps:
            raise WireError(f"image {cam.camera!r}: {len(frames)} frame(s) for {steps} observation(s)")
        checked = []
        for f in frames:
            if f.ndim not in (2, 3):
                raise WireError(f"image {cam.camera!r}: a frame of shape {f.shape}, expected (H, W) or (H, W, C)")
            if f.ndim == 3 and f.shape[2] == 4 and cam.channels == 3:
                f = f[..., :3]  # RGBA (a PNG screenshot): the alpha channel carries no scene
            try:
                checked.append(check_frames(f, cam, 1))
            except DataError as e:
                raise WireError(f"image {cam.camera!r}: {e}") from None
        out[cam.key] = np.concatenate(checked)
    return out
