"""The trainer's checkpoints: what a checkpoint holds (weights, optimisers, RNG streams, stage position, the
normalisers and everything ``genctl eval`` needs), writing it, restoring a resume from it, and reusing another
run's critic (``critic.from_run``). A mixin of ``genctl.apps.train.Trainer``."""

from __future__ import annotations

import math
import numbers
import time
from pathlib import Path
from typing import Any

import torch

from genctl.algos import stage_plan
from genctl.apps.distributed import barrier, gather, replica_divergence
from genctl.config import CriticConfig
from genctl.errors import ConfigError, DataError, GenctlError
from genctl.run import Checkpoint, latest_checkpoint, load_module, save_checkpoint
from genctl.seeding import rng_state, set_rng_state


class CheckpointMixin:
    """Needs the trainer's cfg, run_dir, dist, store, data (the batcher), policy, ema, critic, models (the
    algorithm's own networks), optimizers(), seq, normalisers and stage counters."""

    cfg: Any
    run_dir: Path

    def plan(self) -> list[tuple[str, int]]:
        return stage_plan(self.cfg.policy, 0 if self.cfg.critic.from_run else self.cfg.critic.steps)

    def networks(self) -> dict[str, torch.nn.Module]:
        """Every trained network by checkpoint group name (policy, critic, then the algorithm's own)."""
        nets = {"policy": self.policy, "critic": self.critic, **self.models}
        return {k: v for k, v in nets.items() if v is not None}

    def meta(self) -> dict[str, Any]:
        plan = self.plan()
        return {
            "config": self.cfg.model_dump(mode="json"),
            "stage": plan[self.stage_idx][0] if self.stage_idx < len(plan) else "done",
            "stage_idx": self.stage_idx, "stage_step": self.stage_step,
            "finished": self.stage_idx >= len(plan),
            "model": self.policy.config(),
            "obs_dim": self.obs_dim, "action_dim": self.action_dim, **self.seq.to_meta(),
            "obs_norm": self.obs_norm.to_dict(), "action_norm": self.act_norm.to_dict(),
            "reward_scale": self.reward_scale, "reward_shift": self.cfg.data.reward_shift,
            "beta": self.cfg.policy.resolved_beta(), "adv_stats": self.adv_stats, "critic_from": self.critic_source,
            "behaviour_from": self.behaviour_source,
            "env": self.store.attrs.get("env"), "obs_keys": self.store.attrs.get("obs_keys"),
            "obs_spec": None if self.obs_spec is None else self.obs_spec.to_dict(),
            "critic_encoder": self.encoder_config(1), "images": (self.store.attrs.get("source") or {}).get("images"),
            "action_space": self.store.attrs.get("action_space"),
            "ref_min_score": self.store.attrs.get("ref_min_score"),
            "ref_max_score": self.store.attrs.get("ref_max_score"),
            "store": str(Path(self.cfg.data.store).resolve()), "val_episodes": self.val_episodes,
            "rng": rng_state(), **self._data_meta(),
            "world_size": self.dist.world,
            "time": time.time(),
        }

    def _data_state(self) -> Any:
        """This rank's data stream: the generator state (in-memory batcher), or the whole schedule state (the
        out-of-core loader also has its stream position)."""
        state = self.data.state_dict()
        return state["generator"] if len(state) == 1 else state

    def _data_meta(self) -> dict[str, Any]:
        state = self.data.state_dict()
        extra = {k: v for k, v in state.items() if k != "generator"}
        return {"data_rng": state["generator"], **({"data_state": extra} if extra else {})}

    def _load_data_state(self, state: Any) -> None:
        self.data.load_state_dict(state if isinstance(state, dict) else {"generator": state})

    def save(self) -> Path | None:
        """Checkpoint (rank 0 writes; every rank must call it: per-rank data streams are gathered)."""
        ranks_rng = gather(self._data_state(), self.dist)
        nets = self.networks()
        divergence = replica_divergence(list(nets.values()), self.dist)
        if not self.dist.is_main:
            barrier(self.dist)
            return None
        bad = [n for n, m in nets.items() if not all(bool(torch.isfinite(t).all()) for t in m.parameters())]
        if bad:  # never overwrite a good checkpoint with diverged weights
            raise GenctlError(f"step {self.global_step}: {', '.join(bad)} weights became NaN/Inf; training stopped. "
                              f"Last good checkpoint: {latest_checkpoint(self.run_dir) or 'none'}")
        groups = {"policy": self.policy.state_dict()}
        if self.ema is not None:
            groups["ema"] = self.ema.module.state_dict()
        groups.update({n: m.state_dict() for n, m in nets.items() if n != "policy"})
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
        for name, net in self.networks().items():
            load_module(net, ck.group(name), f"checkpoint {ck.path} ({name})")
        if self.ema is not None and ck.has("ema"):
            load_module(self.ema.module, ck.group("ema"), f"checkpoint {ck.path} (ema)")
        ck.load_optimizers(self.optimizers())
        self.stage_idx, self.stage_step, self.global_step = m["stage_idx"], m["stage_step"], m["step"]
        self.adv_stats = m.get("adv_stats")
        self.critic_source = m.get("critic_from")
        self.behaviour_source = m.get("behaviour_from")
        set_rng_state(m["rng"])
        if not self.dist.enabled:
            self.data.load_state_dict({"generator": m["data_rng"], **(m.get("data_state") or {})})
            return
        ranks = m.get("data_rng_ranks") or []
        if m.get("world_size") == self.dist.world and len(ranks) == self.dist.world:
            self._load_data_state(ranks[self.dist.rank])
        else:  # different world size: a fresh, distinct stream per rank (exactness needs the same N)
            self.data.restart(offset=m["step"])

    def _data_identity(self) -> dict[str, Any]:
        """What a reused run (critic.from_run, policy.behaviour_from_run) must share with this one: the store and
        its observation/action dims, as its checkpoint meta records them."""
        return {"store": str(Path(self.cfg.data.store).resolve()), "obs_dim": self.obs_dim,
                "action_dim": self.action_dim}

    @staticmethod
    def _source_checkpoint(src: Path, field: str) -> Checkpoint:
        """The checkpoint another run's weights are reused from (``field`` names the config key in errors)."""
        path = latest_checkpoint(src) if (src / "config.yaml").exists() else src
        if path is None or not (path / "meta.json").exists():
            raise ConfigError(f"{field}={src}: no checkpoint there (expected a run folder with "
                              "checkpoints/ or a checkpoint folder)")
        return Checkpoint(path)

    def load_behaviour(self, src: str | Path) -> None:
        """GMPG's policy.behaviour_from_run: mu := a finished BC run's deployed weights (EMA when it kept one),
        after checking that run saw the same data, through the same normalisation, with the same network."""
        field = "policy.behaviour_from_run"
        ck = self._source_checkpoint(Path(src), field)
        m = ck.meta
        algo = (m["config"].get("policy") or {}).get("algo")
        if algo != "bc":
            raise ConfigError(f"{field}={src}: a {algo} run; mu is the behaviour policy, so it must be a bc run")
        if not m.get("finished"):
            raise ConfigError(f"{field}={src}: its training is unfinished ({ck.path.name}); resume it first")
        _require_same(field, src, m, {**self._data_identity(), "model": self.policy.config(), **self.seq.to_meta(),
                                      "obs_norm": self.obs_norm.to_dict(), "action_norm": self.act_norm.to_dict()})
        group = "ema" if ck.has("ema") else "policy"
        load_module(self.models["behaviour"], ck.group(group), f"checkpoint {ck.path} ({group})")
        self.behaviour_source = str(ck.path.resolve())

    def _load_critic(self, src: Path) -> None:
        """critic.from_run: the other run's trained critic, after checking it was trained on the same inputs."""
        ck = self._source_checkpoint(src, "critic.from_run")
        path, m = ck.path, ck.meta
        if not ck.has("critic"):
            raise ConfigError(f"critic.from_run={src}: checkpoint {path.name} has no critic (a BC run?)")
        if m.get("stage") == "critic" and not m.get("finished"):
            raise ConfigError(f"critic.from_run={src}: its critic stage is unfinished ({path.name}); resume it first")
        _require_same("critic.from_run", src, m, {**self._data_identity(), "reward_scale": self.reward_scale,
                                                  "reward_shift": self.cfg.data.reward_shift})
        theirs = m["config"].get("critic", {})
        for key in ("hidden", "gamma", "expectile", "ensemble"):
            got = theirs.get(key, CriticConfig.model_fields[key].get_default(call_default_factory=True))  # newer: default
            if got != getattr(self.cfg.critic, key):
                raise ConfigError(f"critic.from_run={src}: trained with critic.{key}={got!r}, this run "
                                  f"has {getattr(self.cfg.critic, key)!r} (set it to match)")
        load_module(self.critic, ck.group("critic"), f"checkpoint {path} (critic)")
        self.critic_source = str(path.resolve())


def _require_same(field: str, src: str | Path, meta: dict[str, Any], mine: dict[str, Any]) -> None:
    """One ConfigError naming the first of ``mine``'s keys on which the source checkpoint's meta differs."""
    for key, want in mine.items():
        if not _same(meta.get(key), want):
            raise ConfigError(f"{field}={src}: trained with {key}={meta.get(key)!r}, this run has {want!r}")


def _same(got: Any, want: Any) -> bool:
    """Equal, with floats (also inside lists and dicts, e.g. normaliser statistics read back from JSON) compared
    to a relative 1e-9."""
    if _is_real(want) or _is_real(got):
        return _is_real(got) and _is_real(want) and math.isclose(float(got), float(want), rel_tol=1e-9)
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    if isinstance(want, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(want)
                and all(_same(g, w) for g, w in zip(got, want, strict=True)))
    return bool(got == want)


def _is_real(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)
