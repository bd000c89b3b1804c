"""PNG plots of a run: learning curves per stage (each on its own step axis, smoothed over the raw values, with
the validation loss and the closed-loop evaluations made during training), and the policy's action distribution
at chosen states: samples coloured by Q, the logged action, and the data's actions at the nearest states —
which shows at a glance whether the policy is multimodal, where the critic pushes it, and how it sits in the
data. For D > 2 every pair of the first four action dimensions is drawn; in mazes, the state's place on the map.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from genctl.errors import GenctlError
from genctl.metrics import read_metrics

NEIGHBOURS = 32  # dataset actions drawn per state: those of the nearest states in normalised observation space
MAX_PAIR_DIMS = 4  # action dims whose pairs are drawn (4 -> 6 panels per state)
SKIP = ("step", "time", "stage")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Exponential moving average with a window of ~``frac`` of the curve (NaN-tolerant), for noisy losses."""
    alpha = min(1.0, 2.0 / (max(2.0, frac * len(values)) + 1.0))
    out, acc = np.empty(len(values)), np.nan
    for i, v in enumerate(values):
        acc = v if np.isnan(acc) else (acc if np.isnan(v) else acc + alpha * (v - acc))
        out[i] = acc
    return out


def stage_rows(rows: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, list[dict[str, Any]]]]:
    """Rows per stage with the step counted from the stage's own start (the global step minus the steps of the
    stages before it); stage="eval" rows are placed on the policy stage's axis."""
    by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
    offsets: dict[str, int] = {}
    last = 0
    for r in rows:
        st = r.get("stage", "?")
        if st != "eval" and st not in offsets:
            offsets[st] = last
        if st != "eval":
            last = int(r["step"])
        by_stage[st].append(r)
    out = {}
    for st, rs in by_stage.items():
        off = offsets.get("policy", 0) if st == "eval" else offsets.get(st, 0)
        out[st] = (np.array([r["step"] - off for r in rs], np.int64), rs)
    return out


def plot_curves(run_dir: Path, out: Path) -> list[Path]:
    rows = read_metrics(run_dir)
    if not rows:
        raise GenctlError(f"{run_dir}: no metrics.jsonl rows to plot (has it trained?)")
    plt = _plt()
    stages = stage_rows(rows)
    evals = stages.pop("eval", None)
    files = []
    for stage, (steps, rs) in stages.items():
        # val_loss gets its own panel: it is the plain matching loss, while GMPO's training loss is weighted
        keys = [k for k in dict.fromkeys(k for r in rs for k in r) if k not in SKIP
                and isinstance(rs[-1].get(k, 0.0), int | float)]
        panels: list[tuple[str, list[str]]] = [(k, [k]) for k in keys]
        if stage == "policy" and evals is not None:
            panels += [("closed-loop eval", ["eval_success_rate", "eval_normalized", "eval_return"])]
        if not panels:
            continue
        fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.1 * len(panels)), sharex=True, squeeze=False)
        for ax, (title, ks) in zip(axes[:, 0], panels, strict=True):
            if title == "closed-loop eval":
                _eval_panel(ax, evals)
                continue
            y = np.array([r.get(ks[0], np.nan) for r in rs], np.float64)
            if ks[0] == "val_loss":  # computed with fixed noise on fixed states: not noisy, not smoothed
                ax.plot(steps, y, lw=1.5, color="C1", marker=".")
                ax.set_ylabel("val_loss\n(held-out,\nunweighted)", fontsize=8)
                ax.grid(alpha=0.3)
                continue
            ax.plot(steps, y, lw=0.8, alpha=0.3, color="C0")
            ax.plot(steps, smooth(y), lw=1.5, color="C0")
            ax.set_ylabel(ks[0], fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel(f"{stage} step (raw values faint, smoothed solid)")
        fig.suptitle(f"{run_dir.name}: {stage} stage")
        fig.tight_layout()
        f = out / f"curves_{stage}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def _eval_panel(ax: Any, evals: tuple[np.ndarray, list[dict[str, Any]]]) -> None:
    steps, rs = evals
    if any("eval_normalized" in r for r in rs):
        key, label = "eval_normalized", "normalised score"
    elif any(r.get("eval_success_rate") is not None for r in rs):
        key, label = "eval_success_rate", "success rate"
    else:
        key, label = "eval_return", "return"
    ax.plot(steps, [r.get(key, np.nan) for r in rs], marker="o", lw=1.5, color="C2")
    ax.set_ylabel(f"eval {label}", fontsize=8)
    ax.grid(alpha=0.3)


def _maze_context(policy: Any, store: Any) -> tuple[Any, int, int] | None:
    """(walls, position offset, goal offset) in the flat observation when the run's env is a maze."""
    from genctl.apps.rollout_log import maze_walls
    from genctl.envs import make_env_from_info

    keys = store.obs_keys or []
    if not policy.env_info or "Maze" not in str(policy.env_info.get("id")) or "achieved_goal" not in keys:
        return None
    sizes = {k: int(np.prod(store.array_info(f"obs/{k}").shape[1:])) for k in keys}
    offsets = dict(zip(keys, np.cumsum([0] + [sizes[k] for k in keys])[:-1].tolist(), strict=True))
    env = make_env_from_info(policy.env_info)
    try:
        walls = maze_walls(env)
    finally:
        env.close()
    if walls is None:
        return None
    return walls, offsets["achieved_goal"], offsets.get("desired_goal", offsets["achieved_goal"])


def plot_action_samples(run_dir: Path, out: Path, *, states: int = 6, n: int = 256) -> Path:
    from genctl.apps.policy import LoadedPolicy
    from genctl.datasets import EpisodeStore, load_transitions

    policy = LoadedPolicy.from_run(run_dir)
    store = EpisodeStore.open(policy.meta["store"])
    store.select_obs(policy.obs_spec)  # data.obs_keys: the states as the policy sees them (keys, camera pixels)
    selected = policy.obs_spec is not None and not policy.obs_spec.is_default
    val = policy.meta.get("val_episodes") or list(range(min(3, store.n_episodes)))
    data = load_transitions(store, episodes=val)
    pool = load_transitions(store)  # the data's actions near each state come from every episode
    pool_n = policy.obs_norm.normalize(pool["obs"])
    rng = np.random.default_rng(0)
    idx = rng.choice(len(data["obs"]), size=min(states, len(data["obs"])), replace=False)
    d = policy.action_dim
    pairs = list(itertools.combinations(range(min(d, MAX_PAIR_DIMS)), 2)) or [(0,)]
    maze = None if selected else _maze_context(policy, store)  # (its offsets are those of the whole env obs)
    cols = len(pairs) + (maze is not None)
    plt = _plt()
    fig, axes = plt.subplots(len(idx), cols, figsize=(3.3 * cols, 3.1 * len(idx)), squeeze=False)
    for row, i in enumerate(idx):
        obs = data["obs"][i]
        cand = policy.candidates(obs, n)
        qv = policy.q_v(np.repeat(obs[None], n, 0), cand)
        near = np.argsort(np.linalg.norm(pool_n - policy.obs_norm.normalize(obs[None]), axis=1))[:NEIGHBOURS]
        ax_row = list(axes[row])
        if maze is not None:
            _maze_panel(ax_row.pop(0), maze, obs, i)
        for ax, pair in zip(ax_row, pairs, strict=True):
            _sample_panel(ax, pair, cand, None if qv is None else qv[0], pool["action"][near], data["action"][i])
    axes[0, -1].legend(fontsize=6, loc="best")
    q = " coloured by Q (yellow = high)" if policy.critic is not None else ""
    fig.suptitle(f"{run_dir.name}: {n} policy samples per state{q}\n★ logged action; × actions of the "
                 f"{NEIGHBOURS} nearest states in the data (states from validation episodes)", fontsize=9)
    fig.tight_layout()
    f = out / "action_samples.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    return f


def _sample_panel(ax: Any, pair: tuple[int, ...], cand: np.ndarray, q: np.ndarray | None, near: np.ndarray,
                  logged: np.ndarray) -> None:
    if len(pair) == 1:  # 1-D actions: histograms
        ax.hist(cand[:, 0], bins=40, alpha=0.6, label="policy samples")
        ax.hist(near[:, 0], bins=20, alpha=0.5, color="grey", label="data near this state")
        ax.axvline(logged[0], c="red", label="logged action")
        ax.set_xlabel("a[0]")
        return
    a, b = pair
    ax.scatter(cand[:, a], cand[:, b], s=6, alpha=0.6, c=q if q is not None else "C0",
               cmap="viridis" if q is not None else None, label="policy samples")
    ax.scatter(near[:, a], near[:, b], marker="x", s=18, c="grey", alpha=0.8, label="data near this state")
    ax.scatter([logged[a]], [logged[b]], marker="*", s=160, c="red", label="logged action")
    ax.set_xlabel(f"a[{a}]", fontsize=8)
    ax.set_ylabel(f"a[{b}]", fontsize=8)
    ax.grid(alpha=0.3)


def _maze_panel(ax: Any, maze: tuple[Any, int, int], obs: np.ndarray, i: int) -> None:
    (centers, halves), pos, goal = maze
    for c, h in zip(centers, halves, strict=True):
        ax.add_patch(_rect(c - h, 2 * h))
    ax.scatter([obs[pos]], [obs[pos + 1]], s=60, c="C0", label="position")
    ax.scatter([obs[goal]], [obs[goal + 1]], s=60, c="green", marker="s", label="goal")
    lo, hi = (centers - halves).min(0), (centers + halves).max(0)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_title(f"state {i}: place in the maze", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def _rect(corner: np.ndarray, size: np.ndarray) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle(tuple(corner), float(size[0]), float(size[1]), color=(0.45, 0.45, 0.55))


def plot_run(run: str | Path, *, states: int = 6, samples: int = 256) -> list[Path]:
    run_dir = Path(run)
    if not (run_dir / "config.yaml").exists():
        raise GenctlError(f"{run_dir} is not a run folder (no config.yaml)")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    files = plot_curves(run_dir, out)
    files.append(plot_action_samples(run_dir, out, states=states, n=samples))
    return files
