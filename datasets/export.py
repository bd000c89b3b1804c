"""Write a store back out as a Minari dataset (``minari.load_dataset`` opens it).

Minari wants T+1 observations per episode: they are rebuilt as ``obs`` followed by the last ``next_obs``. The
dataset is created under a temporary datasets root and moved into place at the end, because a failed
``create_dataset_from_buffers`` leaves a half-written folder that Minari then reports as misconfigured.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genctl.datasets.ingest.minari import minari_root
from genctl.datasets.store import EpisodeStore
from genctl.errors import DataError
from genctl.fsutil import replace_dir, temp_sibling

log = logging.getLogger("genctl.export")


@contextlib.contextmanager
def _datasets_root(path: Path) -> Iterator[None]:
    """Point Minari at ``path`` for the duration (Minari reads the root only from the environment)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _box(space: dict | None, shape: tuple[int, ...]) -> Any:
    from gymnasium import spaces

    def bound(key: str, default: float) -> np.ndarray:
        vals = (space or {}).get(key)
        if vals is None or len(vals) != int(np.prod(shape)):
            return np.full(shape, default, np.float32)
        return np.array([default if v is None else v for v in vals], np.float32).reshape(shape)

    return spaces.Box(bound("low", -np.inf), bound("high", np.inf), shape=shape, dtype=np.float32)


def _spaces(store: EpisodeStore) -> tuple[Any, Any]:
    from gymnasium import spaces

    act = store.array_info("action")
    action_space = _box(store.attrs.get("action_space"), tuple(act.shape[1:]))
    if not store.obs_keys:
        return _box(store.attrs.get("observation_space"), tuple(store.array_info("obs").shape[1:])), action_space
    obs_space = spaces.Dict({n: spaces.Box(-np.inf, np.inf, tuple(store.array_info(f"obs/{n}").shape[1:]),
                                           np.float32) for n in store.obs_keys})
    return obs_space, action_space


def _buffers(store: EpisodeStore) -> Iterator[Any]:
    from minari.data_collector import EpisodeBuffer

    obs_keys = store.obs_field_keys()
    has_next = store.has_next_obs()
    extra = exported_extras(store)
    keys = obs_keys + (store.obs_field_keys(True) if has_next else []) + [
        "action", "reward", "terminated", "truncated"] + extra
    data = store.load(keys)
    starts = np.concatenate([[0], store.episode_ends[:-1]])
    for i, (a, b) in enumerate(zip(starts.tolist(), store.episode_ends.tolist(), strict=True)):
        def full(k: str, a: int = a, b: int = b) -> np.ndarray:
            last = data["next_" + k][b - 1: b] if has_next else data[k][b - 1: b]  # no successor known: repeat
            return np.concatenate([data[k][a:b], last])

        obs = {n: full(f"obs/{n}") for n in store.obs_keys} if store.obs_keys else full("obs")
        yield EpisodeBuffer(id=i, observations=obs, actions=data["action"][a:b], rewards=data["reward"][a:b],
                            terminations=data["terminated"][a:b], truncations=data["truncated"][a:b],
                            infos=_infos(data, extra, a, b) if extra else None)


def exported_extras(store: EpisodeStore) -> list[str]:
    """The store's ``state/*`` and ``info/*`` keys: they travel as Minari step infos (T+1 rows each)."""
    return [k for k in store.keys if k.startswith(("state/", "info/"))]


def _infos(data: dict[str, np.ndarray], keys: list[str], a: int, b: int) -> dict[str, Any]:
    """Minari infos have T+1 rows: the reset info, then one per step. ``state/<k>`` (the simulator state when
    observation t was seen) goes out under ``infos["state"][k]`` as rows 0..T-1 plus the last row repeated (the
    state after the last step is not logged); ``info/<k>`` (the info after step t) as ``infos[k]`` row t+1, with
    row 0 (reset) a copy of the first, as Minari's own collectors write it. The Minari reader maps both back."""
    out: dict[str, Any] = {}
    for k in keys:
        v = data[k][a:b]
        group, name = k.split("/", 1)
        if group == "state":
            out.setdefault("state", {})[name] = np.concatenate([v, v[-1:]])
        else:
            out[name] = np.concatenate([v[:1], v])
    return out


def _env_spec_json(env: dict[str, Any]) -> str | None:
    """The gymnasium EnvSpec JSON Minari stores: kept from a Minari source, else rebuilt from the env id and
    kwargs when the id is registered (so ``recover_environment`` works); None when neither is possible."""
    if env.get("gym_spec"):
        return str(env["gym_spec"])
    if not env.get("id"):
        return None
    import dataclasses

    import gymnasium as gym

    for attempt in range(2):
        try:
            spec = gym.spec(env["id"])
            break
        except Exception:
            if attempt:
                return None
            # its import prints a notice about Adroit envs to stderr: not ours to show
            with contextlib.suppress(Exception), contextlib.redirect_stderr(io.StringIO()):
                import gymnasium_robotics

                gym.register_envs(gymnasium_robotics)
    changes: dict[str, Any] = {"kwargs": {**spec.kwargs, **(env.get("kwargs") or {})}}
    if env.get("max_episode_steps"):
        changes["max_episode_steps"] = int(env["max_episode_steps"])
    try:
        return dataclasses.replace(spec, **changes).to_json()
    except Exception:  # kwargs that are not JSON-serialisable
        return None


def export_minari(store_path: str | os.PathLike, dataset_id: str, *, data_path: str | os.PathLike | None = None,
                  data_format: str = "hdf5") -> Path:
    """Export to ``<data_path or MINARI_DATASETS_PATH>/<dataset_id>``; returns that folder. Images are not
    exported (Minari would re-encode them); low-dimensional observations, actions, rewards and flags are."""
    import minari

    store = EpisodeStore.open(store_path)
    if not store.has_reward:
        raise DataError(f"store {store.path} has no rewards (BC-only demos); Minari datasets need them "
                        "(export it with --lerobot instead)")
    root = Path(data_path) if data_path else minari_root()
    target = root / dataset_id
    if target.exists():
        raise DataError(f"Minari dataset {dataset_id!r} already exists at {target}")
    obs_space, action_space = _spaces(store)
    left_out = [k for k in store.keys if k.startswith("image/")]
    if left_out:  # Minari would re-encode frames into its own format; say so instead of dropping them quietly
        log.warning("export to Minari: %s not exported (images; use --lerobot to keep camera frames)",
                    ", ".join(left_out))
    tmp_root = temp_sibling(root / ".genctl-minari-export")
    attrs = store.attrs
    try:
        with _datasets_root(tmp_root), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = minari.create_dataset_from_buffers(
                dataset_id, list(_buffers(store)), env=None, observation_space=obs_space,
                action_space=action_space, algorithm_name=f"genctl export of {Path(store_path).name}",
                description=f"Exported by genctl from {store_path} (source: {attrs.get('source')})",
                data_format=data_format)
            extra: dict[str, Any] = {}
            spec = _env_spec_json(attrs.get("env") or {})
            if spec:
                extra["env_spec"] = spec
            if attrs.get("ref_min_score") is not None and attrs.get("ref_max_score") is not None:
                extra["ref_min_score"] = float(attrs["ref_min_score"])
                extra["ref_max_score"] = float(attrs["ref_max_score"])
            if extra:
                ds.storage.update_metadata(extra)
        target.parent.mkdir(parents=True, exist_ok=True)
        ns_meta = (tmp_root / dataset_id).parent / "namespace_metadata.json"
        if ns_meta.exists() and not (target.parent / ns_meta.name).exists():
            shutil.copy2(ns_meta, target.parent / ns_meta.name)
        replace_dir(tmp_root / dataset_id, target)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"export of {store_path} to Minari {dataset_id!r} failed ({type(e).__name__}: {e})") from e
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return target
