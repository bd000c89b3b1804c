"""Typed configuration. One pydantic model per concern; a whole run is a ``TrainConfig`` that validates itself
once, is written into every run folder (``config.yaml``) and into every checkpoint's metadata.

Load order: defaults <- YAML file (``-c FILE``) <- ``key=value`` overrides (dotted paths, YAML-typed values).
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from genctl.algos import DEFAULT_ALGO, PolicyConfig, migrate_policy_section, spec_for
from genctl.algos.base import AdvantagePolicy
from genctl.algos.base import StrictModel as _Strict
from genctl.errors import ConfigError


class DataConfig(_Strict):
    store: str = Field("", description="path of the zarr episode store to train from")
    val_frac: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of episodes held out for validation")
    top_frac: float = Field(
        1.0, gt=0.0, le=1.0, description="train on this fraction of the training episodes, those with the highest "
        "returns (validation episodes unchanged); 0.1 with policy.algo=bc is the '10 % BC' baseline, which uses "
        "the better episodes without a critic. 1 = every episode. Needs rewards; a critic trains on the same "
        "episodes")
    return_weight: float | None = Field(
        None, gt=0.0, description="temperature of return-weighted sampling (trajectory weighting, Hong et al. 2023): "
        "each training transition is drawn with probability proportional to exp((G - G_max) / (T (G_max - G_min))), "
        "G its episode's return, for the critic and the policy alike; 0.1: an episode 10 % of the return range "
        "below the best is drawn e^-1 as often. A soft top_frac that keeps every episode. None = uniform. Needs "
        "rewards and single-step, in-memory data")
    obs_norm: Literal["gaussian", "minmax", "identity"] = "gaussian"
    action_norm: Literal["gaussian", "minmax", "identity"] = Field(
        "identity", description="identity keeps actions as logged (D4RL/gymnasium actions are already in [-1, 1])")
    reward_scale: float | Literal["auto", "return_range"] = Field(
        "auto", description="multiply rewards; 'auto' = 10/(max_return - min_return): Q of order 1-10 whatever the "
        "dataset's reward units (so one critic lr fits all); 'return_range' = 1000/(max_return - min_return) as "
        "IQL does for locomotion; a number = that factor")
    reward_shift: float = Field(0.0, description="added after scaling (IQL uses -1 for AntMaze)")
    obs_keys: list[str] | None = Field(
        None, description="store keys the policy observes, e.g. [obs/observation, image/top]: low-dim keys are "
        "concatenated and normalised, image/<cam> keys go through the vision encoder (model.vision); a slice of a "
        "low-dim key keeps part of it, e.g. obs/observation[0:3,9:11]; None = every low-dim observation key, no "
        "camera")
    # Observation history and action chunking (Diffusion-Policy style). The defaults (1, 1, None) are the
    # single-step policy: cond = one observation, x = one action, one policy call per control step.
    n_obs_steps: int = Field(
        1, ge=1, description="observations the policy is conditioned on (the current one and n-1 before it; "
        "padded by repeating the first frame at episode start)")
    horizon: int = Field(
        1, ge=1, description="actions predicted per policy call, from the current step on (padded by repeating "
        "the last action at episode end)")
    n_action_steps: int | None = Field(
        None, ge=1, description="actions executed per policy call in closed loop (receding horizon); "
        "None = horizon; must be <= horizon")
    cache_gb: float | None = Field(
        None, gt=0, description="out-of-core camera data: keep at most this many GB (1e9 bytes) of decoded image "
        "chunks in memory, all cameras together, and stream training batches from the store (background threads "
        "decode chunk-aligned units and compose batches; docs/contracts.md); None = every frame in memory, as "
        "float32 in the batch table (~8x the frames' size for obs and next obs). Needs image/ keys in obs_keys "
        "and a single-step run (n_obs_steps=1, horizon=1)")


class VisionConfig(_Strict):
    """The image encoder of policies (and critics) whose data.obs_keys name cameras; trained from scratch, end to
    end with the policy's loss (the critic has its own, trained by its TD loss)."""

    encoder: Literal["small", "resnet18"] = Field(
        "small", description="small: 3 convs + GroupNorm (CPU); resnet18: ResNet-18 with GroupNorm (Diffusion "
        "Policy's); both end in spatial-softmax keypoints and a linear layer")
    share: bool = Field(False, description="one encoder for all cameras (else one per camera)")
    features: int = Field(64, ge=1, description="features per camera and observation step")
    keypoints: int = Field(32, ge=1, description="spatial-softmax keypoints")
    crop: list[int] | None = Field(
        None, min_length=2, max_length=2, description="[h, w] crop window: random in training, centred at "
        "inference; None = 90 % of each side")


class ModelConfig(_Strict):
    kind: Literal["vpsde", "gvp", "icfm"] = "gvp"
    hidden: list[int] = Field(default_factory=lambda: [512, 256, 128])
    t_dim: int = 32
    cond_hidden: int = 32
    t_cond_hidden: int = 128
    vpsde_target: Literal["noise", "velocity"] = "noise"
    vision: VisionConfig = Field(default_factory=VisionConfig)


class CriticConfig(_Strict):
    # Defaults sized for a CPU budget (docs/results.md, "critic"): with the reference's Polyak rate 0.005 a TD
    # backup takes ~200 steps to reach the target net, so a few thousand steps propagate returns only ~10 steps
    # back; 0.05 and lr 1e-3 with a cosine decay rank logged actions (corr with Monte-Carlo returns reported).
    steps: int = Field(4000, ge=0, description="IQL gradient steps (0 skips the critic; only valid for bc)")
    batch_size: int = Field(1024, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [256, 256])
    lr: float = 1e-3
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine", description="cosine: lr decays to lr/10 over the critic steps (Q settles instead of jittering)")
    ensemble: int = Field(1, ge=1, le=16, description="independently initialised IQL critics (each twin Q + V) "
                          "trained side by side; Q and V are their means. More members, less dependence of the "
                          "advantage on one critic's initialisation; cost grows ~linearly")
    expectile: float = Field(0.7, gt=0.0, lt=1.0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    tau: float = Field(0.05, gt=0.0, le=1.0, description="Polyak rate of the target Q (reference: 0.005)")
    # n-step targets (docs/results.md §3o): with the one-step target Q ranked the logged actions of a state at
    # corr 0.10-0.17 with their Monte-Carlo advantage on held-out episodes of the locomotion sets; n = 10 (chosen
    # on a held-out seed's critic diagnostics, not on scores) 0.28-0.44, and GMPO/GMPG's scores followed.
    nstep: int | None = Field(None, ge=1, le=64, description="TD target over n logged steps: y = sum of k <= n "
                              "discounted rewards + gamma^k V(s_t+k), cut at the episode's end (1 = IQL's one-step "
                              "target, the reference). Q then sees what the logged action led to. None = 10, or 1 "
                              "when data.obs_keys names a camera (n > 1 keeps a copy of the bootstrap frames)")
    from_run: str | None = Field(
        None, description="reuse the trained critic of this run folder (or checkpoint folder) instead of training "
        "one: the critic stage is skipped. The run must come from the same store, reward scale and critic "
        "architecture (checked). Lets BC/GMPO/GMPG or a beta sweep share one critic, as GenerativeRL's stage reuse")
    amp: bool = Field(False, description="bf16 autocast of the critic networks (losses and weights stay fp32); "
                                         "~3x faster on an AVX512-BF16 CPU")


class EvalConfig(_Strict):
    select: Literal["sample", "q"] = Field(
        "sample", description="sample: execute one sampled action; q: sample `candidates` actions and execute the "
        "one with the highest Q (needs a critic)")
    candidates: int = Field(16, ge=1, description="actions sampled per decision with select=q")
    temperature: float = Field(
        1.0, ge=0.0, description="scale of the sampler's starting noise: 1 = the learned distribution, "
        "0 = deterministic (the ODE from zero noise: the mode-like action, no sampling jitter)")
    episodes: int = Field(10, ge=1)
    envs: int = Field(1, ge=1, description="vectorised envs")
    solver: Literal["euler", "heun", "midpoint"] = "euler"
    steps: int = Field(32, ge=1, description="sampler steps at inference")
    every: int = Field(0, ge=0, description="evaluate during training every N policy steps (0 = only at the end)")
    max_episode_steps: int | None = None


class TrainConfig(_Strict):
    name: str = Field("", description="run name; default derived from the store and algorithm")
    out_dir: str = "runs"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, description="torch CPU threads; None = all cores")
    amp: bool | None = Field(None, description="bf16 autocast of the generative networks (None = off). Pays on "
                                               "AVX512-BF16 CPUs (2.5x for GMPO); on an H200 it was slower at these sizes")
    compile: bool | None = Field(None, description="torch.compile of the policy backbones (None = off; on an H200 "
                                                   "it did not speed up a GMPO step and costs ~12 s to build)")
    log_every: int = Field(100, ge=1)
    ckpt_every: int = Field(1000, ge=1)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    policy: PolicyConfig = Field(  # one section per algorithm (genctl.algos), chosen by policy.algo
        default_factory=lambda: spec_for(DEFAULT_ALGO).config())
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @property
    def critic_nstep(self) -> int:
        """critic.nstep resolved: 10 by default; 1 for out-of-core data, and for cameras in memory, where the n-step
        bootstrap states would be one more copy of every frame (and n-step was measured on low-dim sets only)."""
        if self.critic.nstep is not None:
            return self.critic.nstep
        cameras = any(k.startswith("image/") for k in self.data.obs_keys or [])
        return 1 if self.data.cache_gb is not None or cameras else 10

    def with_resolved_defaults(self) -> TrainConfig:
        """This config with the library defaults it depends on written in (beta, the critic's n-step target): a
        run records them, so a later change of a default cannot alter its resume."""
        cfg = self
        if isinstance(cfg.policy, AdvantagePolicy) and cfg.policy.beta is None:
            cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"beta": cfg.policy.resolved_beta()})})
        if cfg.critic.nstep is None:
            cfg = cfg.model_copy(update={"critic": cfg.critic.model_copy(update={"nstep": cfg.critic_nstep})})
        return cfg

    @property
    def has_critic(self) -> bool:
        """A critic is trained here (critic.steps > 0) or taken from another run (critic.from_run)."""
        return self.critic.steps > 0 or bool(self.critic.from_run)

    @model_validator(mode="before")
    @classmethod
    def _default_algo(cls, data: Any) -> Any:
        """A policy section without ``algo`` is the default algorithm's (so ``policy.beta=3`` alone works)."""
        if isinstance(data, dict) and isinstance(data.get("policy"), dict) and "algo" not in data["policy"]:
            data = {**data, "policy": {"algo": DEFAULT_ALGO, **data["policy"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if spec_for(self.policy).needs_critic and not self.has_critic:
            raise ValueError(f"policy.algo={self.policy.algo} needs a critic: critic.steps must be > 0 "
                             "(or critic.from_run=RUN)")
        if getattr(self.policy, "q_lcb", 0.0) and self.critic.ensemble < 2:
            raise ValueError(f"policy.q_lcb={self.policy.q_lcb} penalises the disagreement of a critic ensemble: it "
                             f"needs critic.ensemble >= 2 (got {self.critic.ensemble})")
        if self.eval.select == "q" and not self.has_critic:
            raise ValueError("eval.select=q ranks candidates by Q: it needs a critic (critic.steps > 0 "
                             "or critic.from_run=RUN)")
        d = self.data
        if getattr(self.policy, "advantage", "q") == "gae" and (d.cache_gb is not None or d.n_obs_steps > 1
                                                                or d.horizon > 1):
            raise ValueError("policy.advantage=gae computes one advantage per logged transition in memory: it needs "
                             f"data.n_obs_steps=1, data.horizon=1 and no data.cache_gb (got {d.n_obs_steps}, "
                             f"{d.horizon}, {d.cache_gb}); use policy.advantage=q")
        if d.return_weight is not None and (d.cache_gb is not None or d.n_obs_steps > 1 or d.horizon > 1):
            raise ValueError("data.return_weight draws single transitions from memory: it needs data.n_obs_steps=1, "
                             f"data.horizon=1 and no data.cache_gb (got {d.n_obs_steps}, {d.horizon}, {d.cache_gb})")
        if (self.critic.nstep or 1) > 1 and d.cache_gb is not None:
            raise ValueError(f"critic.nstep={self.critic.nstep} builds its n-step targets from the transitions in "
                             "memory; data.cache_gb streams them from the store: set critic.nstep=1")
        if d.n_action_steps is not None and d.n_action_steps > d.horizon:
            raise ValueError(f"data.n_action_steps={d.n_action_steps} must be <= data.horizon={d.horizon} "
                             "(a policy call predicts horizon actions; it cannot execute more than it predicts)")
        if d.cache_gb is not None and not any(k.startswith("image/") for k in d.obs_keys or []):
            raise ValueError("data.cache_gb streams camera frames from the store, but data.obs_keys names no image/ "
                             "key (low-dim data is always held in memory): unset data.cache_gb")
        if d.cache_gb is not None and (d.n_obs_steps > 1 or d.horizon > 1):
            raise ValueError(f"data.cache_gb (out-of-core camera data) streams single transitions: it needs "
                             f"data.n_obs_steps=1 and data.horizon=1 (got {d.n_obs_steps}, {d.horizon}); unset "
                             "data.cache_gb to train windows from memory")
        return self


def migrate_saved(data: dict[str, Any]) -> dict[str, Any]:
    """A saved TrainConfig dict (a run's config.yaml, a checkpoint's meta["config"]) made loadable by this
    version: older versions wrote one flat policy section with every algorithm's fields; the fields the run's
    algorithm does not have are dropped (they did nothing). Only for saved configs, never for user input."""
    if isinstance(data.get("policy"), dict):
        data = {**data, "policy": migrate_policy_section(data["policy"])}
    pol = data.get("policy")
    if isinstance(pol, dict) and pol.get("algo") == "gmpg" and "beta" in pol and pol["beta"] is None:
        # new runs record their resolved beta; a null one was saved while GMPG's default was 0.5 (before session 35)
        data = {**data, "policy": {**pol, "beta": 0.5}}
    if isinstance(data.get("critic"), dict) and "nstep" not in data["critic"]:
        # saved before critic.nstep existed: those critics were trained with the one-step target (resumes keep it)
        data = {**data, "critic": {**data["critic"], "nstep": 1}}
    return data


def load_saved_config(path: str | Path) -> TrainConfig:
    """A run folder's config.yaml as a TrainConfig (migrated from older versions' layout)."""
    return build_config(TrainConfig, base=migrate_saved(load_yaml(path)), source=str(path))


def parse_value(text: str) -> Any:
    """Parse an override value as YAML (so ``1e-4``, ``true``, ``[512,256]``, ``null`` work)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return _plain_list(text)


def _plain_list(text: str) -> Any:
    """``[a[0:3,9:11], b]`` (brackets inside items, which YAML reads as nested lists and rejects): the list of the
    top-level comma-separated items as strings; any other text unchanged."""
    t = text.strip()
    if not (t.startswith("[") and t.endswith("]")):
        return text
    items, depth, cur = [], 0, ""
    for ch in t[1:-1]:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    items.append(cur.strip())
    return [i.strip("'\"") for i in items if i]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. policy.beta=3.0")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p!r} is not a section")
        node[parts[-1]] = parse_value(value)
    return data


def _union_members(tp: Any, info: Any) -> dict[str, type[BaseModel]]:
    """tag -> model of a discriminated union field (``info`` its FieldInfo), {} for any other type."""
    key = getattr(info, "discriminator", None)
    if not isinstance(key, str):
        return {}
    members = [m for m in typing.get_args(tp) if isinstance(m, type) and issubclass(m, BaseModel)]
    return {typing.get_args(m.model_fields[key].annotation)[0]: m for m in members}


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], list[str], dict[str, Any]]:
    """For an error at ``loc``: the dotted path to show (union tags left out), the field names of the section
    holding its last part (for did-you-mean; [] once the path leaves the models) and, inside a discriminated
    union, {"key": discriminator, "tag": the chosen tag, "members": tag -> model}."""
    node: Any = model
    info: Any = None
    shown: list[str] = []
    union: dict[str, Any] = {}
    for i, part in enumerate(loc):
        members = _union_members(node, info)
        if members and part in members:
            union = {"key": info.discriminator, "tag": part, "members": members}
            node = members[part]
            continue
        shown.append(str(part))
        fields = getattr(node, "model_fields", None)
        if i == len(loc) - 1:
            return shown, list(fields or {}), union
        if not fields or part not in fields:
            return shown + [str(p) for p in loc[i + 1:]], [], union
        info = fields[part]
        node = info.annotation
    return shown, [], union


def _format_validation(err: ValidationError, source: str, model: type[BaseModel] | None = None) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        shown, siblings, union = _walk(model, tuple(e["loc"])) if model is not None else (
            [str(x) for x in e["loc"]], [], {})
        msg = e["msg"]
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            shown.append(str(e.get("ctx", {}).get("discriminator", "")).strip("'"))
        section = ".".join(shown[:-1])
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
            close = difflib.get_close_matches(shown[-1], siblings, n=1)
            if close:
                msg += f"; did you mean {'.'.join([*shown[:-1], close[0]])}?"
            elif union:  # e.g. policy.beta with policy.algo=bc: say which algorithms have it
                msg += f" for {section}.{union['key']}={union['tag']}"
                owners = [t for t, m in union["members"].items() if shown[-1] in m.model_fields]
                if owners:
                    msg += f" (a field of {section}.{union['key']}={'|'.join(owners)})"
        loc = ".".join(shown) or "<root>"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {msg}{got_s}")
    return "\n".join(lines)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def build_config(model: type[BaseModel], *, base: dict[str, Any] | None = None, file: str | Path | None = None,
                 overrides: list[str] | None = None, source: str = "defaults") -> Any:
    data: dict[str, Any] = dict(base or {})
    if file is not None:
        data = _deep_merge(data, load_yaml(file))
        source = str(file)
    if overrides:
        data = apply_overrides(data, list(overrides))
        source += " + command-line overrides"
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e, source, model)) from None


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
