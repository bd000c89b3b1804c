"""PNG plots of a run: learning curves per stage, eval return over training, and the policy's action
distribution at chosen states (samples vs the logged action), which shows multimodality at a glance."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from genctl.errors import GenctlError
from genctl.metrics import read_metrics


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: Path, out: Path) -> list[Path]:
    rows = read_metrics(run_dir)
    if not rows:
        raise GenctlError(f"{run_dir}: no metrics.jsonl rows to plot (has it trained?)")
    plt = _plt()
    by_stage: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_stage[r.get("stage", "?")].append(r)
    files = []
    for stage, rs in by_stage.items():
        keys = [k for k in rs[0] if k not in ("step", "time", "stage") and isinstance(rs[0][k], (int, float))]
        if not keys:
            continue
        fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
        steps = [r["step"] for r in rs]
        for ax, k in zip(axes[:, 0], keys, strict=True):
            ax.plot(steps, [r.get(k, np.nan) for r in rs], lw=1.2)
            ax.set_ylabel(k, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.suptitle(f"{run_dir.name}: {stage}")
        fig.tight_layout()
        f = out / f"curves_{stage}.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(f)
    return files


def plot_action_samples(run_dir: Path, out: Path, *, states: int = 6, n: int = 256) -> Path:
    from genctl.apps.policy import LoadedPolicy
    from genctl.datasets import EpisodeStore, load_transitions

    policy = LoadedPolicy.from_run(run_dir)
    store = EpisodeStore.open(policy.meta["store"])
    val = policy.meta.get("val_episodes") or list(range(min(3, store.n_episodes)))
    data = load_transitions(store, episodes=val)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(data["obs"]), size=min(states, len(data["obs"])), replace=False)
    plt = _plt()
    cols = min(3, len(idx))
    rows = int(np.ceil(len(idx) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, i in zip(axes.flat, idx, strict=False):
        cand = policy.candidates(data["obs"][i], n)
        a = data["action"][i]
        if cand.shape[1] >= 2:
            ax.scatter(cand[:, 0], cand[:, 1], s=6, alpha=0.5, label="policy samples")
            ax.scatter([a[0]], [a[1]], marker="*", s=160, c="red", label="logged action")
            ax.set_xlabel("a[0]")
            ax.set_ylabel("a[1]")
        else:
            ax.hist(cand[:, 0], bins=40, alpha=0.7)
            ax.axvline(a[0], c="red")
        ax.set_title(f"state {i}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(idx):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{run_dir.name}: {n} action samples per state (validation episodes)")
    fig.tight_layout()
    f = out / "action_samples.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    return f


def plot_run(run: str | Path, *, states: int = 6, samples: int = 256) -> list[Path]:
    run_dir = Path(run)
    if not (run_dir / "config.yaml").exists():
        raise GenctlError(f"{run_dir} is not a run folder (no config.yaml)")
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    files = plot_curves(run_dir, out)
    files.append(plot_action_samples(run_dir, out, states=states, n=samples))
    return files
