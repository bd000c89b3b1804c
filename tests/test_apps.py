"""genctl view / plot / run on a tiny store and run: recordings hold what they should, PNGs are written,
the fixed-rate loop counts deadline misses instead of blocking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import genctl_ok as cli

pytestmark = pytest.mark.e2e



@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("apps")
    store = d / "umaze.zarr"
    cli("collect", "PointMaze_UMaze-v3", "--expert", "maze", "--episodes", "10", "--noise", "0.2", "--images",
        "-o", str(store))
    cli("train", f"data.store={store}", f"out_dir={d}", "name=r", "critic.steps=20", "policy.steps=20",
        "model.hidden=[32,32,32]", "critic.batch_size=128", "policy.batch_size=128", "log_every=5", "threads=1",
        "eval.steps=4")
    return store, d / "r"


def test_view_records_dataset_and_rerenders(trained, tmp_path):
    from genctl.apps.viz import first_image, rrd_contents

    store, _ = trained
    out = tmp_path / "view.rrd"
    cli("view", str(store), "--episodes", "0,2", "--render", "--rerun", "save", str(out))
    ents = rrd_contents(out)
    for e in ("/ep_000/action", "/ep_000/reward", "/ep_000/return", "/ep_002/render", "/maze/walls",
              "/maze/ep_002/path", "/store"):
        assert e in ents, f"{e} not in {sorted(ents)}"
    assert any(k.startswith("/ep_000/obs") for k in ents)
    assert any(k.startswith("/ep_000/image/") for k in ents), "stored camera frames not shown"
    frame = first_image(ents["/ep_002/render"])
    assert frame.max() > 30 and frame.std() > 5


def test_plot_writes_pngs(trained):
    _, run = trained
    r = cli("plot", str(run), "--states", "2", "--samples", "32")
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert {"curves_critic.png", "curves_policy.png", "action_samples.png"} <= set(pngs), pngs
    assert all((run / "plots" / p).stat().st_size > 5000 for p in pngs)
    assert "wrote" in r.stdout


def test_realtime_counts_deadline_misses(trained):
    _, run = trained
    # 2000 Hz is faster than this policy can answer on a CPU: the loop must keep stepping and count misses.
    r = cli("run", str(run), "--hz", "2000", "--max-steps", "60")
    rep = json.loads((run / "realtime.json").read_text())
    assert rep["ticks"] == 60 and rep["deadline_misses"] > 0
    assert rep["episodes"][0]["length"] == 60
    assert "deadline misses" in r.stdout
    # a slow rate the policy can meet: (almost) no misses
    cli("run", str(run), "--hz", "20", "--max-steps", "10")
    rep = json.loads((run / "realtime.json").read_text())
    assert rep["deadline_misses"] <= 2 and abs(rep["hz_achieved"] - 20) < 5


def test_nonfinite_checker_reads_device_flags_only_when_asked() -> None:
    import torch

    from genctl.apps.train import _NonFinite

    nf = _NonFinite()
    nf.add({"loss": 1.0, "q": float("nan")})
    assert not nf.lazy and nf.check() == ["q"] and nf.check() == []
    nf.add({"loss": torch.tensor(1.0), "q": torch.tensor(2.0)})
    nf.add({"loss": torch.tensor(float("inf")), "q": torch.tensor(3.0)})
    nf.add({"loss": torch.tensor(0.5), "q": torch.tensor(3.0)})  # a later finite value does not clear the flag
    assert nf.lazy and nf.check() == ["loss"] and nf.check() == []
