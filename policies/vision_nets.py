"""Image backbones for vision policies, in plain torch, trained from scratch (no pretrained weights).

* ``ResNet18GN``: ResNet-18 (BasicBlock x [2, 2, 2, 2], widths 64/128/256/512) with every BatchNorm replaced by
  GroupNorm (groups = channels // 16, as Diffusion Policy's ``replace_bn_with_gn``), no global pooling and no
  classifier: the last feature map goes to spatial-softmax keypoints and a Linear (robomimic's ``VisualCore``
  as Diffusion Policy uses it). BatchNorm is a poor fit here: the encoder is trained end to end with the
  generative loss at moderate batches, and EMA copies of BatchNorm statistics lag behind the weights.
* ``SmallConvEncoder``: three strided convs + GroupNorm + ReLU, then the same keypoint head; ~20x cheaper on a
  CPU at 76x76 crops.
* ``SpatialSoftmax``: a learned 1x1 conv to K keypoint maps, a softmax over H x W each, and the expected
  (x, y) under it, in [-1, 1] (x left to right, y top to bottom): 2K features ``[x1, y1, x2, y2, ...]``.

All take float images (B, C, H, W) (see ``vision.preprocess``) and return (B, out_dim).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def group_norm(channels: int) -> nn.GroupNorm:
    """Diffusion Policy's choice: one group per 16 channels (at least one group)."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) -> (B, 2K): expected keypoint coordinates. ``num_kp=None``: the C input maps are the
    keypoint maps themselves (no 1x1 conv). ``temperature`` divides the logits (fixed, not learned)."""

    def __init__(self, in_channels: int, height: int, width: int, num_kp: int | None = 32,
                 temperature: float = 1.0):
        super().__init__()
        self.kp = nn.Conv2d(in_channels, num_kp, 1) if num_kp is not None else None
        self.num_kp = num_kp if num_kp is not None else in_channels
        self.temperature = float(temperature)
        ys, xs = torch.meshgrid(torch.linspace(-1.0, 1.0, height), torch.linspace(-1.0, 1.0, width), indexing="ij")
        self.register_buffer("pos", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    @property
    def out_dim(self) -> int:
        return 2 * self.num_kp

    def forward(self, x: Tensor) -> Tensor:
        if self.kp is not None:
            x = self.kp(x)
        b, k, h, w = x.shape
        if h * w != self.pos.shape[0]:
            raise ValueError(f"SpatialSoftmax built for {self.pos.shape[0]} positions, got a {h}x{w} feature map")
        attn = torch.softmax(x.reshape(b, k, h * w).to(self.pos.dtype) / self.temperature, dim=-1)
        return (attn @ self.pos).reshape(b, 2 * k)  # (B, K, 2) -> [x1, y1, x2, y2, ...]


class BasicBlock(nn.Module):
    """ResNet BasicBlock with GroupNorm: conv3x3-GN-ReLU-conv3x3-GN + (1x1 conv-GN) shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.gn1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.gn2 = group_norm(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), group_norm(c_out))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.gn1(self.conv1(x)), inplace=True)
        h = self.gn2(self.conv2(h))
        return F.relu(h + (x if self.down is None else self.down(x)), inplace=True)


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class ResNet18GN(nn.Module):
    """ResNet-18 trunk with GroupNorm (stem 7x7/2 conv + 3x3/2 max-pool, then one stage per width, the first at
    stride 1, the others at stride 2), spatial-softmax keypoints and a Linear to ``out_dim``. For an HxW input
    the last map is ~H/32 x W/32 (3x3 at a 76x76 crop, as Diffusion Policy)."""

    def __init__(self, in_channels: int, height: int, width: int, out_dim: int = 64,
                 widths: Sequence[int] = (64, 128, 256, 512), blocks: Sequence[int] = (2, 2, 2, 2),
                 num_kp: int = 32):
        super().__init__()
        widths, blocks = [int(w) for w in widths], [int(n) for n in blocks]
        if not widths or len(widths) != len(blocks):
            raise ValueError(f"widths and blocks must be non-empty and of equal length, got {widths}, {blocks}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False), group_norm(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        h, w = (_conv_out(_conv_out(s, 7, 2, 3), 3, 2, 1) for s in (height, width))
        layers: list[nn.Module] = []
        c = widths[0]
        for i, (c_out, n) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            for j in range(n):
                layers.append(BasicBlock(c, c_out, stride if j == 0 else 1))
                c = c_out
            if stride == 2:
                h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        self.layers = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(c, h, w, num_kp)
        self.proj = nn.Linear(self.pool.out_dim, out_dim)
        self.out_dim, self.feature_hw = int(out_dim), (h, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.pool(self.layers(self.stem(x))))


class SmallConvEncoder(nn.Module):
    """CPU-sized encoder: conv 5x5/2 -> conv 3x3/2 -> conv 3x3/1 (GroupNorm + ReLU after each), spatial-softmax
    keypoints and a Linear to ``out_dim``. The last map is ~H/4 x W/4 (19x19 at a 76x76 crop)."""

    def __init__(self, in_channels: int, height: int, width: int, out_dim: int = 64,
                 widths: Sequence[int] = (32, 32, 64), num_kp: int = 32):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) != 3:
            raise ValueError(f"SmallConvEncoder takes three widths, got {widths}")
        spec = [(5, 2, 2), (3, 2, 1), (3, 1, 1)]  # (kernel, stride, padding)
        layers: list[nn.Module] = []
        c, h, w = in_channels, height, width
        for c_out, (k, s, p) in zip(widths, spec, strict=True):
            layers += [nn.Conv2d(c, c_out, k, s, p), group_norm(c_out), nn.ReLU(inplace=True)]
            c, h, w = c_out, _conv_out(h, k, s, p), _conv_out(w, k, s, p)
        self.convs = nn.Sequential(*layers)
        self.pool = SpatialSoftmax(c, h, w, num_kp)
        self.proj = nn.Linear(self.pool.out_dim, out_dim)
        self.out_dim, self.feature_hw = int(out_dim), (h, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.pool(self.convs(x)))


BACKBONES = {"resnet18": ResNet18GN, "small": SmallConvEncoder}
