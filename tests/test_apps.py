"""genctl view / plot / run on a tiny store and run: recordings hold what they should, PNGs are written,
the fixed-rate loop counts deadline misses instead of blocking."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
        "eval.steps=4", "data.val_frac=0.2", "eval.every=10", "eval.episodes=1", "eval.max_episode_steps=10")
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
    # the layout: a tab per episode (stored camera, re-render, maze path, stacked series) and a store tab
    from genctl.apps.blueprints import rrd_blueprint

    bp = rrd_blueprint(out)
    assert {"episode 0", "episode 2", "store"} <= set(bp["tabs"]), bp["tabs"]
    origins = {(v["kind"], v["origin"]) for v in bp["views"]}
    for want in (("2D", "/ep_002/render"), ("2D", "/ep_000/image/default"), ("TimeSeries", "/ep_000/action"),
                 ("TimeSeries", "/ep_002/return"), ("TextDocument", "/store")):
        assert want in origins, f"{want} not in {sorted(origins)}"


def test_eval_recording_has_a_designed_layout(trained, tmp_path):
    """The eval recording's blueprint, read back from the .rrd: one tab per recorded episode with camera, maze,
    the candidate-action cloud (coloured by Q, executed one marked) and stacked series; an overview tab."""
    from genctl.apps.blueprints import rrd_blueprint
    from genctl.apps.viz import rrd_contents

    _, run = trained
    out = tmp_path / "eval.rrd"
    cli("eval", str(run), "--episodes", "3", "--envs", "1", "--rerun-episodes", "2", "--max-episode-steps", "8",
        "--candidates", "8", "--frame-every", "4", "--rerun", "save", str(out), "-o", str(tmp_path / "e.json"))
    bp = rrd_blueprint(out)
    assert sorted(bp["tabs"]) == sorted(["episode 0 (seed 1000000)", "episode 1 (seed 1000001)", "all episodes"])
    views = {(v["kind"], v.get("name"), v["origin"]): v.get("contents") for v in bp["views"]}
    for ep in ("ep_000", "ep_001"):
        cloud = [c for (k, name, o), c in views.items() if o == f"/{ep}" and name.startswith("action space")]
        assert cloud == [[f"/{ep}/action_space/**"]], views
        for kind, origin in (("2D", f"/{ep}/camera"), ("TimeSeries", f"/{ep}/action/executed"),
                             ("TimeSeries", f"/{ep}/critic"), ("TimeSeries", f"/{ep}/joints/qpos")):
            assert any(k == kind and o == origin for k, _, o in views), (kind, origin)
    assert ("TimeSeries", "return, every recorded episode", "/") in views
    maze = views[("2D", "maze: every path", "/maze")]
    assert "/maze/walls" in maze and "/maze/ep_001/path" in maze
    # what the views point at was logged: the cloud's candidates and executed action, the per-dim legend
    ents = rrd_contents(out)
    assert {"/ep_000/action_space/candidates", "/ep_000/action_space/executed", "/ep_002/return"} & set(ents) \
        == {"/ep_000/action_space/candidates", "/ep_000/action_space/executed"}  # episode 2 is not recorded


def test_training_reports_validation_loss_and_periodic_evals(trained):
    """data.val_frac gives a held-out matching loss at every log step of the policy stage; eval.every=10 a
    closed-loop evaluation (eval.episodes / eval.max_episode_steps of the run's config) every 10 policy steps."""
    from genctl.metrics import read_metrics

    _, run = trained
    rows = read_metrics(run)
    pol = [r for r in rows if r["stage"] == "policy"]
    assert pol and all(np.isfinite(r["val_loss"]) and r["val_loss"] > 0 for r in pol)
    assert not any("val_loss" in r for r in rows if r["stage"] == "critic")
    evals = [r for r in rows if r["stage"] == "eval"]
    assert [r["step"] - pol[0]["step"] + 5 for r in evals] == [10, 20]  # policy steps 10 and 20
    reps = sorted((run / "evals").glob("step-*.json"))
    assert len(reps) == 2
    rep = json.loads(reps[0].read_text())
    assert rep["return"]["n"] == 1 and rep["episodes"][0]["length"] <= 10
    assert {"eval_success_rate", "eval_return"} <= set(evals[0])


def test_plot_helpers_known_answers():
    from genctl.apps.plot import smooth, stage_rows

    rows = [{"step": s, "stage": "critic"} for s in (5, 10)] + [{"step": s, "stage": "policy"} for s in (15, 20)]
    rows.append({"step": 20, "stage": "eval"})
    st = stage_rows(rows)
    assert st["critic"][0].tolist() == [5, 10] and st["policy"][0].tolist() == [5, 10]
    assert st["eval"][0].tolist() == [10]  # on the policy stage's axis
    y = smooth(np.array([0.0, np.nan, 10.0, 10.0]), frac=0.5)  # window 2: alpha 2/3
    assert y[0] == 0 and y[1] == 0 and y[2] == pytest.approx(20 / 3) and y[3] == pytest.approx(80 / 9)


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

    from genctl.apps.train_monitor import NonFinite

    nf = NonFinite()
    nf.add({"loss": 1.0, "q": float("nan")})
    assert not nf.lazy and nf.check() == ["q"] and nf.check() == []
    nf.add({"loss": torch.tensor(1.0), "q": torch.tensor(2.0)})
    nf.add({"loss": torch.tensor(float("inf")), "q": torch.tensor(3.0)})
    nf.add({"loss": torch.tensor(0.5), "q": torch.tensor(3.0)})  # a later finite value does not clear the flag
    assert nf.lazy and nf.check() == ["loss"] and nf.check() == []


def test_trace_point_is_a_side_view_for_walkers():
    from genctl.apps.rollout_log import trace_point
    from genctl.envs import make_env

    env = make_env("Hopper-v5")
    try:
        env.reset(seed=0)
        p = trace_point(env)
        torso = env.unwrapped.data.xpos[1]
        assert p is not None and np.allclose(p, [torso[0], torso[2]])  # x forward, z up
        assert p[1] > 1.0  # the torso stands ~1.25 m above the floor
    finally:
        env.close()


def test_evals_are_kept_and_eval_json_is_the_latest(trained):
    _, run = trained
    before = set((run / "evals").glob("2*.json")) if (run / "evals").exists() else set()
    cli("eval", str(run), "--episodes", "1", "--max-episode-steps", "5", "--frame-every", "0")
    cli("eval", str(run), "--episodes", "1", "--max-episode-steps", "5", "--frame-every", "0", "--temperature", "0.5")
    r = cli("eval", str(run), "--episodes", "1", "--max-episode-steps", "5", "--frame-every", "0", "--deterministic",
            "--weights", "raw")
    new = sorted(set((run / "evals").glob("2*.json")) - before, key=lambda p: p.stat().st_mtime_ns)
    assert len(new) == 3 and new[0].name.endswith("-euler-4.json") and new[1].name.endswith("-euler-4-t0.5.json")
    assert new[2].name.endswith("-euler-4-t0-raw.json") and "raw weights" in r.stdout
    first, latest = (json.loads(p.read_text()) for p in (new[0], run / "eval.json"))
    assert first["weights"] == "ema" and latest["kept_as"] == str(new[2]) and latest["weights"] == "raw"
    # the raw weights are the optimiser's, not the moving average's: the deterministic actions differ
    from genctl.apps.policy import LoadedPolicy

    ema, raw = LoadedPolicy.from_run(run), LoadedPolicy.from_run(run, use_ema=False)
    assert (ema.weights, raw.weights) == ("ema", "raw")
    for p in (ema, raw):
        p.configure(temperature=0.0)
    obs = np.zeros((1, ema.obs_dim), np.float32)
    assert np.abs(ema.predict_chunk(obs) - raw.predict_chunk(obs)).max() > 1e-6
