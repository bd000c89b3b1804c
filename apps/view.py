"""Browse a zarr episode store in rerun: observations and actions over time, stored camera frames, and
frames re-rendered by replaying the simulator state (``state/qpos``, ``state/qvel``) when the store has it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from genctl.apps.blueprints import StoreLayout, store_blueprint
from genctl.apps.rollout_log import maze_walls, y_up
from genctl.apps.viz import Viewer
from genctl.datasets import EpisodeStore
from genctl.errors import DataError, GenctlError
from genctl.progress import progress_iter

log = logging.getLogger("genctl.view")


def parse_episodes(spec: str, n: int) -> list[int]:
    """``"0,3,10:20"`` -> [0, 3, 10..19], clipped to the store; ``"all"`` -> every episode."""
    if spec.strip() == "all":
        return list(range(n))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                out.extend(range(int(a or 0), min(int(b or n), n)))
            else:
                out.append(int(part))
        except ValueError as e:
            raise GenctlError(f"--episodes {spec!r}: expected indices or ranges like 0,3,10:20") from e
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise GenctlError(f"--episodes: episode {bad[0]} does not exist (store has {n} episodes)")
    if not out:
        raise GenctlError(f"--episodes {spec!r} selects no episode (the store has {n}; ranges are start:stop "
                          "with start < stop, e.g. 0:5)")
    return out


def _replay_env(store: EpisodeStore) -> Any | None:
    env_info = store.attrs.get("env")
    if not env_info or "state/qpos" not in store.keys:
        return None
    from genctl.envs import make_env_from_info

    env = make_env_from_info(env_info, render_mode="rgb_array")
    env.reset(seed=0)
    return env


def _set_state(env: Any, qpos: np.ndarray, qvel: np.ndarray) -> None:
    u = env.unwrapped
    if hasattr(u, "set_state"):
        u.set_state(qpos, qvel)
        return
    import mujoco

    u.data.qpos[:] = qpos
    u.data.qvel[:] = qvel
    mujoco.mj_forward(u.model, u.data)


def view_store(path: str | Path, *, episodes: str = "0:5", rerun: tuple[str, str | None],
               render: bool = False, progress: bool = True) -> tuple[list[Path], str | None]:
    import rerun as rr

    store = EpisodeStore.open(path)
    idx = parse_episodes(episodes, store.n_episodes)
    for i in idx:  # a damaged store fails here, before the recording file is created
        _check_episode(store, i)
    env = _replay_env(store) if render else None  # a bad env description fails before anything is written
    viewer = Viewer(rerun, app_id=f"genctl-view-{Path(path).name}", default_file=Path(path).with_suffix(".rrd"))
    if render and env is None:
        log.warning("--render: %s holds no env or simulator state (state/qpos); showing stored data only", path)
    try:
        if env is not None:
            walls = maze_walls(env)
            if walls is not None:
                viewer.log("maze/walls", rr.Boxes2D(centers=walls[0], half_sizes=walls[1]), static=True)
                viewer.log("maze/walls", y_up(), static=True)
        viewer.log("store", rr.TextDocument(_describe(store)), static=True)
        first = store.episode(idx[0]) if idx else {}
        viewer.send_blueprint(store_blueprint(StoreLayout(
            episodes=idx, images=[k.split("/", 1)[1] for k in first if k.startswith("image/")],
            render=env is not None, maze=env is not None and getattr(env.unwrapped, "maze", None) is not None,
            series=[k for k in ("action", "obs", "reward") if k in first] + [k for k in first if k.startswith("obs/")],
            title=f"genctl view {Path(path).name}")))
        for i in progress_iter(idx, desc="episodes", enabled=progress):
            ep = store.episode(i)
            p = f"ep_{i:03d}"
            t = np.arange(len(ep["action"]))
            for key, arr in ep.items():
                if key.startswith("image/"):
                    for k in range(len(arr)):
                        viewer.set_step(k)
                        viewer.log(f"{p}/{key}", rr.Image(arr[k]))
                elif arr.ndim <= 2 and (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
                    viewer.scalars_series(f"{p}/{key}", t, arr.reshape(len(arr), -1).astype(np.float64))
            if "reward" in ep:  # BC-only stores (e.g. LeRobot demos without next.reward) have none
                viewer.scalars_series(f"{p}/return", t, np.cumsum(ep["reward"].astype(np.float64)))
            if env is not None:
                qpos, qvel = ep["state/qpos"], ep["state/qvel"]
                for k in range(len(qpos)):
                    _set_state(env, qpos[k], qvel[k])
                    viewer.set_step(k)
                    viewer.log(f"{p}/render", rr.Image(np.asarray(env.render(), np.uint8)))
                if getattr(env.unwrapped, "maze", None) is not None:
                    viewer.log(f"maze/{p}", y_up(), static=True)
                    viewer.log(f"maze/{p}/path", rr.LineStrips2D([qpos[:, :2]], radii=0.03))
    finally:
        if env is not None:
            env.close()
        viewer.close()
    return viewer.files, viewer.url


def _check_episode(store: EpisodeStore, i: int) -> None:
    """Decode every field of episode ``i`` (unreadable chunks raise DataError) and reject NaN/Inf."""
    for key, arr in store.episode(i).items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(f"store {store.path}: field 'data/{key}' contains NaN/Inf in episode {i}")


def _describe(store: EpisodeStore) -> str:
    a = store.attrs
    env = (a.get("env") or {}).get("id")
    src = a.get("source") or {}
    return (f"store {store.path}\nenv {env}\nsource {src.get('kind')}\n"
            f"episodes {store.n_episodes}, transitions {store.n_transitions}\nkeys {', '.join(store.keys)}")
