"""D4RL-format HDF5 reader: flat ``observations, actions, rewards, terminals, timeouts`` (+ optional
``next_observations``, ``infos/*``), split into episodes on ``terminals | timeouts``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.common import as_float, box_dict, env_dict, open_h5, read_h5, walk_h5
from genctl.errors import DataError

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
STATE_INFOS = ("qpos", "qvel")  # simulator state: enough to re-render, so it goes to state/<name>


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> tuple[np.ndarray, bool]:
    """Cumulative episode ends; an unterminated tail after the last flag is an episode too (returns True then)."""
    n = len(terminals)
    ends = np.flatnonzero(np.asarray(terminals, bool) | np.asarray(timeouts, bool)) + 1
    tail = len(ends) == 0 or ends[-1] != n
    if tail:
        ends = np.append(ends, n)
    return ends.astype(np.int64), tail


def read_d4rl(src: str | os.PathLike, obs_keys: list[str] | None = None) -> tuple[dict[str, Any], Iterator[dict]]:
    """Load and validate the whole file up front (so a bad file writes nothing), then yield episodes."""
    path = Path(src)
    if obs_keys:
        raise DataError(f"{path}: obs_keys does not apply to D4RL files (observations are one flat array)")
    with open_h5(path) as f:
        data = {k: read_h5(f, k, path) for k in REQUIRED}
        has_next = "next_observations" in f
        if has_next:
            data["next_observations"] = read_h5(f, "next_observations", path)
        extras: dict[str, np.ndarray] = {}
        skipped: list[str] = []
        if "infos" in f and not hasattr(f["infos"], "dtype"):
            for name, ds in walk_h5(f["infos"]):
                if ds.dtype.kind in "biuf" and ds.shape[:1] == data["rewards"].shape[:1]:
                    key = f"state/{name}" if name in STATE_INFOS else f"info/{name}"
                    extras[key] = read_h5(f["infos"], name, path)
                else:
                    skipped.append(f"infos/{name}")
        file_attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    n = len(data["rewards"])
    for k, a in {**data, **extras}.items():
        if a.ndim == 0 or len(a) != n:
            raise DataError(f"{path}: length mismatch: field {k!r} has {a.shape[:1] or 'no'} rows, expected {n} "
                            "(the length of 'rewards')")
    if n == 0:
        raise DataError(f"{path}: field 'rewards' is empty")
    for k in ("rewards", "terminals", "timeouts"):
        if data[k].ndim != 1:
            raise DataError(f"{path}: field {k!r} has shape {data[k].shape}, expected ({n},): one value per step")
    obs = data["observations"].reshape(n, -1)
    act = data["actions"].reshape(n, -1)
    if has_next and data["next_observations"].reshape(n, -1).shape != obs.shape:
        raise DataError(f"{path}: field 'next_observations' has shape {data['next_observations'].shape}, "
                        f"expected {obs.shape} like 'observations'")
    ends, tail = episode_bounds(data["terminals"], data["timeouts"])
    env_id = file_attrs.get("env_id") or file_attrs.get("env_name") or file_attrs.get("env")
    ref_min, ref_max = as_float(file_attrs.get("ref_min_score")), as_float(file_attrs.get("ref_max_score"))
    action_space = box_dict(act.shape[1:])  # the file does not carry bounds
    attrs = {
        "source": {"kind": "d4rl", "path": str(path.resolve()), "file_attrs": file_attrs,
                   "unterminated_tail": bool(tail), "skipped": skipped},
        "env": env_dict(str(env_id) if env_id else None, obs_dim=obs.shape[1], action_space=action_space,
                        ref_min_score=ref_min, ref_max_score=ref_max),
        "observation_space": box_dict(obs.shape[1:]),
        "action_space": action_space,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
    }
    return attrs, _episodes(data, extras, obs, act, ends, has_next)


def _episodes(data: dict[str, np.ndarray], extras: dict[str, np.ndarray], obs: np.ndarray, act: np.ndarray,
              ends: np.ndarray, has_next: bool) -> Iterator[dict[str, np.ndarray]]:
    n = len(obs)
    nxt = data["next_observations"].reshape(n, -1) if has_next else None
    term, tout = np.asarray(data["terminals"]), np.asarray(data["timeouts"])
    start = 0
    for end in ends.tolist():
        sl = slice(start, end)
        truncated = tout[sl].astype(bool)
        if not (term[end - 1] or tout[end - 1]):
            truncated = truncated.copy()
            truncated[-1] = True  # the file stops mid-episode
        ep = {"obs": obs[sl], "action": act[sl], "reward": data["rewards"][sl], "terminated": term[sl],
              "truncated": truncated}
        if nxt is not None:
            ep["next_obs"] = nxt[sl]
        for k, a in extras.items():
            ep[k] = a[sl]
        yield ep
        start = end
