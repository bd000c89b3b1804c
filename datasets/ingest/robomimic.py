"""robomimic-format HDF5 reader: ``data/demo_N/{obs/<key>, next_obs/<key>, actions, rewards, dones[, states]}``.

uint8 (T, H, W, C) observations are camera frames and go to ``image/<key>``; their ``next_obs`` copies are not
stored (they repeat the next step's frame; only each demo's final frame is lost, which is recorded in
``attrs["source"]["dropped"]``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.common import box_dict, env_dict, is_image, open_h5, read_h5
from genctl.errors import DataError


def _demo_names(data: Any, path: Path) -> list[str]:
    names = [n for n in data if re.fullmatch(r"demo_\d+", n)]
    if not names:
        raise DataError(f"{path}: group 'data' has no demo_N groups")
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def read_robomimic(src: str | os.PathLike, obs_keys: list[str] | None = None) -> tuple[dict, Iterator[dict]]:
    """Check the structure of every demo up front (keys, dtypes, lengths), then stream demos one at a time so
    image datasets need not fit in memory."""
    path = Path(src)
    with open_h5(path) as f:
        if "data" not in f:
            raise DataError(f"{path}: missing group 'data' (not a robomimic file)")
        data = f["data"]
        demos = _demo_names(data, path)
        first = data[demos[0]]
        if "obs" not in first:
            raise DataError(f"{path}: missing field 'data/{demos[0]}/obs'")
        available = sorted(first["obs"].keys())
        keys = sorted(obs_keys) if obs_keys else available
        unknown = [k for k in keys if k not in available]
        if unknown:
            raise DataError(f"{path}: obs_keys {unknown} not in 'data/{demos[0]}/obs' (has {available})")
        shapes: dict[str, tuple] = {}
        for name in demos:
            _check_demo(data[name], name, keys, path, shapes)
        has_next = all("next_obs" in data[d] for d in demos)
        env_args = data.attrs.get("env_args")
        env_meta = json.loads(env_args) if isinstance(env_args, (str, bytes)) else {}
    images = [k for k in keys if shapes[k][1] == np.uint8 and len(shapes[k][0]) == 3 and shapes[k][0][-1] in (1, 3, 4)]
    low_dim = [k for k in keys if k not in images]
    if not low_dim:
        raise DataError(f"{path}: obs_keys {keys} are all images; at least one low-dimensional key is needed")
    obs_dim = int(sum(np.prod(shapes[k][0]) for k in low_dim))
    act_shape = shapes["actions"][0]
    action_space = box_dict(act_shape, -1.0, 1.0)  # robomimic actions are normalised to [-1, 1]
    attrs = {
        "source": {"kind": "robomimic", "path": str(path.resolve()), "obs_keys": keys, "env_meta": env_meta,
                   "dropped": ([f"next_obs/{k}" for k in images] if has_next else [])
                   + [f"obs/{k}" for k in available if k not in keys]},
        "env": env_dict(env_meta.get("env_name"), kwargs=env_meta.get("env_kwargs"), obs_keys=low_dim,
                        obs_dim=obs_dim, action_space=action_space, env_type=env_meta.get("type")),
        "observation_space": box_dict([obs_dim]),
        "action_space": action_space,
    }
    return attrs, _episodes(path, demos, low_dim, images, has_next)


def _check_demo(demo: Any, name: str, keys: list[str], path: Path, shapes: dict) -> None:
    """Structure only (no data reads): fields present, lengths equal, dtypes/shapes equal across demos."""
    fields = {f"obs/{k}": f"data/{name}/obs/{k}" for k in keys}
    fields.update({k: f"data/{name}/{k}" for k in ("actions", "rewards", "dones")})
    t = None
    for rel, full in fields.items():
        if rel not in demo:
            raise DataError(f"{path}: missing field {full!r}")
        ds = demo[rel]
        if not hasattr(ds, "dtype") or ds.ndim == 0:
            raise DataError(f"{path}: field {full!r} is not an array dataset")
        if ds.dtype.kind not in "biuf":
            raise DataError(f"{path}: field {full!r} has dtype {ds.dtype}, expected numbers")
        t = ds.shape[0] if t is None else t
        if ds.shape[0] != t:
            raise DataError(f"{path}: length mismatch: field {full!r} has {ds.shape[0]} rows, expected {t}")
        key = rel.split("/", 1)[1] if rel.startswith("obs/") else rel
        sig = (tuple(ds.shape[1:]), ds.dtype)
        if shapes.setdefault(key, sig)[0] != sig[0]:
            raise DataError(f"{path}: field {full!r} has per-step shape {sig[0]}, other demos have {shapes[key][0]}")
    if t == 0:
        raise DataError(f"{path}: demo 'data/{name}' is empty")


def _episodes(path: Path, demos: list[str], low_dim: list[str], images: list[str],
              has_next: bool) -> Iterator[dict[str, np.ndarray]]:
    with open_h5(path) as f:
        for name in demos:
            g = f["data"][name]
            ep: dict[str, np.ndarray] = {
                "action": read_h5(g, "actions", path).reshape(g["actions"].shape[0], -1),
                "reward": read_h5(g, "rewards", path),
            }
            dones = read_h5(g, "dones", path).astype(bool)
            ep["terminated"] = dones
            ep["truncated"] = np.zeros_like(dones)
            ep["truncated"][-1] = not dones[-1]  # a demo that ends without done was cut off
            for k in low_dim:
                ep[f"obs/{k}"] = read_h5(g["obs"], k, path)
                if has_next:
                    ep[f"next_obs/{k}"] = read_h5(g["next_obs"], k, path)
            for k in images:
                frames = read_h5(g["obs"], k, path)
                if not is_image(frames):
                    raise DataError(f"{path}: field 'data/{name}/obs/{k}' is not uint8 (T, H, W, C)")
                ep[f"image/{k}"] = frames
            if "states" in g and hasattr(g["states"], "dtype"):
                ep["state/sim"] = read_h5(g, "states", path)
            yield ep
