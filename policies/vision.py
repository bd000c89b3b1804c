"""Vision policies: camera images -> conditioning features for a generative policy, trained end to end.

Images stay uint8 (B, H, W, C) in the store and in batches (B, T, H, W, C with ``n_obs_steps`` history frames);
``preprocess`` moves them to the encoder's device as uint8, crops them (a random window per sample in training,
the same for all of its history frames; the centre window in evaluation), and only then converts the crop to
float (B, C, h, w) in [-1, 1] (x / 127.5 - 1; no ImageNet statistics: the encoders are trained from scratch).

``MultiCameraEncoder`` holds one backbone per camera (or one shared by all) from ``vision_nets``; its output
(B, feature_dim) is concatenated after the low-dim state, ``cond = [state, image features]``
(``vision_cond``), and goes into a ``GenerativeModel`` built with ``cond_dim = state_dim + feature_dim``.
``VisionPolicy`` bundles the two with the model's ``loss(action, obs)`` / ``sample(obs)`` interface, where
``obs`` is a dict holding the state (key ``state_key``) and the camera keys, so ``make_algorithm("bc", policy)``
trains the encoder with the generative loss in the same Adam as the generative network.

Checkpoints carry ``encoder.config()`` (JSON: the ``ImageSpec`` of each camera = the preprocessing, and the
architecture) beside the state dict; ``MultiCameraEncoder.from_config`` rebuilds it. Images whose size or
channel count differ from the spec raise ``ImageInputError`` (a ``DataError`` and a ``ValueError``) with a
one-line message naming the camera, what was expected and what was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genctl.errors import DataError

from .generative import GenerativeModel
from .vision_nets import BACKBONES

ENCODER_KINDS = tuple(BACKBONES)


class ImageInputError(DataError, ValueError):
    """Images that do not match the encoder's ``ImageSpec`` (size, channels, dtype, history length)."""


def _channels_name(c: int) -> str:
    return {1: "grey-scale", 3: "RGB", 4: "RGBA"}.get(c, f"{c}-channel")


@dataclass(frozen=True)
class ImageSpec:
    """One camera: store key (e.g. ``image/front``), stored size H x W x C, and the crop h x w fed to the encoder
    (default: 90% of each side, rounded, Diffusion Policy's 76 from 84)."""

    key: str
    height: int
    width: int
    channels: int = 3
    crop_height: int | None = None
    crop_width: int | None = None

    def __post_init__(self) -> None:
        for name in ("height", "width", "channels"):
            v = getattr(self, name)
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or v < 1:
                raise ValueError(f"ImageSpec {self.key!r}: {name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name, full in (("crop_height", self.height), ("crop_width", self.width)):
            v = getattr(self, name)
            v = max(1, round(0.9 * full)) if v is None else v
            if not isinstance(v, int | np.integer) or isinstance(v, bool) or not 1 <= v <= full:
                raise ValueError(f"ImageSpec {self.key!r}: {name} must be an integer in [1, {full}], got {v!r}")
            object.__setattr__(self, name, int(v))

    @property
    def crop(self) -> tuple[int, int]:
        return self.crop_height, self.crop_width  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown or "key" not in d:
            raise ValueError(f"ImageSpec: unknown fields {unknown}" if unknown else "ImageSpec: missing 'key'")
        return cls(**dict(d))


# ----------------------------------------------------------------------------------------------- preprocessing
def _as_tensor(x: Any, where: str) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x if x.flags.writeable else x.copy())
    if not isinstance(x, Tensor):
        raise ImageInputError(f"{where}: images must be a numpy array or a torch tensor, got {type(x).__name__}")
    return x


def check_images(spec: ImageSpec, images: Any, n_obs_steps: int = 1, device: torch.device | None = None
                 ) -> tuple[Tensor, int, int]:
    """Validate uint8 images against ``spec``: (B, H, W, C), or (B, T, H, W, C) with T = ``n_obs_steps``.
    Grey-scale arrays without a channel axis ((B, H, W) or (B, T, H, W)) are read as C = 1.
    Returns (frames (B*T, H, W, C) uint8 on ``device``, B, T)."""
    where = f"image {spec.key!r}"
    x = _as_tensor(images, where)  # checked where it is; moved (as uint8, 4x less than float) once valid
    shape = tuple(x.shape)
    H, W, C = spec.height, spec.width, spec.channels
    want = f"{H}x{W}x{C} ({_channels_name(C)})"
    if x.dtype != torch.uint8:
        raise ImageInputError(f"{where}: expected uint8 images of {want}, got dtype {str(x.dtype).split('.')[-1]} "
                              f"(images are stored as uint8 and converted on the fly)")
    if x.ndim == 3 or (x.ndim == 4 and shape[-1] > 4 and shape[1] == n_obs_steps > 1):
        x = x.unsqueeze(-1)  # grey-scale without a channel axis
    if x.ndim == 4:
        x = x.unsqueeze(1)
    if x.ndim != 5:
        raise ImageInputError(f"{where}: expected an array (B, H, W, C) or (B, T, H, W, C) of {want}, "
                              f"got shape {shape}")
    b, t, h, w, c = x.shape
    if (h, w, c) != (H, W, C):
        hint = ""
        if c != C:
            hint = f": the store holds {_channels_name(c)} images, the encoder takes {_channels_name(C)}"
        elif (h, w) != (H, W):
            hint = ": resize the images or retrain at this size"
        raise ImageInputError(f"{where}: the encoder expects {want} images, got {h}x{w}x{c} "
                              f"({_channels_name(c)}; array shape {shape}){hint}")
    if t != n_obs_steps:
        raise ImageInputError(f"{where}: expected {n_obs_steps} history frame(s) per sample (B, T, H, W, C), "
                              f"got array shape {shape}")
    x = x.reshape(b * t, h, w, c)
    return (x if device is None else x.to(device, non_blocking=True)), b, t


def crop_offsets(n: int, size: tuple[int, int], crop: tuple[int, int], train: bool,
                 generator: torch.Generator | None = None, device: torch.device | None = None
                 ) -> tuple[Tensor, Tensor]:
    """Top-left corners (n,) (n,): uniform over all valid windows in training, the centre ((H - h) // 2,
    (W - w) // 2) in evaluation."""
    (H, W), (h, w) = size, crop
    if train:
        oy = torch.randint(0, H - h + 1, (n,), generator=generator).to(device)
        ox = torch.randint(0, W - w + 1, (n,), generator=generator).to(device)
        return oy, ox
    return (torch.full((n,), (H - h) // 2, dtype=torch.long, device=device),
            torch.full((n,), (W - w) // 2, dtype=torch.long, device=device))


def crop_frames(frames: Tensor, crop: tuple[int, int], train: bool, generator: torch.Generator | None = None,
                per: int = 1) -> Tensor:
    """Crop uint8 frames (N, H, W, C) -> uint8 (N, C, h, w) (channels first, a view where possible). In training
    each group of ``per`` consecutive frames (one sample's history) shares one random window; the windows are
    picked by one indexing op on the ``unfold`` view of all windows (no loop over images, no index arithmetic
    per pixel). Evaluation takes the centre window as a view."""
    n, H, W, _ = frames.shape
    h, w = crop
    if not train or (h, w) == (H, W):
        oy, ox = (H - h) // 2, (W - w) // 2
        return frames[:, oy:oy + h, ox:ox + w].permute(0, 3, 1, 2)
    oy, ox = crop_offsets(n // per, (H, W), (h, w), True, generator, frames.device)
    if per > 1:
        oy, ox = oy.repeat_interleave(per), ox.repeat_interleave(per)
    windows = frames.unfold(1, h, 1).unfold(2, w, 1)  # (N, H-h+1, W-w+1, C, h, w), a view
    return windows[torch.arange(n, device=frames.device), oy, ox]


def to_float(frames: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 (N, C, h, w) -> contiguous float (N, C, h, w) in [-1, 1]: x / 127.5 - 1. The layout change is
    done on the uint8 bytes, then a vectorised cast and an in-place affine map (a casting copy that also
    transposes, or a uint8 * float op, is several times slower on a CPU)."""
    return frames.contiguous().to(dtype).mul_(2.0 / 255.0).sub_(1.0)


def preprocess(spec: ImageSpec, images: Any, train: bool, n_obs_steps: int = 1,
               generator: torch.Generator | None = None, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, int, int]:
    """uint8 images (B, [T,] H, W, C) -> (float (B*T, C, h, w) in [-1, 1], B, T): check, crop, normalise."""
    frames, b, t = check_images(spec, images, n_obs_steps, device)
    return to_float(crop_frames(frames, spec.crop, train, generator, per=t), dtype), b, t


# ----------------------------------------------------------------------------------------------- encoders
class MultiCameraEncoder(nn.Module):
    """Cameras -> (B, feature_dim), feature_dim = cameras x n_obs_steps x out_dim.

    ``kind``: ``resnet18`` (ResNet-18 with GroupNorm) or ``small`` (3 convs, for CPUs); ``share``: one backbone
    for all cameras (they must then have the same channels and crop size), else one per camera. Features are
    ordered camera by camera (``specs`` order), history frames oldest first within each camera.
    ``backbone_kwargs`` go to the backbone (``widths``, ``num_kp``, and ``blocks`` for resnet18)."""

    def __init__(self, specs: Sequence[ImageSpec], kind: str = "resnet18", share: bool = False, out_dim: int = 64,
                 n_obs_steps: int = 1, **backbone_kwargs: Any):
        super().__init__()
        self.specs = [s if isinstance(s, ImageSpec) else ImageSpec.from_dict(s) for s in specs]
        keys = [s.key for s in self.specs]
        if not keys or len(set(keys)) != len(keys):
            raise ValueError(f"MultiCameraEncoder needs at least one camera and distinct keys, got {keys}")
        if kind not in BACKBONES:
            raise ValueError(f"unknown image encoder kind {kind!r}; expected one of {sorted(BACKBONES)}")
        if int(n_obs_steps) < 1 or int(out_dim) < 1:
            raise ValueError(f"n_obs_steps and out_dim must be >= 1, got {n_obs_steps}, {out_dim}")
        if share and len({(s.channels, s.crop) for s in self.specs}) > 1:
            raise ValueError("a shared image encoder needs the same channels and crop size for every camera, got "
                             + ", ".join(f"{s.key}: {s.crop_height}x{s.crop_width}x{s.channels}" for s in self.specs))
        self.kind, self.share, self.out_dim, self.n_obs_steps = kind, bool(share), int(out_dim), int(n_obs_steps)
        self.backbone_kwargs = {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in backbone_kwargs.items()}
        build = BACKBONES[kind]
        self.backbones = nn.ModuleList(
            build(s.channels, s.crop_height, s.crop_width, out_dim=self.out_dim, **self.backbone_kwargs)
            for s in (self.specs[:1] if self.share else self.specs))

    @property
    def keys(self) -> list[str]:
        return [s.key for s in self.specs]

    @property
    def feature_dim(self) -> int:
        return len(self.specs) * self.n_obs_steps * self.out_dim

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (``from_config`` rebuilds the module; load the state dict)."""
        return {"specs": [s.to_dict() for s in self.specs], "kind": self.kind, "share": self.share,
                "out_dim": self.out_dim, "n_obs_steps": self.n_obs_steps, **self.backbone_kwargs}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MultiCameraEncoder:
        cfg = dict(cfg)
        return cls([ImageSpec.from_dict(d) for d in cfg.pop("specs")], **cfg)

    def forward(self, images: Mapping[str, Any], train: bool | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """``images``: key -> uint8 (B, H, W, C) or (B, T, H, W, C) (other keys are ignored). ``train``: random
        crops (default: ``self.training``), else centre crops. Returns (B, feature_dim)."""
        train = self.training if train is None else bool(train)
        ref = next(self.parameters())
        batch: list[tuple[Tensor, int]] = []
        for s in self.specs:
            if s.key not in images:
                raise ImageInputError(f"image {s.key!r}: missing from the batch (has {sorted(images)})")
            x, b, _ = preprocess(s, images[s.key], train, self.n_obs_steps, generator, ref.device, ref.dtype)
            batch.append((x, b))
        sizes = {b for _, b in batch}
        if len(sizes) > 1:
            raise ImageInputError("cameras have different batch sizes: "
                                  + ", ".join(f"{s.key}: {b}" for s, (_, b) in zip(self.specs, batch, strict=True)))
        b = sizes.pop()
        if self.share:  # one pass over all cameras' frames
            feats = self.backbones[0](torch.cat([x for x, _ in batch])).split([x.shape[0] for x, _ in batch])
        else:
            feats = [net(x) for net, (x, _) in zip(self.backbones, batch, strict=True)]
        return torch.cat([f.reshape(b, -1) for f in feats], dim=-1)


def vision_cond(features: Tensor, state: Tensor | None = None) -> Tensor:
    """The generative model's conditioning vector: [state (B, S) or (B, T, S) flattened, image features]."""
    if state is None:
        return features
    state = state.to(features.dtype).reshape(features.shape[0], -1)
    return torch.cat([state, features], dim=-1)


class VisionPolicy(nn.Module):
    """An image encoder and a generative model, trained together: ``loss(action, obs)`` and ``sample(obs)``
    take ``obs`` = {``state_key``: normalised state (B, S) (absent/None when ``state_dim`` = 0), camera key:
    uint8 images}. ``model.cond_dim`` must be ``state_dim * n_obs_steps + encoder.feature_dim``."""

    def __init__(self, encoder: MultiCameraEncoder, model: GenerativeModel, state_dim: int = 0,
                 state_key: str = "obs"):
        super().__init__()
        need = int(state_dim) * encoder.n_obs_steps + encoder.feature_dim
        if model.cond_dim != need:
            raise ValueError(f"generative model has cond_dim {model.cond_dim}, but state {state_dim} x "
                             f"{encoder.n_obs_steps} step(s) + image features {encoder.feature_dim} = {need}")
        self.encoder, self.model = encoder, model
        self.state_dim, self.state_key = int(state_dim), state_key
        self.action_dim = model.action_dim

    def condition(self, obs: Mapping[str, Any], train: bool | None = None) -> Tensor:
        feats = self.encoder(obs, train)
        state = obs.get(self.state_key) if self.state_dim else None
        if self.state_dim and state is None:
            raise ImageInputError(f"vision policy: the batch has no state {self.state_key!r}")
        if state is not None and not isinstance(state, Tensor):
            state = torch.as_tensor(np.asarray(state))
        return vision_cond(feats, None if state is None else state.to(feats.device))

    def loss(self, action: Tensor, obs: Mapping[str, Any]) -> Tensor:
        """Per-sample generative loss (B,); gradients reach the encoder (random crops while ``training``)."""
        return self.model.loss(action, self.condition(obs))

    def sample(self, obs: Mapping[str, Any], **kwargs: Any) -> Tensor:
        """Actions for ``obs`` (centre crops, no grad); ``kwargs`` go to ``GenerativeModel.sample``."""
        with torch.no_grad():
            cond = self.condition(obs, train=False)
        return self.model.sample(cond, **kwargs)
