"""Training orchestration: critic -> (behaviour) -> policy, each stage resumable from its last checkpoint.

The algorithms in ``genctl.policies`` only do ``update(batch)``; this module owns the loop, the data, the
normaliser, EMA, checkpoints, metrics and the progress bar.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genctl.apps.chunking import ChunkCritic, SeqSpec, WindowData, build_windows
from genctl.apps.critic_report import (
    advantage_stats,
    critic_report,
    critic_values,
    format_critic_report,
    mc_targets,
)
from genctl.apps.distributed import (
    DistInfo,
    any_rank,
    barrier,
    broadcast_modules,
    gather,
    init_distributed,
    replica_divergence,
    resolve_device,
    sync_gradients,
)
from genctl.apps.train_monitor import ValidationLoss, periodic_eval
from genctl.config import TrainConfig, build_config, dump_yaml, resolved_beta
from genctl.datasets import EpisodeStore, Normalizer, episode_split, load_transitions
from genctl.errors import ConfigError, DataError, GenctlError
from genctl.fsutil import atomic_write_json, atomic_write_text
from genctl.metrics import MetricsLogger
from genctl.policies import EMA, IQLCritic, make_algorithm, make_generative_model
from genctl.progress import progress_bar
from genctl.run import Checkpoint, latest_checkpoint, load_module, save_checkpoint
from genctl.seeding import rng_state, seed_everything, set_rng_state

log = logging.getLogger("genctl.train")

STAGES = ("critic", "behaviour", "policy")


def stage_plan(cfg: TrainConfig) -> list[tuple[str, int]]:
    plan = [("critic", 0 if cfg.critic.from_run else cfg.critic.steps)]
    if cfg.policy.algo == "gmpg":
        plan.append(("behaviour", cfg.policy.behaviour_steps))
    plan.append(("policy", cfg.policy.steps))
    return [(s, n) for s, n in plan if n > 0]


@dataclass
class Data:
    """Normalised training transitions as device tensors, sampled with our own generator (exact resume).

    ``windows`` (observation history / action chunks, see ``chunking``) feed the behaviour and policy stages
    of a chunked run; the critic always samples single transitions. Both draw from the one generator."""

    tensors: dict[str, torch.Tensor]
    n: int
    generator: torch.Generator
    windows: WindowData | None = None

    def sample(self, batch_size: int, *, windows: bool = False) -> dict[str, torch.Tensor]:
        n = self.windows.n if windows and self.windows is not None else self.n
        idx = torch.randint(n, (batch_size,), generator=self.generator, device="cpu")
        device = next(iter(self.tensors.values())).device
        if device.type == "cuda":  # from page-locked memory the copy is queued, not waited for (no sync per step)
            idx = idx.pin_memory()
        idx = idx.to(device, non_blocking=True)
        if windows and self.windows is not None:
            return self.windows.gather(idx)
        return {k: v.index_select(0, idx) for k, v in self.tensors.items()}


def reward_scale(cfg: TrainConfig, store: EpisodeStore) -> float:
    """The factor rewards are multiplied by. 'auto' (10 / return span) makes the scaled data identical whatever
    unit the rewards were logged in, so the critic's lr and, with adv_norm=std, the policy's beta carry over."""
    mode = cfg.data.reward_scale
    if mode in ("return_range", "auto"):
        rets = store.episode_returns()
        span = float(rets.max() - rets.min()) if len(rets) > 1 else 0.0
        if span <= 0:
            if mode == "auto":  # one episode, or all alike (e.g. BC-only demos): nothing to rank, keep units
                return 1.0
            raise DataError(f"store {store.path}: reward_scale=return_range needs episodes with different returns")
        return (1000.0 if mode == "return_range" else 10.0) / span
    return float(mode)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, *, progress: bool = True, dist: DistInfo | None = None,
                 fresh: bool = True):
        # fresh=False: a resume, whose own checkpoint already holds the critic (critic.from_run is not re-read,
        # so a resumed run does not depend on the source run still being there)
        self.fresh = fresh
        self.dist = dist or DistInfo()
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress and self.dist.is_main
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.amp = bool(cfg.amp)  # None = off on every device (see TrainConfig.amp for the measurements)
        seed_everything(cfg.seed)
        if not cfg.data.store:
            raise ConfigError("data.store is empty: pass data.store=PATH/TO/STORE.zarr")
        self.store = EpisodeStore.open(cfg.data.store)
        if not self.store.has_reward and (cfg.policy.algo != "bc" or cfg.has_critic):  # BC-only demos (LeRobot)
            need = f"policy.algo={cfg.policy.algo}" if cfg.policy.algo != "bc" else "a critic (critic.steps > 0)"
            raise DataError(f"store {self.store.path} has no rewards (BC-only demos) and {need} needs them; "
                            "train behaviour cloning instead: policy.algo=bc critic.steps=0")
        self.critic_source: str | None = None
        self._build_data()
        self._build_models()
        if self.dist.enabled:
            broadcast_modules([self.policy, self.critic, self.behaviour])
            if self.ema is not None:
                self.ema.module.load_state_dict(self.policy.state_dict())
            self._hooks = sync_gradients(self.optimizers(), self.dist.world)
        self.stage_idx, self.stage_step, self.global_step = 0, 0, 0
        self.adv_stats: dict[str, float] | None = None

    # ---------------------------------------------------------------- setup
    def _build_data(self) -> None:
        cfg, store = self.cfg, self.store
        train_eps, val_eps = episode_split(store.n_episodes, cfg.data.val_frac, cfg.seed)
        self.val_episodes = [int(i) for i in val_eps]
        self.train_episodes = np.asarray(train_eps, np.int64)
        raw = load_transitions(store, episodes=train_eps)
        if len(raw["action"]) == 0:
            raise DataError(f"store {store.path}: no training transitions after the validation split")
        stats = store.attrs.get("stats") or {}
        self.obs_norm = (Normalizer.from_stats(stats["obs"], cfg.data.obs_norm) if "obs" in stats
                         else Normalizer.fit(raw["obs"], cfg.data.obs_norm))
        self.act_norm = (Normalizer.from_stats(stats["action"], cfg.data.action_norm) if "action" in stats
                         else Normalizer.fit(raw["action"], cfg.data.action_norm))
        self.reward_scale = reward_scale(cfg, store)
        arrays = {
            "obs": self.obs_norm.normalize(raw["obs"]),
            "next_obs": self.obs_norm.normalize(raw["next_obs"]),
            "action": self.act_norm.normalize(raw["action"]),
            "reward": raw["reward"] * self.reward_scale + cfg.data.reward_shift,
            "terminal": raw["terminal"],
        }
        for k, v in arrays.items():
            if not np.all(np.isfinite(v)):
                raise DataError(f"store {store.path}: field {k!r} has NaN/Inf after normalisation")
        tensors = {k: torch.as_tensor(np.ascontiguousarray(v, dtype=np.float32)).to(self.device)
                   for k, v in arrays.items()}
        gen = torch.Generator().manual_seed(cfg.seed + 1 + 7919 * self.dist.rank)  # one data stream per rank
        self.seq = SeqSpec.from_config(cfg)
        windows = (build_windows(store, train_eps, self.obs_norm, self.act_norm, self.seq, self.device)
                   if self.seq.chunked else None)
        self.data = Data(tensors, len(arrays["action"]), gen, windows)
        self.val_loss = ValidationLoss.maybe(store, self.val_episodes, self.obs_norm, self.act_norm, self.device,
                                             cfg.seed, self.seq.chunked)
        for what, bs in (("critic", cfg.critic.batch_size), ("policy", cfg.policy.batch_size)):
            if bs > self.data.n and (what == "policy" or cfg.critic.steps > 0):
                log.warning("%s.batch_size %d is larger than the %d training transitions of %s: every batch "
                            "repeats samples (lower it, or collect more data)", what, bs, self.data.n, store.path)
        self.obs_dim = arrays["obs"].shape[1]
        self.action_dim = arrays["action"].shape[1]

    def _build_models(self) -> None:
        cfg, m = self.cfg, self.cfg.model
        kw = dict(hidden=list(m.hidden), t_dim=m.t_dim, cond_hidden=m.cond_hidden, t_cond_hidden=m.t_cond_hidden)
        if m.kind == "vpsde":
            kw["vpsde_target"] = m.vpsde_target
        # chunked: x = horizon actions, cond = n_obs_steps observations (flattened); the critic stays single-step
        x_dim, cond_dim = self.seq.horizon * self.action_dim, self.seq.n_obs_steps * self.obs_dim
        self.policy = make_generative_model(m.kind, x_dim, cond_dim, **kw).to(self.device)
        self.critic = None
        if cfg.has_critic:
            c = cfg.critic
            self.critic = IQLCritic(self.obs_dim, self.action_dim, hidden=tuple(c.hidden), expectile=c.expectile,
                                    gamma=c.gamma, tau=c.tau, lr=c.lr, amp=c.amp).to(self.device)
            if c.from_run and self.fresh:
                self._load_critic(Path(c.from_run))
        self.behaviour = None
        if cfg.policy.algo == "gmpg":
            self.behaviour = make_generative_model(m.kind, x_dim, cond_dim, **kw).to(self.device)
        self.ema = EMA(self.policy, cfg.policy.ema_decay) if cfg.policy.ema_decay else None
        if cfg.compile:  # in place (Module.compile): parameter names, hence checkpoints, are unchanged
            for net in (self.policy.backbone, getattr(self.behaviour, "backbone", None)):
                if net is not None:
                    net.compile()
        p = cfg.policy
        self.algos: dict[str, Any] = {}
        if self.behaviour is not None:
            self.algos["behaviour"] = make_algorithm("bc", self.behaviour, lr=p.behaviour_lr, grad_clip=p.grad_clip,
                                                     amp=self.amp)
        hp: dict[str, Any] = dict(lr=p.lr, grad_clip=p.grad_clip, amp=self.amp)
        if p.algo == "gmpo":
            hp.update(beta=resolved_beta(p), clamp=p.clamp)
        elif p.algo == "gmpg":
            hp.update(beta=resolved_beta(p), sample_steps=p.sample_steps, solver=p.solver, exact_trace=p.exact_trace,
                      kl_batch=p.kl_batch)
        critic: Any = self.critic
        if critic is not None and self.seq.chunked:  # Q/V of the window's current obs and first action
            critic = ChunkCritic(critic, self.obs_dim, self.action_dim)
        self.algos["policy"] = make_algorithm(p.algo, self.policy, critic=critic, behaviour=self.behaviour, **hp)

    def _load_critic(self, src: Path) -> None:
        """critic.from_run: the other run's trained critic, after checking it was trained on the same inputs."""
        path = latest_checkpoint(src) if (src / "config.yaml").exists() else src
        if path is None or not (path / "meta.json").exists():
            raise ConfigError(f"critic.from_run={src}: no checkpoint there (expected a run folder with "
                              "checkpoints/ or a checkpoint folder)")
        ck = Checkpoint(path)
        m = ck.meta
        if not ck.has("critic"):
            raise ConfigError(f"critic.from_run={src}: checkpoint {path.name} has no critic (a BC run?)")
        if m.get("stage") == "critic" and not m.get("finished"):
            raise ConfigError(f"critic.from_run={src}: its critic stage is unfinished ({path.name}); resume it first")
        mine = {"store": str(Path(self.cfg.data.store).resolve()), "obs_dim": self.obs_dim,
                "action_dim": self.action_dim, "reward_scale": self.reward_scale,
                "reward_shift": self.cfg.data.reward_shift}
        for key, want in mine.items():
            got = m.get(key)
            same = math.isclose(got, want, rel_tol=1e-9) if isinstance(want, float) and got is not None else got == want
            if not same:
                raise ConfigError(f"critic.from_run={src}: trained with {key}={got!r}, this run has {want!r}")
        theirs = m["config"].get("critic", {})
        for key in ("hidden", "gamma", "expectile"):
            if theirs.get(key) != getattr(self.cfg.critic, key):
                raise ConfigError(f"critic.from_run={src}: trained with critic.{key}={theirs.get(key)!r}, this run "
                                  f"has {getattr(self.cfg.critic, key)!r} (set it to match)")
        load_module(self.critic, ck.group("critic"), f"checkpoint {path} (critic)")
        self.critic_source = str(path.resolve())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts: dict[str, torch.optim.Optimizer] = {}
        if self.critic is not None:
            opts.update({f"critic.{k}": v for k, v in self.critic.optimizers().items()})
        for stage, algo in self.algos.items():
            opts.update({f"{stage}.{k}": v for k, v in algo.optimizers().items()})
        return opts

    # ---------------------------------------------------------------- checkpoints
    def meta(self) -> dict[str, Any]:
        plan = stage_plan(self.cfg)
        return {
            "config": self.cfg.model_dump(mode="json"),
            "stage": plan[self.stage_idx][0] if self.stage_idx < len(plan) else "done",
            "stage_idx": self.stage_idx, "stage_step": self.stage_step,
            "finished": self.stage_idx >= len(plan),
            "model": self.policy.config(),
            "obs_dim": self.obs_dim, "action_dim": self.action_dim, **self.seq.to_meta(),
            "obs_norm": self.obs_norm.to_dict(), "action_norm": self.act_norm.to_dict(),
            "reward_scale": self.reward_scale, "reward_shift": self.cfg.data.reward_shift,
            "beta": resolved_beta(self.cfg.policy), "adv_stats": self.adv_stats, "critic_from": self.critic_source,
            "env": self.store.attrs.get("env"), "obs_keys": self.store.attrs.get("obs_keys"),
            "action_space": self.store.attrs.get("action_space"),
            "ref_min_score": self.store.attrs.get("ref_min_score"),
            "ref_max_score": self.store.attrs.get("ref_max_score"),
            "store": str(Path(self.cfg.data.store).resolve()), "val_episodes": self.val_episodes,
            "rng": rng_state(), "data_rng": self.data.generator.get_state().tolist(),
            "world_size": self.dist.world,
            "time": time.time(),
        }

    def save(self) -> Path | None:
        """Checkpoint (rank 0 writes; every rank must call it: per-rank data streams are gathered)."""
        ranks_rng = gather(self.data.generator.get_state().tolist(), self.dist)
        divergence = replica_divergence([self.policy, self.critic, self.behaviour], self.dist)
        if not self.dist.is_main:
            barrier(self.dist)
            return None
        groups = {"policy": self.policy.state_dict()}
        bad = [n for n, m in (("policy", self.policy), ("critic", self.critic), ("behaviour", self.behaviour))
               if m is not None and not all(bool(torch.isfinite(t).all()) for t in m.parameters())]
        if bad:  # never overwrite a good checkpoint with diverged weights
            raise GenctlError(f"step {self.global_step}: {', '.join(bad)} weights became NaN/Inf; training stopped. "
                              f"Last good checkpoint: {latest_checkpoint(self.run_dir) or 'none'}")
        if self.ema is not None:
            groups["ema"] = self.ema.module.state_dict()
        if self.critic is not None:
            groups["critic"] = self.critic.state_dict()
        if self.behaviour is not None:
            groups["behaviour"] = self.behaviour.state_dict()
        meta = self.meta()
        if self.dist.enabled:
            meta.update(data_rng_ranks=ranks_rng, replica_divergence=divergence)
        path = save_checkpoint(self.run_dir, self.global_step, groups, self.optimizers(), meta)
        barrier(self.dist)
        return path

    def restore(self, ck: Checkpoint) -> None:
        m = ck.meta
        if m["obs_dim"] != self.obs_dim or m["action_dim"] != self.action_dim:
            raise DataError(f"checkpoint {ck.path}: obs/action dims {m['obs_dim']}/{m['action_dim']} do not match "
                            f"the store {self.store.path} ({self.obs_dim}/{self.action_dim})")
        load_module(self.policy, ck.group("policy"), f"checkpoint {ck.path} (policy)")
        if self.ema is not None and ck.has("ema"):
            load_module(self.ema.module, ck.group("ema"), f"checkpoint {ck.path} (ema)")
        if self.critic is not None:
            load_module(self.critic, ck.group("critic"), f"checkpoint {ck.path} (critic)")
        if self.behaviour is not None:
            load_module(self.behaviour, ck.group("behaviour"), f"checkpoint {ck.path} (behaviour)")
        ck.load_optimizers(self.optimizers())
        self.stage_idx, self.stage_step, self.global_step = m["stage_idx"], m["stage_step"], m["step"]
        self.adv_stats = m.get("adv_stats")
        self.critic_source = m.get("critic_from")
        set_rng_state(m["rng"])
        rng = m["data_rng"]
        if self.dist.enabled:
            ranks = m.get("data_rng_ranks") or []
            if m.get("world_size") == self.dist.world and len(ranks) == self.dist.world:
                rng = ranks[self.dist.rank]
            else:  # different world size: a fresh, distinct stream per rank (exactness needs the same N)
                rng = torch.Generator().manual_seed(self.cfg.seed + 1 + 7919 * self.dist.rank + m["step"]).get_state()
        self.data.generator.set_state(torch.as_tensor(rng, dtype=torch.uint8))

    # ---------------------------------------------------------------- loop
    def _update(self, stage: str, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        # bf16 autocast (cfg.amp) lives inside the algorithms, which keep critic values and weights in fp32.
        # On a GPU the metrics stay on the device (no host sync per step); see _NonFinite.
        sync = self.device.type != "cuda"
        if stage == "critic":
            assert self.critic is not None
            self._critic_lr()
            return self.critic.update(batch, sync=sync)
        metrics = self.algos[stage].update(batch, sync=sync)
        if stage == "policy" and self.ema is not None:
            self.ema.update(self.policy)
        return metrics

    def _critic_lr(self) -> None:
        c = self.cfg.critic
        if c.lr_schedule == "constant":
            return
        frac = min(self.stage_step / max(c.steps, 1), 1.0)
        lr = c.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))  # cosine from lr to lr / 10
        for opt in self.critic.optimizers().values():
            for g in opt.param_groups:
                g["lr"] = lr

    def critic_diagnostics(self) -> dict[str, Any]:
        """Q on every training transition vs its Monte-Carlo return, and the advantage spread (critic.json)."""
        assert self.critic is not None
        t = self.data.tensors
        q, v = critic_values(self.critic, t["obs"], t["action"])
        g, valid = mc_targets(self.store, self.train_episodes, gamma=self.cfg.critic.gamma, scale=self.reward_scale,
                              shift=self.cfg.data.reward_shift, keep_last_untermed=self.store.has_next_obs())
        if len(g) != len(q):  # cannot align (should not happen): report the spread only
            g = valid = None
        return critic_report(q, v, g, valid)

    def _report_critic(self) -> None:
        """critic.json (Q vs Monte-Carlo returns, advantage spread) and the advantage scale it fixes."""
        rep = self.critic_diagnostics()
        if self.critic_source:
            rep["from_run"] = self.critic_source
        self.adv_stats = rep["advantage"]
        atomic_write_json(self.run_dir / "critic.json", rep)
        log.info(format_critic_report(rep))

    def _set_advantage_scale(self) -> None:
        algo = self.algos.get("policy")
        if self.critic is None or not hasattr(algo, "set_advantage_scale"):
            return
        if self.adv_stats is None:
            t = self.data.tensors
            q, v = critic_values(self.critic, t["obs"], t["action"])
            self.adv_stats = advantage_stats(q, v)
        if self.cfg.policy.adv_norm == "std":
            a = self.adv_stats
            algo.set_advantage_scale(a["mean"], max(a["std"], 1e-8 * max(abs(a["mean"]), 1.0)))

    def _enter_stage(self, stage: str) -> None:
        if stage == "policy":
            self._set_advantage_scale()
        if stage == "policy" and self.behaviour is not None and self.stage_step == 0:
            # GMPG: the policy starts as the pretrained behaviour model mu.
            self.policy.load_state_dict(self.behaviour.state_dict())
            if self.ema is not None:
                self.ema.module.load_state_dict(self.behaviour.state_dict())

    def run(self, *, stop_after: int | None = None, on_eval=None) -> bool:
        """Train until done (True) or until ``stop_after`` global steps in this call (False)."""
        plan = stage_plan(self.cfg)
        logger = MetricsLogger(self.run_dir) if self.dist.is_main else None
        done_here = 0
        if self.critic_source and self.dist.is_main and not (self.run_dir / "critic.json").exists():
            self._report_critic()
        try:
            while self.stage_idx < len(plan):
                stage, total = plan[self.stage_idx]
                bs = self.cfg.critic.batch_size if stage == "critic" else self.cfg.policy.batch_size
                bs = max(1, bs // self.dist.world)  # the configured batch is the global batch
                self._enter_stage(stage)
                bar = progress_bar(total, desc=f"{stage:9s}", enabled=self.progress, initial=self.stage_step)
                t0, n0 = time.perf_counter(), self.stage_step
                nonfinite = _NonFinite()
                while self.stage_step < total:
                    metrics = self._update(stage, self.data.sample(bs, windows=stage != "critic"))
                    self.stage_step += 1
                    self.global_step += 1
                    done_here += 1
                    nonfinite.add(metrics)
                    log_now = self.stage_step % self.cfg.log_every == 0 or self.stage_step == total
                    eval_now = (stage == "policy" and on_eval is not None and bool(self.cfg.eval.every)
                                and self.stage_step % self.cfg.eval.every == 0)
                    save_now = (self.global_step % self.cfg.ckpt_every == 0 or self.stage_step == total or eval_now
                                or (stop_after is not None and done_here >= stop_after))
                    if nonfinite.lazy and not (log_now or save_now):
                        bar.update(1)  # GPU: the finiteness check waits for the next log or checkpoint step
                        continue
                    bad = nonfinite.check()
                    if any_rank(bool(bad), self.dist):
                        bad = bad or ["a loss on another rank"]
                        last = latest_checkpoint(self.run_dir)
                        since = f" (checked every {self.cfg.log_every} steps on the GPU)" if nonfinite.lazy else ""
                        raise GenctlError(
                            f"{stage} stage, step {self.stage_step}{since}: {', '.join(bad)} became NaN/Inf; "
                            f"training stopped. Last good checkpoint: {last or 'none'} (resume with a lower lr or "
                            f"grad_clip)")
                    bar.update(1)
                    if logger and log_now:
                        metrics = {k: float(v) for k, v in metrics.items()}
                        if self.val_loss is not None and stage in ("behaviour", "policy"):
                            # the deployed weights (EMA when kept) on the held-out episodes
                            model = (self.ema.module if stage == "policy" and self.ema is not None
                                     else self.policy if stage == "policy" else self.behaviour)
                            metrics["val_loss"] = self.val_loss(model)
                        its = (self.stage_step - n0) / max(time.perf_counter() - t0, 1e-9)
                        logger.log(self.global_step, {**metrics, "it_per_s": its}, stage=stage)
                        bar.set_postfix({k: f"{v:.3g}" for k, v in list(metrics.items())[:3]}, refresh=False)
                    if eval_now:
                        self.save()
                        if logger:
                            logger.log(self.global_step, on_eval(self.run_dir), stage="eval")
                    finished_stage = self.stage_step == total
                    if finished_stage and stage == "critic" and self.dist.is_main:
                        self._report_critic()
                    if finished_stage:
                        self.stage_idx += 1
                        self.stage_step = 0
                    if self.global_step % self.cfg.ckpt_every == 0 or finished_stage:
                        self.save()
                    if stop_after is not None and done_here >= stop_after:
                        bar.close()
                        if not finished_stage:
                            self.save()
                        return self.stage_idx >= len(plan)
                    if finished_stage:
                        break
                bar.close()
            return True
        finally:
            if logger:
                logger.close()


class _NonFinite:
    """Which metrics went NaN/Inf since the last check. CPU metrics arrive as floats and are checked at once;
    GPU metrics arrive as device tensors and are OR-ed into device flags, read only by ``check`` (one host sync
    per log or checkpoint step instead of one per training step)."""

    def __init__(self) -> None:
        self.lazy = False
        self._bad: list[str] = []
        self._flags: dict[str, torch.Tensor] = {}

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            if isinstance(v, torch.Tensor):
                self.lazy = True
                flag = ~torch.isfinite(v)
                self._flags[k] = flag if k not in self._flags else self._flags[k] | flag
            elif not math.isfinite(v):
                self._bad.append(k)

    def check(self) -> list[str]:
        bad = self._bad + [k for k, f in self._flags.items() if bool(f)]
        self._bad, self._flags = [], {}
        return bad


def default_run_name(cfg: TrainConfig) -> str:
    store = Path(cfg.data.store).name.removesuffix(".zarr") or "run"
    return f"{store}-{cfg.policy.algo}-{cfg.model.kind}-s{cfg.seed}"


def check_run_dir(run_dir: Path, *, overwrite: bool = False) -> None:
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise GenctlError(f"run folder {run_dir} already exists: use --resume {run_dir} to continue it, "
                          "name=<other> for a new run, or --overwrite")


def prepare_run(cfg: TrainConfig, *, overwrite: bool = False) -> Path:
    name = cfg.name or default_run_name(cfg)
    run_dir = Path(cfg.out_dir) / name
    check_run_dir(run_dir, overwrite=overwrite)
    if run_dir.exists() and overwrite:
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    return run_dir


def train(cfg: TrainConfig, *, overwrite: bool = False, progress: bool = True, stop_after: int | None = None,
          on_eval=None) -> Path:
    """Start a new run folder and train. Returns the run folder. Under torchrun, rank 0 makes the folder."""
    info = init_distributed(cfg.device)
    run_dir = Path(cfg.out_dir) / (cfg.name or default_run_name(cfg))
    if info.is_main:
        check_run_dir(run_dir, overwrite=overwrite)
    # Opening the store and building the data/models validates every input before anything is written.
    trainer = Trainer(cfg, run_dir, progress=progress, dist=info)
    if info.is_main:
        prepare_run(cfg, overwrite=overwrite)
    barrier(info)
    trainer.run(stop_after=stop_after, on_eval=on_eval or periodic_eval(cfg))
    return run_dir


def resume(run_dir: str | Path, *, progress: bool = True, stop_after: int | None = None, on_eval=None) -> Path:
    """Continue a run exactly where its last checkpoint left it (config re-read from the run folder)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.exists():
        raise GenctlError(f"{run_dir} is not a run folder (no config.yaml)")
    cfg = build_config(TrainConfig, file=cfg_path)
    ck_path = latest_checkpoint(run_dir)
    trainer = Trainer(cfg, run_dir, progress=progress, dist=init_distributed(cfg.device), fresh=ck_path is None)
    if ck_path is not None:
        trainer.restore(Checkpoint(ck_path))
        log.info("resuming %s from %s", run_dir, ck_path.name)
    trainer.run(stop_after=stop_after, on_eval=on_eval or periodic_eval(cfg))
    return run_dir
