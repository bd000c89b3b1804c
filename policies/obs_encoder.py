"""The first layer of a policy (or critic) that sees cameras: flat observation vector -> conditioning features.

Observations travel as one flat vector per step (``genctl.datasets.obs_spec``): normalised low-dim values,
then each camera's pixels as 0..255 floats. ``FlatObsEncoder`` splits a (B, n_obs_steps * D) history back
into the low-dim part (passed through) and uint8 frames (B, T, H, W, C) per camera, runs them through a
``MultiCameraEncoder`` (random crops in training mode, centre crops in eval mode) and returns
[low-dim history, image features]. The generative model applies it once per call (not once per solver step)
and the critic has its own (see ``genctl.policies.critic``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from genctl.datasets.obs_spec import ObsSpec
from genctl.policies.vision import ImageSpec, MultiCameraEncoder


class FlatObsEncoder(nn.Module):
    """(B, n_obs_steps * spec.dim) -> (B, out_dim) with out_dim = n_obs_steps * spec.low_dim + image features.

    ``kind`` ``small`` (3 convs, CPU) or ``resnet18`` (ResNet-18 with GroupNorm); ``share``: one backbone for
    all cameras; ``crop``: (h, w) of the crop window (None: 90 % of each side)."""

    def __init__(self, obs_spec: dict[str, Any], n_obs_steps: int = 1, *, kind: str = "small", share: bool = False,
                 out_dim: int = 64, crop: list[int] | tuple[int, int] | None = None, **backbone_kwargs: Any):
        super().__init__()
        self.spec = ObsSpec.from_dict(obs_spec)
        if not self.spec.cameras:
            raise ValueError("FlatObsEncoder needs at least one camera in the observation spec")
        self.n_obs_steps = int(n_obs_steps)
        ch, cw = (None, None) if crop is None else (int(crop[0]), int(crop[1]))
        specs = [ImageSpec(c.key, c.height, c.width, c.channels, ch, cw) for c in self.spec.cameras]
        self.images = MultiCameraEncoder(specs, kind=kind, share=share, out_dim=out_dim, n_obs_steps=self.n_obs_steps,
                                         **backbone_kwargs)
        self.in_dim = self.n_obs_steps * self.spec.dim
        self.out_dim = self.n_obs_steps * self.spec.low_dim + self.images.feature_dim
        self._config = {"obs_spec": self.spec.to_dict(), "n_obs_steps": self.n_obs_steps, "kind": kind,
                        "share": bool(share), "out_dim": int(out_dim), "crop": None if crop is None else [ch, cw],
                        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in backbone_kwargs.items()}}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return dict(self._config)

    def split(self, cond: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Low-dim history (B, T * low_dim) and uint8 frames {key: (B, T, H, W, C)} of a flat history."""
        b, s = cond.shape[0], self.spec
        if cond.shape[-1] != self.in_dim:
            raise ValueError(f"observation history has {cond.shape[-1]} values per row, expected {self.in_dim} "
                             f"({self.n_obs_steps} step(s) x {s.dim})")
        x = cond.reshape(b, self.n_obs_steps, s.dim)
        low = x[..., :s.low_dim].reshape(b, -1)
        frames, off = {}, s.low_dim
        for c in s.cameras:
            pix = x[..., off:off + c.size].reshape(b, self.n_obs_steps, c.height, c.width, c.channels)
            frames[c.key] = pix.detach().round().clamp(0, 255).to(torch.uint8)
            off += c.size
        return low, frames

    def forward(self, cond: Tensor, train: bool | None = None) -> Tensor:
        """``train``: random crops (default: ``self.training``), else centre crops."""
        low, frames = self.split(cond)
        feats = self.images(frames, train)
        return torch.cat([low.to(feats.dtype), feats], dim=-1)
