"""Local Minari dataset reader (by id under ``MINARI_DATASETS_PATH`` or by path), no network.

Minari episodes carry T+1 observations; the store keeps ``obs/<k>`` = first T and ``next_obs/<k>`` = last T so
nothing is lost and critics get exact successors. The env spec and reference scores go into the attributes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.common import as_float, box_dict, check_numeric, env_dict, is_image
from genctl.errors import DataError


def minari_root() -> Path:
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def resolve_minari(src: str | os.PathLike) -> Path | None:
    """The dataset's ``data`` folder (holding metadata.json) for a path or an id, or None."""
    candidates = [Path(src)]
    if not Path(src).is_absolute():
        candidates.append(minari_root() / str(src))
    for p in candidates:
        for d in (p / "data", p):
            if (d / "metadata.json").is_file():
                return d
    return None


def _flatten(prefix: str, value: Any, out: dict[str, np.ndarray]) -> None:
    if isinstance(value, dict):
        for k in sorted(value):
            _flatten(f"{prefix}/{k}" if prefix else str(k), value[k], out)
    elif isinstance(value, tuple):
        raise DataError(f"minari: tuple observations are not supported (field {prefix!r})")
    else:
        out[prefix] = np.asarray(value)


def _space_bounds(space: Any, names: list[str] | None, dim: int) -> dict[str, Any]:
    """Flat float32 Box summary of the (selected, non-image) parts of a Box or Dict observation space;
    bounds are null where the space is not made of Boxes."""
    from gymnasium import spaces

    if names is None:
        ok = isinstance(space, spaces.Box) and int(np.prod(space.shape)) == dim
        return box_dict([dim], space.low, space.high) if ok else box_dict([dim])
    lows, highs = [], []
    for n in names:
        sub = space
        for part in n.split("/"):
            sub = sub[part] if isinstance(sub, spaces.Dict) and part in sub.spaces else None
        if not isinstance(sub, spaces.Box):
            return box_dict([dim])
        lows.append(np.asarray(sub.low, np.float64).reshape(-1))
        highs.append(np.asarray(sub.high, np.float64).reshape(-1))
    low, high = np.concatenate(lows), np.concatenate(highs)
    return box_dict([dim], low, high) if len(low) == dim else box_dict([dim])


def read_minari(src: str | os.PathLike, obs_keys: list[str] | None = None) -> tuple[dict, Iterator[dict]]:
    import minari

    data_dir = resolve_minari(src)
    if data_dir is None:
        raise DataError(f"{src}: no Minari dataset found (looked for metadata.json under the path and under "
                        f"MINARI_DATASETS_PATH={minari_root()})")
    try:
        ds = minari.MinariDataset(data_dir)
        meta = dict(ds.storage.metadata)
    except Exception as e:  # minari raises ValueError/AssertionError/OSError for broken datasets
        raise DataError(f"{data_dir}: not a readable Minari dataset ({type(e).__name__}: {e})") from None
    if ds.total_episodes == 0:
        raise DataError(f"{data_dir}: Minari dataset has no episodes")
    first = _split_obs(next(iter(ds.iterate_episodes([0]))).observations, obs_keys, data_dir)
    names = [k[len("obs/"):] for k in first if k.startswith("obs/")] or None
    spec_json = meta.get("env_spec")
    spec = json.loads(spec_json) if isinstance(spec_json, str) else None
    ref_min, ref_max = as_float(meta.get("ref_min_score")), as_float(meta.get("ref_max_score"))
    act = ds.action_space
    action_space = box_dict(act.shape, getattr(act, "low", None), getattr(act, "high", None))
    dim = int(sum(np.prod(v.shape[1:]) for k, v in first.items() if not k.startswith("image/")))
    obs_space = _space_bounds(ds.observation_space, names, dim)
    attrs = {
        "source": {"kind": "minari", "id": meta.get("dataset_id"), "path": str(data_dir.resolve()),
                   "minari_version": meta.get("minari_version"), "algorithm_name": meta.get("algorithm_name"),
                   "obs_keys": obs_keys, "dropped": [f"next_{k}" for k in first if k.startswith("image")]},
        "env": env_dict(spec["id"] if spec else None, kwargs=(spec or {}).get("kwargs"), obs_keys=names,
                        obs_dim=obs_space["shape"][0], action_space=action_space,
                        max_episode_steps=(spec or {}).get("max_episode_steps"), ref_min_score=ref_min,
                        ref_max_score=ref_max, gym_spec=spec_json),
        "observation_space": obs_space,
        "action_space": action_space,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
    }
    return attrs, _episodes(ds, obs_keys, data_dir)


def _split_obs(observations: Any, obs_keys: list[str] | None, where: Path) -> dict[str, np.ndarray]:
    """(T+1)-row observations -> {``obs[/k]`` or ``image/k``: (T+1, ...)} for the selected keys."""
    flat: dict[str, np.ndarray] = {}
    if isinstance(observations, dict):
        _flatten("", observations, flat)
        if obs_keys:
            unknown = [k for k in obs_keys if k not in flat]
            if unknown:
                raise DataError(f"{where}: obs_keys {unknown} not in the observations (has {sorted(flat)})")
            flat = {k: flat[k] for k in obs_keys}
        return {(f"image/{k}" if is_image(v) else f"obs/{k}"): v for k, v in flat.items()}
    arr = np.asarray(observations)
    return {"image/obs" if is_image(arr) else "obs": arr}


def _episodes(ds: Any, obs_keys: list[str] | None, where: Path) -> Iterator[dict[str, np.ndarray]]:
    for ep in ds.iterate_episodes():
        t = len(ep.rewards)
        label = f"{where}: episode {ep.id}"
        out: dict[str, np.ndarray] = {}
        for key, v in _split_obs(ep.observations, obs_keys, where).items():
            if len(v) != t + 1:
                raise DataError(f"{label}: length mismatch: field 'observations/{key}' has {len(v)} rows, "
                                f"expected {t + 1} (T+1)")
            check_numeric(v, f"{label}: field 'observations/{key}'")
            out[key] = v[:-1]
            if not key.startswith("image/"):
                out["next_" + key] = v[1:]
        actions = np.asarray(ep.actions)
        if actions.dtype == object:
            raise DataError(f"{label}: field 'actions' is not an array (dict/tuple actions are not supported)")
        out["action"] = actions.reshape(t, -1) if actions.ndim != 2 else actions
        out["reward"] = np.asarray(ep.rewards)
        out["terminated"] = np.asarray(ep.terminations)
        out["truncated"] = np.asarray(ep.truncations)
        infos: dict[str, np.ndarray] = {}
        _flatten("", ep.infos or {}, infos)
        for k, v in infos.items():
            if not (v.dtype.kind in "biuf" and v.ndim >= 1 and len(v) in (t, t + 1)):
                continue
            if k.startswith("state/") and len(v) == t + 1:  # genctl's export: the sim state at each observation
                out[k] = v[:t]
            else:
                out[f"info/{k}"] = v[1:] if len(v) == t + 1 else v  # the info after each step
        yield out
