"""Every configuration field does something: a field no code reads is a setting that silently does nothing."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from genctl.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("apps", "genctl", "policies", "datasets", "envs") for p in (ROOT / d).rglob("*.py")
           if p.name != "config.py"]


def _models(tp: object) -> list[type[BaseModel]]:
    """The section model(s) of a field: the model itself, or every member of a (discriminated) union."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    return [m for m in typing.get_args(tp) if isinstance(m, type) and issubclass(m, BaseModel)]


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field; a union section (policy: one config per algorithm) contributes the
    fields of all its members."""
    out: list[str] = []
    for name, f in model.model_fields.items():
        subs = _models(f.annotation)
        if not subs:
            out.append(f"{prefix}{name}")
        for sub in subs:
            out += [p for p in _fields(sub, f"{prefix}{name}.") if p not in out]
    return out


def unread(paths: list[str]) -> list[str]:
    """The dotted config paths whose field name no source file reads: as an attribute (cfg.policy.beta) or
    from a saved config / meta dict (["beta"], .get("beta")). By leaf name, so a common name (steps) passes
    if any section's field of that name is read; a setting nobody wired fails."""
    code = "\n".join(p.read_text() for p in SOURCES)
    out = []
    for path in paths:
        name = path.rsplit(".", 1)[-1]
        if not re.search(rf"\.{name}\b|\[\"{name}\"\]|get\(\"{name}\"", code):
            out.append(path)
    return out


def test_every_config_field_is_read_somewhere() -> None:
    assert unread(["eval.a_setting_nobody_wired"]) == ["eval.a_setting_nobody_wired"]  # the check can fail
    paths = _fields(TrainConfig)
    assert {"policy.clamp", "policy.kl_batch", "policy.ema_decay"} <= set(paths)  # every algorithm's section
    missing = unread(paths)
    assert not missing, f"config fields nothing reads: {missing}"


def test_print_config_shows_the_defaults_a_run_would_record(tmp_path: Path) -> None:
    """`genctl train --print-config` prints what config.yaml will hold: beta and the critic's n-step target
    resolved from the library defaults (null before), and an explicit value left alone."""
    import yaml

    from tests.cli_helpers import genctl_ok

    out = yaml.safe_load(genctl_ok("train", "--print-config", "policy.algo=gmpg", f"data.store={tmp_path}/x.zarr",
                                   cwd=tmp_path).stdout)
    assert (out["policy"]["beta"], out["critic"]["nstep"]) == (1.0, 10)
    out = yaml.safe_load(genctl_ok("train", "--print-config", "policy.beta=3", "critic.nstep=1",
                                   f"data.store={tmp_path}/x.zarr", cwd=tmp_path).stdout)
    assert (out["policy"]["algo"], out["policy"]["beta"], out["critic"]["nstep"]) == ("gmpo", 3.0, 1)
