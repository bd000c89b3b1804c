"""Every configuration field does something: a field no code reads is a setting that silently does nothing."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from genctl.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("apps", "genctl", "policies", "datasets", "envs") for p in (ROOT / d).rglob("*.py")
           if p.name != "config.py"]


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        sub = f.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _fields(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
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
    missing = unread(_fields(TrainConfig))
    assert not missing, f"config fields nothing reads: {missing}"
