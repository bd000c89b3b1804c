"""genctl export RUN --onnx: the exported sampler gives the torch sampler's actions for the same noise, loads
without torch, and rejects bad inputs with one clear line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import tiny_maze_run

from genctl.apps.onnx_export import export_onnx
from genctl.apps.onnx_policy import OnnxPolicy
from genctl.apps.policy import LoadedPolicy
from genctl.cli import main
from genctl.errors import DataError, GenctlError

TINY = ["model.hidden=[32,32,32]", "critic.batch_size=64", "policy.batch_size=64", "critic.hidden=[32,32]",
        "critic.steps=5", "policy.steps=5", "log_every=5", "threads=1", "eval.episodes=1",
        "eval.max_episode_steps=5"]
# training overrides of the exported runs: a noise-prediction VP-SDE with a chunked history/horizon, an I-CFM
# flow (prior std != 1) deployed with Q-selection at temperature 0.5, a GVP flow with the midpoint solver
RUNS = {
    "vpsde": ["model.kind=vpsde", "eval.solver=heun", "eval.steps=4", "data.n_obs_steps=2", "data.horizon=4",
              "data.n_action_steps=2"],
    "icfm": ["model.kind=icfm", "eval.solver=euler", "eval.steps=6", "eval.select=q", "eval.candidates=3",
             "eval.temperature=0.5"],
    "gvp": ["model.kind=gvp", "eval.solver=midpoint", "eval.steps=3"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    store, first = tiny_maze_run(root, seed=3, episodes=3, train=[*TINY, *RUNS["vpsde"]])
    out = {"vpsde": first, "root": root}
    for kind in ("icfm", "gvp"):
        assert main(["--quiet", "train", f"data.store={store}", f"out_dir={root}", f"name={kind}", *TINY,
                     *RUNS[kind]]) == 0
        out[kind] = root / kind
    # the tiny runs' actions are mostly at the box edges, where clipping hides sampler differences (and makes
    # Q ties between candidates whose first actions clip to the same corner): a copy of the VP-SDE run and the
    # Q-selecting run itself lose their action box, so the raw unnormalised samples are compared
    out["nobox"] = root / "nobox"
    shutil.copytree(first, out["nobox"])
    for run in (out["nobox"], out["icfm"]):
        for meta_path in run.glob("checkpoints/*/meta.json"):
            meta = json.loads(meta_path.read_text())
            meta["action_space"] = None
            meta_path.write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def exported(runs) -> dict[str, Path]:
    return {k: export_onnx(runs[k], runs["root"] / f"{k}.onnx") for k in [*RUNS, "nobox"]}


@pytest.mark.parametrize("kind", [*RUNS, "nobox"])
def test_onnx_matches_torch_sampler_for_the_same_noise(kind, runs, exported) -> None:
    torch_policy = LoadedPolicy.from_run(runs[kind])
    onnx_policy = OnnxPolicy(exported[kind])
    m = onnx_policy.meta
    assert (m["solver"], m["steps"]) == (torch_policy.solver, torch_policy.steps)
    assert (onnx_policy.n_obs_steps, onnx_policy.horizon, onnx_policy.n_action_steps) == (
        torch_policy.n_obs_steps, torch_policy.horizon, torch_policy.n_action_steps)
    assert m["temperature"] == torch_policy.temperature and onnx_policy.deployment() == torch_policy.deployment()
    n = onnx_policy.n_select
    assert (m["select"], n, m["temperature"]) == (("q", 3, 0.5) if kind == "icfm" else ("sample", 1, 1.0))
    rng = np.random.default_rng(0)
    for b in (1, 7):
        obs = rng.normal(size=(b, onnx_policy.n_obs_steps, onnx_policy.obs_dim)).astype(np.float32) * 2
        # LoadedPolicy draws its starting noise (before the temperature) as the generator's first randn, one
        # row per (state, candidate), state-major
        d = torch_policy.model.action_dim
        z = torch.randn(b * n, d, generator=torch.Generator().manual_seed(b)).numpy()
        z = z.reshape(b, n, d) if n > 1 else z
        want = torch_policy.predict_chunk(obs, generator=torch.Generator().manual_seed(b))
        got = onnx_policy.predict_chunk(obs, noise=z)
        assert got.shape == want.shape == (b, onnx_policy.horizon, onnx_policy.action_dim)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
        if n > 1 and b > 1:  # the choice matters: not every state keeps its first candidate
            assert torch_policy.last_selection is not None and torch_policy.last_selection["chosen"].any()
        # (B, D) / (D,) observations are repeated as the history, as LoadedPolicy does
        got1 = onnx_policy.predict_chunk(obs[:, -1], noise=z.reshape(b, *z.shape[1:-1], onnx_policy.horizon, -1))
        want1 = torch_policy.predict_chunk(obs[:, -1], generator=torch.Generator().manual_seed(b))
        np.testing.assert_allclose(got1, want1, atol=1e-4, rtol=1e-5)
    drawn = onnx_policy.predict_chunk(obs[0, -1], rng=np.random.default_rng(1))
    assert drawn.shape == (1, onnx_policy.horizon, onnx_policy.action_dim)
    if kind in ("nobox", "icfm"):
        assert m["action_space"] == {"low": None, "high": None} and np.abs(want).max() > 1.0  # box was [-1, 1]
    else:
        low, high = np.asarray(m["action_space"]["low"]), np.asarray(m["action_space"]["high"])
        assert np.all(drawn >= low - 1e-6) and np.all(drawn <= high + 1e-6)


def test_cli_export_summary(runs, capsys) -> None:
    out = runs["root"] / "cli.onnx"
    capsys.readouterr()
    assert main(["export", str(runs["icfm"]), "--onnx", str(out)]) == 0
    captured = capsys.readouterr()
    assert "euler x 6 steps, best of 3 by Q" in captured.out and "noise (B, 3, 2)" in captured.out
    assert "KiB" in captured.out and not captured.err
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # atomic write left nothing
    assert OnnxPolicy(out).meta["source_checkpoint"].startswith(str(runs["icfm"].resolve()))


def test_onnx_policy_module_does_not_import_torch(exported) -> None:
    code = ("import sys, numpy as np\nfrom genctl.apps.onnx_policy import OnnxPolicy\n"
            f"p = OnnxPolicy({str(exported['gvp'])!r})\n"
            "p.predict_chunk(np.zeros((2, p.obs_dim), np.float32), rng=np.random.default_rng(0))\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_bad_inputs(runs, exported, tmp_path, capsys) -> None:
    # export of something that is not a run: one error line, exit 2
    capsys.readouterr()
    assert main(["export", str(tmp_path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(tmp_path) in err[0]
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(GenctlError, match="does not exist"):
        export_onnx(tmp_path / "missing", tmp_path / "y.onnx")
    with pytest.raises(GenctlError, match=r"\.onnx"):
        export_onnx(runs["gvp"], tmp_path / "policy.bin")
    # files that are not genctl ONNX samplers
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not an onnx model\xff" * 10)
    with pytest.raises(DataError, match="junk.onnx"):
        OnnxPolicy(junk)
    import onnx
    from onnx import TensorProto, helper

    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]))
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(DataError, match="without genctl metadata"):
        OnnxPolicy(tmp_path / "plain.onnx")
    bad_meta = onnx.load(exported["gvp"])
    for p in bad_meta.metadata_props:
        if p.key == "genctl":
            p.value = json.dumps({"obs_dim": 4})
    onnx.save(bad_meta, tmp_path / "badmeta.onnx")
    with pytest.raises(DataError, match="metadata is not valid"):
        OnnxPolicy(tmp_path / "badmeta.onnx")
    with pytest.raises(GenctlError, match="does not exist"):
        OnnxPolicy(tmp_path / "nope.onnx")
    # wrong shapes
    policy = OnnxPolicy(exported["vpsde"])
    with pytest.raises(GenctlError, match="observation history of shape"):
        policy.predict_chunk(np.zeros((1, 3, policy.obs_dim), np.float32))
    with pytest.raises(GenctlError, match="observation of shape"):
        policy.predict_chunk(np.zeros((2, policy.obs_dim + 1), np.float32))
    with pytest.raises(GenctlError, match="noise of shape"):
        policy.predict_chunk(np.zeros((2, policy.obs_dim), np.float32), noise=np.zeros((2, 3), np.float32))
    with pytest.raises(GenctlError, match="another export"):
        policy.configure(select="q")
    q_policy = OnnxPolicy(exported["icfm"])  # select=q: noise needs the candidates axis
    with pytest.raises(GenctlError, match=r"noise of shape \(2, 2\): expected \(2, 3, 2\)"):
        q_policy.predict_chunk(np.zeros((2, q_policy.obs_dim), np.float32), noise=np.zeros((2, 2)))
