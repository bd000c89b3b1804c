"""Training orchestration: critic -> the algorithm's stages (genctl.algos), each resumable from its last checkpoint.

The algorithms in ``genctl.policies`` only do ``update(batch)``, their specs in ``genctl.algos`` say which stages
they need; this module owns the loop, data, normaliser, EMA, metrics, progress (checkpoints: ``train_checkpoint``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genctl.algos import BuildContext, spec_for
from genctl.apps.critic_report import (
    advantage_stats,
    critic_report,
    critic_values,
    format_critic_report,
    mc_targets,
    pearson,
)
from genctl.apps.distributed import (
    DistInfo,
    any_rank,
    barrier,
    broadcast_modules,
    init_distributed,
    resolve_device,
    sync_gradients,
)
from genctl.apps.gae import critic_v, gae_advantages, training_row_lengths
from genctl.apps.lr_schedule import cosine_factor, set_lr
from genctl.apps.nstep import nstep_columns
from genctl.apps.train_checkpoint import CheckpointMixin
from genctl.apps.train_monitor import NonFinite, ValidationLoss, periodic_eval
from genctl.config import TrainConfig, dump_yaml, load_saved_config
from genctl.datasets import (
    EpisodeStore,
    Normalizer,
    SeqSpec,
    TransitionBatcher,
    best_episodes,
    build_windows,
    episode_split,
    load_transitions,
    return_weights,
)
from genctl.datasets.camera_rows import camera_transitions, low_normalizer
from genctl.datasets.obs_spec import ObsSpec
from genctl.datasets.out_of_core import OutOfCoreBatcher
from genctl.errors import ConfigError, DataError, GenctlError
from genctl.fsutil import atomic_write_json, atomic_write_text
from genctl.metrics import MetricsLogger
from genctl.policies import EMA, ChunkCritic, IQLCritic, make_generative_model
from genctl.progress import progress_bar
from genctl.run import Checkpoint, latest_checkpoint
from genctl.seeding import seed_everything

log = logging.getLogger("genctl.train")


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


class Trainer(CheckpointMixin):
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
        self.spec = spec_for(cfg.policy)
        seed_everything(cfg.seed)
        if not cfg.data.store:
            raise ConfigError("data.store is empty: pass data.store=PATH/TO/STORE.zarr")
        self.store = EpisodeStore.open(cfg.data.store)
        if not self.store.has_reward and (self.spec.needs_critic or cfg.has_critic):  # BC-only demos (LeRobot)
            need = f"policy.algo={cfg.policy.algo}" if self.spec.needs_critic else "a critic (critic.steps > 0)"
            raise DataError(f"store {self.store.path} has no rewards (BC-only demos) and {need} needs them; "
                            "train behaviour cloning instead: policy.algo=bc critic.steps=0")
        self.critic_source: str | None = None
        self.behaviour_source: str | None = None  # GMPG mu reused from a BC run (policy.behaviour_from_run)
        self._build_data()
        self._build_models()
        if self.dist.enabled:
            broadcast_modules(list(self.networks().values()))
            if self.ema is not None:
                self.ema.module.load_state_dict(self.policy.state_dict())
            self._hooks = sync_gradients(self.optimizers(), self.dist.world)
        self.stage_idx, self.stage_step, self.global_step = 0, 0, 0
        self.adv_stats: dict[str, float] | None = None
        self.gae_stats: dict[str, float] = {}

    # ---------------------------------------------------------------- setup
    def _build_data(self) -> None:
        cfg, store = self.cfg, self.store
        train_eps, val_eps = episode_split(store.n_episodes, cfg.data.val_frac, cfg.seed)
        if cfg.data.top_frac < 1.0:
            train_eps = self._best_training_episodes(train_eps)
        self.val_episodes = [int(i) for i in val_eps]
        self.train_episodes = np.asarray(train_eps, np.int64)
        self.obs_spec = ObsSpec.from_store(store, cfg.data.obs_keys) if cfg.data.obs_keys is not None else None
        store.select_obs(self.obs_spec)  # flat_obs (and so every array below) = what the policy observes
        ooc = self.out_of_core = cfg.data.cache_gb is not None  # pixels stay in the store; raw obs = low-dim part
        raw = (camera_transitions(store, self.obs_spec, train_eps) if ooc
               else load_transitions(store, episodes=train_eps))
        if len(raw["action"]) == 0:
            raise DataError(f"store {store.path}: no training transitions after the validation split")
        stats = store.attrs.get("stats") or {}
        self.obs_norm = self._obs_normalizer(stats, raw["obs"])
        self.act_norm = (Normalizer.from_stats(stats["action"], cfg.data.action_norm) if "action" in stats
                         else Normalizer.fit(raw["action"], cfg.data.action_norm))
        self.reward_scale = reward_scale(cfg, store)
        obs_norm = low_normalizer(self.obs_norm, self.obs_spec) if ooc else self.obs_norm
        with np.errstate(invalid="ignore", over="ignore"):  # bad values get the clear error just below
            arrays = {
                "obs": obs_norm.normalize(raw["obs"]),
                "next_obs": obs_norm.normalize(raw["next_obs"]),
                "action": self.act_norm.normalize(raw["action"]),
                "reward": raw["reward"] * self.reward_scale + cfg.data.reward_shift,
                "terminal": raw["terminal"],
            }
        if cfg.critic_nstep > 1 and cfg.critic.steps > 0 and not cfg.critic.from_run:  # apps/nstep.py
            arrays.update(nstep_columns(arrays["reward"], arrays["next_obs"], arrays["terminal"],
                                        training_row_lengths(store, train_eps), cfg.critic.gamma, cfg.critic_nstep))
        for k, v in arrays.items():
            if not np.all(np.isfinite(v)):
                raise DataError(f"store {store.path}: field {k!r} has NaN/Inf after normalisation")
        self.seq = SeqSpec.from_config(cfg)
        windows = (build_windows(store, train_eps, self.obs_norm, self.act_norm, self.seq, self.device)
                   if self.seq.chunked else None)
        # one data stream per rank; windows (behaviour and policy stages of a chunked run) draw from it too
        row_weights = self._return_weights(train_eps, len(arrays["action"]))
        self.data = (OutOfCoreBatcher.for_run(cfg, arrays, raw, self.obs_spec, store, self.dist, self.device)
                     if ooc else  # (config validation keeps chunked runs, windows, off the out-of-core path)
                     TransitionBatcher(arrays, cfg.policy.batch_size, device=self.device, seed=cfg.seed + 1,
                                       rank=self.dist.rank, world_size=self.dist.world, windows=windows,
                                       row_weights=row_weights))
        self.val_loss = ValidationLoss.maybe(store, self.val_episodes, self.obs_norm, self.act_norm, self.device,
                                             cfg.seed, self.seq.chunked, self.obs_spec if ooc else None)
        for what, bs in (("critic", cfg.critic.batch_size), ("policy", cfg.policy.batch_size)):
            if bs > self.data.n and (what == "policy" or cfg.critic.steps > 0):
                log.warning("%s.batch_size %d is larger than the %d training transitions of %s: every batch "
                            "repeats samples (lower it, or collect more data)", what, bs, self.data.n, store.path)
        self.obs_dim = self.obs_spec.dim if ooc else arrays["obs"].shape[1]
        self.action_dim = arrays["action"].shape[1]

    def _best_training_episodes(self, train_eps: np.ndarray) -> np.ndarray:
        """data.top_frac: the training episodes with the highest returns (filtered BC)."""
        frac = self.cfg.data.top_frac
        rets = self._episode_returns(f"data.top_frac={frac} ranks episodes by return; use data.top_frac=1")
        kept = best_episodes(rets, train_eps, frac)
        log.info("data.top_frac=%g: training on %d of %d episodes (returns %.4g to %.4g; all: %.4g to %.4g)", frac,
                 len(kept), len(train_eps), rets[kept].min(), rets[kept].max(), rets[train_eps].min(),
                 rets[train_eps].max())
        return kept

    def _return_weights(self, train_eps: np.ndarray, n_rows: int) -> np.ndarray | None:
        """data.return_weight: one sampling weight per training row, its episode's return weight."""
        temp = self.cfg.data.return_weight
        if temp is None:
            return None
        rets = self._episode_returns(f"data.return_weight={temp} weights episodes by return; unset data.return_weight")
        w = np.repeat(return_weights(rets, train_eps, temp), training_row_lengths(self.store, train_eps))
        assert len(w) == n_rows, (len(w), n_rows)
        ess = w.sum() ** 2 / (w ** 2).sum()  # effective sample size: how many uniform rows the draws are worth
        log.info("data.return_weight=%g: batches drawn from %d rows with an effective size of %d (%.0f %%)", temp,
                 n_rows, ess, 100 * ess / n_rows)
        return w

    def _episode_returns(self, needs: str) -> np.ndarray:
        """Every episode's return, for the options that rank or weight episodes by it (``needs``: which option and
        what to do instead, for the error on a store without rewards)."""
        if not self.store.has_reward:
            raise DataError(f"store {self.store.path} has no rewards: {needs}")
        return self.store.episode_returns()

    def _obs_normalizer(self, stats: dict[str, Any], obs: np.ndarray) -> Normalizer:
        mode, spec = self.cfg.data.obs_norm, self.obs_spec
        if spec is None or spec.is_default:
            return Normalizer.from_stats(stats["obs"], mode) if "obs" in stats else Normalizer.fit(obs, mode)
        picked = spec.stats_from_store(stats)  # selected keys; pixels pass unchanged (the encoder scales them)
        if picked is None:
            fit = Normalizer.fit(obs[:, :spec.low_dim], mode).stats
            picked = spec.pixel_normalizer_stats(fit)
        return Normalizer(mode, picked)

    def encoder_config(self, n_obs_steps: int) -> dict[str, Any] | None:
        """FlatObsEncoder arguments when the policy sees cameras (model.vision), else None."""
        if self.obs_spec is None or not self.obs_spec.has_images:
            return None
        v = self.cfg.model.vision
        return {"obs_spec": self.obs_spec.to_dict(), "n_obs_steps": n_obs_steps, "kind": v.encoder,
                "share": v.share, "out_dim": v.features, "crop": v.crop, "num_kp": v.keypoints}

    def _build_models(self) -> None:
        cfg, m = self.cfg, self.cfg.model
        kw = dict(hidden=list(m.hidden), t_dim=m.t_dim, cond_hidden=m.cond_hidden, t_cond_hidden=m.t_cond_hidden)
        if m.kind == "vpsde":
            kw["vpsde_target"] = m.vpsde_target
        if self.obs_spec is not None and self.obs_spec.has_images:
            kw["obs_encoder"] = self.encoder_config(self.seq.n_obs_steps)
        # chunked: x = horizon actions, cond = n_obs_steps observations (flattened); the critic stays single-step
        x_dim, cond_dim = self.seq.horizon * self.action_dim, self.seq.n_obs_steps * self.obs_dim

        def new_model() -> torch.nn.Module:
            return make_generative_model(m.kind, x_dim, cond_dim, **kw).to(self.device)

        self.policy = new_model()
        self.critic = None
        if cfg.has_critic:
            c = cfg.critic
            self.critic = IQLCritic(self.obs_dim, self.action_dim, hidden=tuple(c.hidden), expectile=c.expectile,
                                    gamma=c.gamma, tau=c.tau, lr=c.lr, amp=c.amp, ensemble=c.ensemble,
                                    obs_encoder=self.encoder_config(1)).to(self.device)
            if c.from_run and self.fresh:
                self._load_critic(Path(c.from_run))
        critic: Any = self.critic
        if critic is not None and self.seq.chunked:  # Q/V of the window's current obs and first action
            critic = ChunkCritic(critic, self.obs_dim, self.action_dim)
        built = self.spec.build(cfg.policy, BuildContext(self.policy, critic, new_model, self.amp))
        self.updates: dict[str, Any] = built.updates
        self.models: dict[str, torch.nn.Module] = built.models
        self.ema = EMA(self.policy, cfg.policy.ema_decay) if cfg.policy.ema_decay else None
        if cfg.compile:  # in place (Module.compile): parameter names, hence checkpoints, are unchanged
            for net in (self.policy, *self.models.values()):
                if getattr(net, "backbone", None) is not None:
                    net.backbone.compile()

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts: dict[str, torch.optim.Optimizer] = {}
        if self.critic is not None:
            opts.update({f"critic.{k}": v for k, v in self.critic.optimizers().items()})
        for stage, update in self.updates.items():
            opts.update({f"{stage}.{k}": v for k, v in update.optimizers().items()})
        return opts

    # ---------------------------------------------------------------- loop
    def _update(self, stage: str, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        # bf16 autocast (cfg.amp) lives inside the algorithms, which keep critic values and weights in fp32.
        # On a GPU the metrics stay on the device (no host sync per step); see NonFinite.
        sync = self.device.type != "cuda"
        if stage == "critic":
            assert self.critic is not None
            return self.critic.update(batch, sync=sync)
        metrics = self.updates[stage].update(batch, sync=sync)
        if stage == "policy" and self.ema is not None:
            self.ema.update(self.policy)
        return metrics

    def _stage_lr(self, stage: str, total: int) -> None:
        # critic: cosine to lr/10 (Q settles); policy stages with lr_schedule=cosine: to 0, as IQL's actor
        if stage == "critic":
            if self.critic is not None and self.cfg.critic.lr_schedule == "cosine":
                lr = self.cfg.critic.lr * cosine_factor(self.stage_step, total, 0.1)
                set_lr(self.critic.optimizers().values(), lr)
        elif self.cfg.policy.lr_schedule == "cosine":
            update = self.updates[stage]
            set_lr(update.optimizers().values(), update.lr * cosine_factor(self.stage_step, total, 0.0))

    def critic_diagnostics(self) -> dict[str, Any]:
        """Q on every training transition vs its Monte-Carlo return, and the advantage spread (critic.json)."""
        assert self.critic is not None
        q, v, members = self._critic_values()
        g, valid = self._mc_returns()
        if len(g) != len(q):  # cannot align (should not happen): report the spread only
            g = valid = None
        rep = critic_report(q, v, g, valid, members)
        held = self._heldout_critic_report()
        if held is not None:
            rep["heldout"] = held
        return rep

    def _heldout_critic_report(self) -> dict[str, Any] | None:
        """The same correlations on the validation episodes, which the critic never trained on: a TD target that
        contains the logged rewards (critic.nstep > 1) would flatter the training-set numbers."""
        if self.out_of_core or not self.val_episodes:
            return None
        eps = np.asarray(self.val_episodes, np.int64)
        raw = load_transitions(self.store, episodes=eps)
        if len(raw["action"]) < 3:
            return None
        to = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=self.device)  # noqa: E731
        q, v, _ = critic_values(self.critic, to(self.obs_norm.normalize(raw["obs"])),
                                to(self.act_norm.normalize(raw["action"])))
        g, valid = self._mc_returns(eps)
        if len(g) != len(q) or valid.sum() < 3:
            return None
        rep = critic_report(q, v, g, valid)
        return {k: rep[k] for k in ("n_mc", "q_mc_pearson", "q_mc_spearman", "adv_mc_pearson")}

    def _mc_returns(self, episodes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Discounted Monte-Carlo returns of the training rows (or of ``episodes``' rows; scaled rewards) and which
        rows they are exact for."""
        return mc_targets(self.store, self.train_episodes if episodes is None else episodes, gamma=self.cfg.critic.gamma, scale=self.reward_scale,
                          shift=self.cfg.data.reward_shift, keep_last_untermed=self.store.has_next_obs())

    def _critic_values(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:  # out of core: small batches
        return critic_values(self.critic, self.data.column("obs"), self.data.column("action"),
                             batch=1024 if self.out_of_core else 16384)

    def _report_critic(self) -> None:
        """critic.json (Q vs Monte-Carlo returns, advantage spread) and the advantage scale it fixes."""
        rep = self.critic_diagnostics()
        if self.critic_source:
            rep["from_run"] = self.critic_source
            src = Path(self.critic_source)
            for p in (src / "critic.json", src.parent.parent / "critic.json"):  # a run or a checkpoint folder
                if p.exists() and "nstep" in (saved := json.loads(p.read_text())):
                    rep["nstep"] = saved["nstep"]
                    break
        else:
            rep["nstep"] = self.cfg.critic_nstep
        self.adv_stats = rep["advantage"]
        atomic_write_json(self.run_dir / "critic.json", rep)
        log.info(format_critic_report(rep))

    def advantage_stats(self) -> dict[str, float]:
        """Mean and spread of Q - V over the training transitions under the frozen critic (measured once)."""
        if self.adv_stats is None:
            assert self.critic is not None
            q, v, _ = self._critic_values()
            self.adv_stats = advantage_stats(q, v)
        return self.adv_stats

    def gae_advantage(self, lam: float) -> dict[str, float]:
        """GMPO with policy.advantage=gae: the GAE(lam) advantage of every training transition under the frozen
        critic's V becomes the batches' ``adv`` column (computed once per process: deterministic, so a resume
        recomputes the same values); returns its spread, which scales it like Q - V's. critic.json gets a ``gae``
        section (spread, and corr with the Monte-Carlo advantage)."""
        assert self.critic is not None
        if "adv" not in self.data.keys:
            d = self.data
            v, v_next = critic_v(self.critic, d.column("obs")), critic_v(self.critic, d.column("next_obs"))
            adv = gae_advantages(v, v_next, d.column("reward").cpu().numpy(), d.column("terminal").cpu().numpy(),
                                 training_row_lengths(self.store, self.train_episodes),
                                 self.cfg.critic.gamma, lam)
            d.add_column("adv", adv)
            stats = advantage_stats(adv, np.zeros_like(adv))
            self.gae_stats = {"lambda": float(lam), **stats}
            g, valid = self._mc_returns()
            if len(g) == len(adv) and valid.sum() >= 3:
                self.gae_stats["adv_mc_pearson"] = pearson(adv[valid], (g - v)[valid])
            path = self.run_dir / "critic.json"
            if self.dist.is_main and path.exists():
                atomic_write_json(path, {**json.loads(path.read_text()), "gae": self.gae_stats})
            log.info("GMPO advantage: GAE(lambda %g) over V, std %.3g, corr with the MC advantage %.3f", lam,
                     stats["std"], self.gae_stats.get("adv_mc_pearson", float("nan")))
        return self.gae_stats

    def run(self, *, stop_after: int | None = None, on_eval=None) -> bool:
        """Train until done (True) or until ``stop_after`` global steps in this call (False)."""
        plan = self.plan()
        logger = MetricsLogger(self.run_dir) if self.dist.is_main else None
        done_here = 0
        if self.critic_source and self.dist.is_main and not (self.run_dir / "critic.json").exists():
            self._report_critic()
        try:
            while self.stage_idx < len(plan):
                stage, total = plan[self.stage_idx]
                bs = self.cfg.critic.batch_size if stage == "critic" else self.cfg.policy.batch_size
                bs = max(1, bs // self.dist.world)  # the configured batch is the global batch
                self.spec.enter_stage(stage, self.cfg.policy, self)
                bar = progress_bar(total, desc=f"{stage:9s}", enabled=self.progress, initial=self.stage_step)
                t0, n0 = time.perf_counter(), self.stage_step
                nonfinite = NonFinite()
                while self.stage_step < total:
                    self._stage_lr(stage, total)
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
                        if self.val_loss is not None and stage != "critic":
                            # the deployed weights (EMA when kept) on the held-out episodes
                            model = (self.ema.module if stage == "policy" and self.ema is not None
                                     else self.updates[stage].model)
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
    cfg = cfg.with_resolved_defaults()
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
    cfg = load_saved_config(cfg_path)
    ck_path = latest_checkpoint(run_dir)
    trainer = Trainer(cfg, run_dir, progress=progress, dist=init_distributed(cfg.device), fresh=ck_path is None)
    if ck_path is not None:
        trainer.restore(Checkpoint(ck_path))
        log.info("resuming %s from %s", run_dir, ck_path.name)
    trainer.run(stop_after=stop_after, on_eval=on_eval or periodic_eval(cfg))
    return run_dir
