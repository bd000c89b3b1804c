"""Demo collection: run a scripted expert in simulation and write the episodes to a zarr store.

Reproducibility is per episode: episode ``i`` resets its env with the ``i``-th seed of
``train_seeds(episodes, start=seed)`` and draws its action noise from its own RNG, so the arrays are the
same whatever the number of worker processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from genctl.errors import GenctlError
from genctl.progress import progress_bar

DEFAULT_CAMERA = "default"  # the env's own render view; frames are stored as image/<camera>
DEFAULT_IMAGE_SIZE = 240
_WORKER: dict[str, Any] = {}


def _episode_rng(env_seed: int) -> np.random.Generator:
    """The RNG of one episode (expert choices + action noise), a function of its env seed only."""
    return np.random.default_rng([int(env_seed), 0x67656E63])


def _build(env_id: str, expert: str, env_kwargs: dict[str, Any], images: dict[str, Any] | None
           ) -> tuple[Any, Any, Any]:
    from genctl.envs import make_env, make_expert

    view = {} if not images else {"render_mode": "rgb_array", "camera": images["camera"],
                                  "height": images["height"], "width": images["width"]}
    env = make_env(env_id, **view, **env_kwargs)
    scripted = make_expert(expert, env)
    random_actor = make_expert("random", env)
    return env, scripted, random_actor


def run_episode(env: Any, actor: Any, env_seed: int, *, noise: float = 0.0, images: dict[str, Any] | None = None,
                record: bool = True) -> dict[str, Any]:
    """One episode with ``actor`` (an Expert); returns store arrays (if ``record``) and a summary.

    Noise: Gaussian ``noise`` sigma added to the actor's action, then clipped to the action space.
    """
    rng = _episode_rng(env_seed)
    obs, info = env.reset(seed=int(env_seed))
    actor.reset(obs, info, rng)
    data = env.unwrapped.data
    low, high = env.action_space.low, env.action_space.high
    try:
        dict_obs = env.get_wrapper_attr("last_obs_dict") is not None
    except AttributeError:
        dict_obs = False
    rows: dict[str, list[np.ndarray]] = {}

    def add(key: str, value: Any) -> None:
        rows.setdefault(key, []).append(np.array(value, copy=True))

    def add_obs(prefix: str, flat: np.ndarray) -> None:
        if dict_obs:
            for k, v in env.get_wrapper_attr("last_obs_dict").items():
                add(f"{prefix}/{k}", np.asarray(v, dtype=np.float32))
        else:
            add(prefix, flat)

    ret, length, done = 0.0, 0, False
    while not done:
        if record:
            add_obs("obs", obs)
            add("state/qpos", np.asarray(data.qpos, dtype=np.float64))
            add("state/qvel", np.asarray(data.qvel, dtype=np.float64))
            if images:
                add(f"image/{images['camera']}", np.asarray(env.render(), dtype=np.uint8))
        action = np.asarray(actor.act(obs, info), dtype=np.float64)
        if noise > 0:
            action = action + noise * rng.standard_normal(action.shape)
        action = np.clip(action, low, high).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        ret += float(reward)
        length += 1
        done = bool(terminated or truncated)
        if record:
            add("action", action)
            add("reward", np.float32(reward))
            add("terminated", bool(terminated))
            add("truncated", bool(truncated))
            add_obs("next_obs", obs)
    summary = {"seed": int(env_seed), "return": ret, "length": length, "success": bool(info["success"])}
    arrays = {k: np.stack(v) for k, v in rows.items()} if record else {}
    return {"arrays": arrays, "summary": summary}


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned workers inherit the environment at start: one BLAS/OpenMP thread each (2-core machines)."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _init_worker(env_id: str, expert: str, env_kwargs: dict[str, Any], images: dict[str, Any] | None) -> None:
    torch = sys.modules.get("torch")  # collection never needs torch; only tame it if it is loaded
    if torch is not None:
        torch.set_num_threads(1)
    _WORKER["env"], _WORKER["expert"], _WORKER["random"] = _build(env_id, expert, env_kwargs, images)


def _worker_episode(job: tuple[int, int, bool, float, bool]) -> dict[str, Any]:
    _index, env_seed, use_random, noise, images = job
    actor = _WORKER["random"] if use_random else _WORKER["expert"]
    return run_episode(_WORKER["env"], actor, env_seed, noise=0.0 if use_random else noise, images=images)


def _episodes(jobs: list[tuple[int, int, bool, float, bool]], workers: int, init_args: tuple) -> Iterator[dict]:
    """Episode results in job order, from this process or a spawn pool (EGL/GL state does not fork)."""
    if workers <= 1:
        _WORKER["env"], _WORKER["expert"], _WORKER["random"] = _build(*init_args)
        try:
            for job in jobs:
                yield _worker_episode(job)
        finally:
            _WORKER.pop("env").close()
        return
    ctx = mp.get_context("spawn")
    with _single_threaded_children():
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=init_args)
    with pool:
        yield from pool.imap(_worker_episode, jobs, chunksize=1)


def collect(env_id: str, *, expert: str, episodes: int, noise: float, random_frac: float = 0.0,
            workers: int = 1, seed: int = 0, out: str | Path, images: bool = False, overwrite: bool = False,
            camera: str = DEFAULT_CAMERA, image_size: int = DEFAULT_IMAGE_SIZE, image_codec: str = "lz4",
            env_kwargs: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Record demonstrations from a scripted expert into a zarr episode store and return its path.

    Args:
        env_id: a registered env id (``genctl envs``), e.g. ``PointMaze_Medium-v3`` or ``FetchPickAndPlace-v4``.
        expert: scripted expert name (``genctl envs`` lists them): ``maze`` (PointMaze), ``fetch``
            (FetchReach/Push/PickAndPlace), ``random``, or ``auto`` (the env's own). AntMaze has none.
        episodes: number of episodes to record.
        noise: Gaussian action-noise sigma added to the expert's action (then clipped to the action space);
            0 gives clean expert demos, 0.3-0.5 D4RL-"medium"-like ones.
        random_frac: fraction of episodes driven by uniform random actions instead of the expert
            (D4RL-like "mixed" datasets); which episodes is fixed by ``seed``.
        workers: processes; each has its own env + expert and the parent writes. Results do not depend on it.
        seed: episode ``i`` uses env seed ``train_seeds(episodes, start=seed)[i]`` (a disjoint range from
            evaluation seeds); use ``seed=N`` for a second batch that does not repeat the first N episodes.
        out: store path (``.zarr``); written atomically.
        images: also store camera frames ``image/<camera>`` (uint8 RGB, offscreen render).
        camera: ``default`` (the env's own view), ``top`` (overhead; mazes: the whole maze with the goal
            marker) or a camera named in the MuJoCo model; recorded so evaluation renders the same view.
        image_size: frame height = width in pixels (e.g. 84 for a vision policy, 240 for viewing).
        image_codec: ``lz4`` (fast to write and read) or ``zstd`` (smaller) for the camera frames.
        overwrite: replace an existing store at ``out``.
        env_kwargs: extra env constructor kwargs (recorded in ``attrs["env"]`` so the env can be rebuilt).
        progress: show a tqdm progress bar.

    The store holds per step ``obs`` (or ``obs/<key>`` for dict observations), ``next_obs``, ``action``,
    ``reward``, ``terminated``, ``truncated``, ``state/qpos``, ``state/qvel`` (to re-render later) and
    optionally ``image/<camera>``; ``attrs["source"]`` records expert, noise, random_frac, seeds and the camera.
    """
    from genctl.datasets import StoreWriter
    from genctl.envs import describe_env, make_env, make_expert, train_seeds

    if episodes < 1:
        raise GenctlError(f"--episodes must be >= 1, got {episodes}")
    if noise < 0 or not np.isfinite(noise):
        raise GenctlError(f"--noise must be a finite sigma >= 0, got {noise}")
    if not 0.0 <= random_frac <= 1.0:
        raise GenctlError(f"--random-frac must be in [0, 1], got {random_frac}")
    if workers < 1:
        raise GenctlError(f"--workers must be >= 1, got {workers}")
    if not 8 <= image_size <= 1024:
        raise GenctlError(f"--image-size must be in [8, 1024] pixels, got {image_size}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise GenctlError(f"store {out} already exists (use --overwrite to replace it)")
    env_kwargs = dict(env_kwargs or {})
    seeds = train_seeds(episodes, start=seed)

    view = {"camera": camera, "height": int(image_size), "width": int(image_size)} if images else None
    probe = make_env(env_id, camera=camera, **env_kwargs)  # validates id, kwargs, camera, expert before workers
    try:
        info = describe_env(probe, env_id, **env_kwargs)
        make_expert(expert, probe)
    finally:
        probe.close()

    n_random = int(round(random_frac * episodes))
    chosen = np.random.default_rng([int(seed), 0x72616E64]).permutation(episodes)[:n_random]
    is_random = np.zeros(episodes, dtype=bool)
    is_random[chosen] = True
    jobs = [(i, seeds[i], bool(is_random[i]), float(noise), view) for i in range(episodes)]

    attrs = {
        "source": {"kind": "collect", "id": env_id, "expert": expert, "noise": float(noise),
                   "random_frac": float(random_frac), "seed": int(seed), "seeds": seeds,
                   "random_episodes": np.flatnonzero(is_random).tolist(), "images": view},
        "env": info,
        "observation_space": info["observation_space"],
        "action_space": info["action_space"],
        "ref_min_score": info["ref_min_score"],
        "ref_max_score": info["ref_max_score"],
    }
    workers = min(workers, episodes)
    successes = 0
    with StoreWriter(out, attrs, overwrite=overwrite, image_codec=image_codec) as writer, \
            progress_bar(episodes, desc=f"collect {env_id}", unit="ep", enabled=progress) as bar:
        for i, result in enumerate(_episodes(jobs, workers, (env_id, expert, env_kwargs, view))):
            writer.add_episode(result["arrays"])
            successes += result["summary"]["success"] and not is_random[i]
            bar.update(1)
            bar.set_postfix(success=f"{successes / max(1, i + 1 - is_random[:i + 1].sum()):.0%}")
        n_expert = episodes - n_random
        # Written with the other attrs when the writer closes (StoreWriter.attrs is read at finish).
        writer.attrs["source"]["expert_success_rate"] = successes / n_expert if n_expert else None
    return out


def collect_summary(store: str | Path) -> str:
    """What a collect made: episodes, transitions, the expert's success on its own episodes, random episodes."""
    from genctl.datasets import EpisodeStore

    st = EpisodeStore.open(store)
    src = st.attrs.get("source") or {}
    n_random = len(src.get("random_episodes") or [])
    rate = src.get("expert_success_rate")
    expert = (f"expert {src.get('expert')} succeeded in {100 * rate:.0f} % of its {st.n_episodes - n_random} "
              f"episodes (action noise {src.get('noise')})" if rate is not None else "no expert episodes")
    return (f"wrote {st.path}: {st.n_episodes} episodes, {st.n_transitions} transitions; {expert}; "
            f"{n_random} random-action episodes")


def run_expert(env_id: str, expert: str, episodes: int, seed: int = 0, *, noise: float = 0.0,
               env_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``episodes`` expert episodes without recording; success rate, mean return/length and speed."""
    from genctl.envs import train_seeds

    env, actor, _ = _build(env_id, expert, dict(env_kwargs or {}), None)
    t0 = time.perf_counter()
    try:
        summaries = [run_episode(env, actor, s, noise=noise, record=False)["summary"]
                     for s in train_seeds(episodes, start=seed)]
    finally:
        env.close()
    elapsed = time.perf_counter() - t0
    steps = sum(s["length"] for s in summaries)
    return {"env": env_id, "expert": expert, "episodes": episodes,
            "success_rate": float(np.mean([s["success"] for s in summaries])),
            "mean_return": float(np.mean([s["return"] for s in summaries])),
            "mean_length": steps / episodes, "episodes_per_s": episodes / elapsed, "steps_per_s": steps / elapsed}


def expert_success_rate(env_id: str, expert: str, episodes: int, seed: int = 0) -> float:
    """Fraction of ``episodes`` (train seeds from ``seed``) whose final step has ``info["success"]``."""
    return run_expert(env_id, expert, episodes, seed)["success_rate"]
