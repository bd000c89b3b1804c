"""Vision policies: image specs, crops, encoders' shapes, spatial-softmax keypoints, bad input, and a tiny
vision policy that learns a task whose answer is only in the image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genctl.errors import DataError
from genctl.policies import count_parameters, make_algorithm, make_generative_model
from genctl.policies.vision import (
    ImageInputError,
    ImageSpec,
    MultiCameraEncoder,
    VisionPolicy,
    check_images,
    crop_frames,
    preprocess,
    to_float,
    vision_cond,
)
from genctl.policies.vision_nets import ResNet18GN, SpatialSoftmax


# ------------------------------------------------------------------ ImageSpec
def test_image_spec_json_round_trip_and_defaults() -> None:
    s = ImageSpec("image/front", 84, 84, 3)
    assert s.crop == (76, 76)  # Diffusion Policy's 76 from 84
    back = ImageSpec.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s and isinstance(back.height, int)
    g = ImageSpec("image/wrist", 48, 64, 1, 40, 60)
    assert ImageSpec.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    with pytest.raises(ValueError, match="crop_height"):
        ImageSpec("image/a", 32, 32, 3, 40, 32)
    with pytest.raises(ValueError, match="channels"):
        ImageSpec("image/a", 32, 32, 0)
    with pytest.raises(ValueError, match="unknown fields"):
        ImageSpec.from_dict({**s.to_dict(), "mean": 0.5})


# ------------------------------------------------------------------ crops
def coded_images(n: int, h: int, w: int) -> np.ndarray:
    """Channel 0 = y * w + x (unique per pixel, < 256), channel 1 = image index, channel 2 = 7."""
    assert h * w <= 256
    img = np.zeros((n, h, w, 3), np.uint8)
    img[..., 0] = np.arange(h * w).reshape(h, w)
    img[..., 1] = np.arange(n)[:, None, None]
    img[..., 2] = 7
    return img


def test_eval_crop_is_the_exact_centre() -> None:
    x = torch.from_numpy(coded_images(3, 12, 15))
    c = crop_frames(x, (8, 9), train=False)
    assert c.shape == (3, 3, 8, 9)  # channels first
    oy, ox = (12 - 8) // 2, (15 - 9) // 2  # 2, 3
    assert torch.equal(c, x[:, oy:oy + 8, ox:ox + 9].permute(0, 3, 1, 2))
    assert c[0, 0, 0, 0].item() == 2 * 15 + 3  # the known top-left pixel
    assert torch.equal(crop_frames(x, (12, 15), train=True), x.permute(0, 3, 1, 2))  # full-size crop: no-op


def test_train_crops_differ_stay_inside_and_equal_a_slice() -> None:
    n, H, W, h, w = 64, 12, 16, 8, 10
    x = torch.from_numpy(coded_images(n, H, W))
    c = crop_frames(x, (h, w), train=True, generator=torch.Generator().manual_seed(0))
    assert c.shape == (n, 3, h, w) and c.dtype == torch.uint8
    corners = set()
    for i in range(n):
        oy, ox = divmod(int(c[i, 0, 0, 0]), W)
        assert 0 <= oy <= H - h and 0 <= ox <= W - w
        assert torch.equal(c[i], x[i, oy:oy + h, ox:ox + w].permute(2, 0, 1))  # a slice of its own image
        corners.add((oy, ox))
    assert len(corners) > 10  # per-sample windows, not one for the batch
    # seeded: reproducible; with history, the frames of one sample share the window
    c2 = crop_frames(x, (h, w), train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(c, c2)
    hist = crop_frames(x, (h, w), train=True, generator=torch.Generator().manual_seed(1), per=2)
    assert torch.equal(hist[0::2, 0], hist[1::2, 0])


def test_preprocess_range_and_history_layout() -> None:
    spec = ImageSpec("image/a", 8, 8, 3, 6, 6)
    img = np.zeros((2, 3, 8, 8, 3), np.uint8)
    img[:, :, :, :4] = 255
    x, b, t = preprocess(spec, img, train=False, n_obs_steps=3)
    assert (b, t) == (2, 3) and x.shape == (6, 3, 6, 6) and x.dtype == torch.float32 and x.is_contiguous()
    assert x.max().item() == 1.0 and x.min().item() == -1.0
    assert torch.equal(x[:, :, :, :3], torch.ones(6, 3, 6, 3))  # columns 1..3 of the centre window are white
    assert to_float(torch.full((1, 1, 1, 1), 0, dtype=torch.uint8)).item() == -1.0


# ------------------------------------------------------------------ spatial softmax
def test_spatial_softmax_returns_known_coordinates() -> None:
    H, W = 5, 7
    ss = SpatialSoftmax(3, H, W, num_kp=None)
    x = torch.zeros(1, 3, H, W)
    where = [(0, 0), (4, 6), (2, 3)]  # (row, col)
    for k, (r, c) in enumerate(where):
        x[0, k, r, c] = 1e4  # one-hot: all the mass on one pixel
    out = ss(x).view(3, 2)
    want = torch.tensor([[-1 + 2 * c / (W - 1), -1 + 2 * r / (H - 1)] for r, c in where])
    assert torch.allclose(out, want, atol=1e-5), out
    assert torch.allclose(ss(torch.zeros(2, 3, H, W)), torch.zeros(2, 6), atol=1e-6)  # uniform: the centre
    assert SpatialSoftmax(16, H, W, num_kp=4)(torch.randn(2, 16, H, W)).shape == (2, 8)


# ------------------------------------------------------------------ encoders
@pytest.mark.parametrize("kind", ["small", "resnet18"])
@pytest.mark.parametrize("cams,steps,share", [(1, 1, False), (2, 1, False), (2, 2, False), (2, 2, True)])
def test_encoder_shapes(kind: str, cams: int, steps: int, share: bool) -> None:
    torch.manual_seed(0)
    specs = [ImageSpec(f"image/c{i}", 40, 48, 3, 32, 40) for i in range(cams)]
    kw = {} if kind == "small" else {"widths": [16, 16, 32, 32], "blocks": [1, 1, 1, 1]}
    enc = MultiCameraEncoder(specs, kind=kind, share=share, out_dim=24, n_obs_steps=steps, **kw)
    assert enc.feature_dim == cams * steps * 24 and len(enc.backbones) == (1 if share else cams)
    lead = (3, steps) if steps > 1 else (3,)
    imgs = {s.key: np.random.default_rng(i).integers(0, 256, (*lead, 40, 48, 3), dtype=np.uint8)
            for i, s in enumerate(specs)}
    out = enc(imgs, train=True)
    assert out.shape == (3, enc.feature_dim) and torch.isfinite(out).all()
    ev = enc(imgs, train=False)
    assert torch.equal(ev, enc(imgs, train=False))  # centre crops: deterministic
    # features are camera-major, frames oldest first: camera 0 / frame 0 alone gives the first block
    first = {specs[0].key: imgs[specs[0].key][:, 0] if steps > 1 else imgs[specs[0].key]}
    alone = MultiCameraEncoder(specs[:1], kind=kind, out_dim=24, **kw)
    alone.backbones[0].load_state_dict(enc.backbones[0].state_dict())
    assert torch.allclose(alone(first, train=False), ev[:, :24], atol=1e-5)


def test_resnet18_gn_is_resnet18() -> None:
    net = ResNet18GN(3, 76, 76, out_dim=64)
    trunk = count_parameters(net.stem) + count_parameters(net.layers)
    assert trunk == 11_176_512  # torchvision resnet18 without its fc layer (GroupNorm has BatchNorm's params)
    assert net.feature_hw == (3, 3)  # 76x76 crop -> 3x3 map, as Diffusion Policy
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert net(torch.randn(2, 3, 76, 76)).shape == (2, 64)


def test_shared_encoder_needs_equal_crops_and_config_round_trip() -> None:
    with pytest.raises(ValueError, match="shared"):
        MultiCameraEncoder([ImageSpec("image/a", 32, 32), ImageSpec("image/b", 40, 40)], kind="small", share=True)
    with pytest.raises(ValueError, match="kind"):
        MultiCameraEncoder([ImageSpec("image/a", 32, 32)], kind="vit")
    enc = MultiCameraEncoder([ImageSpec("image/a", 32, 32, 3, 28, 28), ImageSpec("image/b", 24, 24, 1)],
                             kind="small", out_dim=8, n_obs_steps=2, widths=[8, 8, 16], num_kp=4)
    cfg = json.loads(json.dumps(enc.config()))
    back = MultiCameraEncoder.from_config(cfg)
    back.load_state_dict(enc.state_dict())
    imgs = {"image/a": np.full((2, 2, 32, 32, 3), 9, np.uint8), "image/b": np.zeros((2, 2, 24, 24), np.uint8)}
    assert torch.equal(back(imgs, train=False), enc(imgs, train=False))
    assert back.specs == enc.specs


# ------------------------------------------------------------------ bad input: one clear line each
def test_bad_images_give_one_line_errors() -> None:
    spec = ImageSpec("image/front", 84, 84, 3)
    cases = [
        (np.zeros((2, 64, 64, 3), np.uint8), ["'image/front'", "84x84x3", "64x64x3"]),
        (np.zeros((2, 84, 84), np.uint8), ["'image/front'", "84x84x3", "grey-scale", "RGB"]),
        (np.zeros((2, 84, 84, 1), np.uint8), ["holds grey-scale images", "84x84x1"]),
        (np.zeros((2, 84, 84, 3), np.float32), ["uint8", "float32"]),
        (np.zeros((2, 3, 84, 84, 3), np.uint8), ["2 history frame", "(2, 3, 84, 84, 3)"]),
    ]
    for arr, parts in cases:
        with pytest.raises(ImageInputError) as e:
            check_images(spec, arr, n_obs_steps=2 if arr.ndim == 5 else 1)
        msg = str(e.value)
        assert "\n" not in msg and all(p in msg for p in parts), msg
        assert isinstance(e.value, DataError) and isinstance(e.value, ValueError)
    grey = ImageSpec("image/g", 16, 16, 1, 16, 16)
    assert check_images(grey, np.zeros((4, 16, 16), np.uint8))[0].shape == (4, 16, 16, 1)  # no channel axis: ok
    enc = MultiCameraEncoder([spec], kind="small", out_dim=8)
    with pytest.raises(ImageInputError, match="missing"):
        enc({"image/wrist": np.zeros((1, 84, 84, 3), np.uint8)})


# ------------------------------------------------------------------ conditioning and end-to-end gradients
def test_vision_cond_and_policy_trains_the_encoder() -> None:
    torch.manual_seed(0)
    f, s = torch.randn(4, 6), torch.randn(4, 2, 3)
    assert torch.equal(vision_cond(f, s), torch.cat([s.reshape(4, 6), f], -1))
    enc = MultiCameraEncoder([ImageSpec("image/a", 16, 16, 3, 12, 12)], kind="small", out_dim=8,
                             widths=[8, 8, 8], num_kp=4)
    with pytest.raises(ValueError, match="cond_dim"):
        VisionPolicy(enc, make_generative_model("gvp", 2, 8, hidden=[16]), state_dim=3)
    pol = VisionPolicy(enc, make_generative_model("gvp", 2, 3 + 8, hidden=[16]), state_dim=3)
    obs = {"obs": torch.randn(5, 3), "image/a": np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), np.uint8)}
    pol.loss(torch.randn(5, 2), obs).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    assert pol.sample(obs, steps=4).shape == (5, 2)
    with pytest.raises(ImageInputError, match="no state"):
        pol.loss(torch.randn(5, 2), {"image/a": obs["image/a"]})


# ------------------------------------------------------------------ a task whose answer is only in the image
S, SQ = 32, 6


def square_task(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A red 6x6 square on a dark noisy 32x32 image; the action is its centre (x, y) scaled to [-1, 1]."""
    pos = torch.randint(0, S - SQ + 1, (n, 2), generator=gen)
    img = torch.randint(0, 40, (n, S, S, 3), generator=gen, dtype=torch.uint8)
    ys, xs = pos[:, 1, None] + torch.arange(SQ), pos[:, 0, None] + torch.arange(SQ)
    img[torch.arange(n)[:, None, None], ys[:, :, None], xs[:, None, :]] = torch.tensor([220, 40, 40],
                                                                                        dtype=torch.uint8)
    return img, (pos.float() + SQ / 2) / S * 2 - 1


def test_tiny_vision_policy_learns_square_position() -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    enc = MultiCameraEncoder([ImageSpec("image/cam", S, S, 3, S, S)], kind="small", out_dim=16,
                             widths=[16, 16, 32], num_kp=8)
    pol = VisionPolicy(enc, make_generative_model("gvp", 2, enc.feature_dim, hidden=[64, 32], t_cond_hidden=64))
    algo = make_algorithm("bc", pol, lr=3e-3)  # encoder and generative net in one Adam, the generative loss
    assert {id(p) for p in enc.parameters()} <= {id(p) for g in algo.optimizers()["policy"].param_groups
                                                  for p in g["params"]}
    for _ in range(400):
        img, act = square_task(64, gen)
        algo.update({"action": act, "obs": {"image/cam": img}})
    img, act = square_task(256, torch.Generator().manual_seed(1))
    pred = pol.sample({"image/cam": img}, steps=10, generator=torch.Generator().manual_seed(2))
    mse = (pred - act).square().sum(-1).mean().item()
    baseline = (act - act.mean(0)).square().sum(-1).mean().item()  # predicting the mean action
    assert mse < 0.25 * baseline, (mse, baseline)
