"""Safe loading: files a user can be sent (checkpoints, stores) never execute code when genctl reads them.

Every payload below, if it were unpickled or imported, would create a marker file. The tests put such payloads
where a checkpoint's weights, a store's arrays/codecs or an env id would be, run the real CLI, and check that
loading fails with a clear one-line error (or ignores the stray file) and that the marker never appears.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from cli_helpers import tiny_maze_run

from genctl.cli import main

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
TINY = ["model.hidden=[32,32,32]", "critic.hidden=[32,32]", "critic.steps=4", "policy.steps=4",
        "critic.batch_size=64", "policy.batch_size=64", "threads=1", "eval.steps=2"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the side effect we check for."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    store, run = tiny_maze_run(tmp_path_factory.mktemp("safe"), seed=2, episodes=3, train=TINY)
    return {"store": store, "run": run}


def cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["--quiet", *argv])
    return rc, capsys.readouterr().err


def copy_run(shared, tmp: Path) -> tuple[Path, Path]:
    run = tmp / "run"
    shutil.copytree(shared["run"], run)
    return run, run / "checkpoints" / (run / "checkpoints" / "LATEST").read_text().strip()


# --- the source never unpickles --------------------------------------------------------------------------
UNSAFE = [
    (r"\bpickle\.loads?\(", "pickle.load"),
    (r"\b(cloudpickle|dill|joblib)\b", "pickle-based loader"),
    (r"torch\.load\((?![^)]*weights_only\s*=\s*True)", "torch.load without weights_only=True"),
    (r"allow_pickle\s*=\s*True", "np.load(allow_pickle=True)"),
    (r"\byaml\.(load|unsafe_load|full_load)\(", "yaml.load (not safe_load)"),
    (r"\bnumcodecs\.Pickle\b|object_codec", "pickle codec for zarr"),
]


def test_source_has_no_unsafe_loads():
    found = []
    for folder in ("genctl", "apps", "datasets", "envs", "policies", "benchmarks", "scripts"):
        for f in (REPO / folder).rglob("*.py"):
            text = f.read_text()
            for pattern, what in UNSAFE:
                for m in re.finditer(pattern, text):
                    line = text[: m.start()].count("\n") + 1
                    found.append(f"{f.relative_to(REPO)}:{line}: {what}")
    assert not found, "\n".join(found)


# --- checkpoints -----------------------------------------------------------------------------------------
def _raw_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


def _torch_save(path: Path, marker: Path) -> None:
    torch.save({"weight": Payload(marker)}, path)  # a .pt zip whose data.pkl runs the payload on torch.load


@pytest.mark.parametrize("group", ["ema", "policy", "critic"])
@pytest.mark.parametrize("make", [_raw_pickle, _torch_save], ids=["raw-pickle", "torch-save"])
def test_pickled_weights_are_rejected_not_run(shared, tmp_path, capsys, group, make):
    run, ck = copy_run(shared, tmp_path)
    marker = tmp_path / "PWNED"
    if group == "policy":  # the policy group is read when there is no EMA
        (ck / "ema.safetensors").unlink()
    make(ck / f"{group}.safetensors", marker)
    rc, err = cli(capsys, "eval", str(run), "--episodes", "1", "--max-episode-steps", "3")
    assert rc == 2 and f"{group}.safetensors" in err and "safetensors" in err, err
    assert "Traceback" not in err
    assert not marker.exists(), "the payload ran"
    assert not (run / "eval.json").exists()


def test_stray_pickle_files_in_a_checkpoint_are_never_opened(shared, tmp_path, capsys):
    run, ck = copy_run(shared, tmp_path)
    marker = tmp_path / "PWNED"
    for name in ("policy.pt", "optim.pkl", "data.pkl", "model.bin"):
        _torch_save(ck / name, marker)
    rc, err = cli(capsys, "eval", str(run), "--episodes", "1", "--max-episode-steps", "3")
    assert rc == 0, err
    assert not marker.exists()
    rc, err = cli(capsys, "train", "--resume", str(run))  # resuming reads the checkpoint too
    assert rc == 0, err
    assert not marker.exists()


def test_meta_env_id_cannot_import_a_module(shared, tmp_path, capsys, monkeypatch):
    """gymnasium would import ``module:Env`` ids; genctl only builds registered ids."""
    marker = tmp_path / "PWNED"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    run, ck = copy_run(shared, tmp_path)
    meta = json.loads((ck / "meta.json").read_text())
    meta["env"]["id"] = "evilmod:Evil-v0"
    (ck / "meta.json").write_text(json.dumps(meta))
    rc, err = cli(capsys, "eval", str(run), "--episodes", "1")
    assert rc == 2 and "evilmod:Evil-v0" in err, err
    assert not marker.exists()
    # the same through a store's recorded env (view --render rebuilds it)
    import zarr

    store = tmp_path / "s.zarr"
    shutil.copytree(shared["store"], store)
    root = zarr.open_group(store, mode="a")
    env = dict(root.attrs["env"], id="evilmod:Evil-v0")
    root.attrs["env"] = env
    rc, err = cli(capsys, "view", str(store), "--render", "--episodes", "0")
    assert rc == 2 and "evilmod:Evil-v0" in err, err
    assert not marker.exists()
    assert not store.with_suffix(".rrd").exists()


# --- stores ----------------------------------------------------------------------------------------------
def _v3_pickle_codec(store: Path, payload: bytes) -> None:
    """A zarr v3 array inside a real store whose codec chain ends in numcodecs' pickle."""
    arr = store / "data" / "info" / "evil"
    (arr / "c").mkdir(parents=True)
    (store / "data" / "info" / "zarr.json").write_text(json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": {}}))
    rows = _n_rows(store)
    (arr / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": [rows], "data_type": "float32",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [rows]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}}, "fill_value": 0.0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                   {"name": "numcodecs.pickle", "configuration": {}}], "attributes": {}}))
    (arr / "c" / "0").write_bytes(payload)


def _n_rows(store: Path) -> int:
    import zarr

    return int(zarr.open_group(store, mode="r")["meta/episode_ends"][-1])


def _v2_store(store: Path, payload: bytes, *, object_dtype: bool) -> None:
    """A whole zarr v2 store with genctl's attributes whose ``data/obs`` decodes through pickle."""
    shutil.rmtree(store)
    for grp in ("", "data", "meta"):
        (store / grp).mkdir(parents=True, exist_ok=True)
        (store / grp / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (store / ".zattrs").write_text(json.dumps({"format_version": 1}))
    (store / "meta" / "episode_ends").mkdir()
    (store / "meta" / "episode_ends" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [1], "chunks": [1], "dtype": "<i8", "compressor": None, "fill_value": 0,
        "filters": None, "order": "C"}))
    (store / "meta" / "episode_ends" / "0").write_bytes((3).to_bytes(8, "little"))
    (store / "data" / "obs").mkdir()
    (store / "data" / "obs" / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [3], "chunks": [3], "dtype": "|O" if object_dtype else "<f4",
        "compressor": None if object_dtype else {"id": "pickle"}, "fill_value": None if object_dtype else 0.0,
        "filters": [{"id": "pickle", "protocol": 4}] if object_dtype else None, "order": "C"}))
    (store / "data" / "obs" / "0").write_bytes(payload)


@pytest.mark.parametrize("kind", ["v3-numcodecs-pickle", "v2-pickle-compressor", "v2-object-pickle"])
@pytest.mark.parametrize("command", ["info", "train", "view"])
def test_store_with_pickle_codec_is_rejected_not_run(shared, tmp_path, capsys, kind, command):
    marker = tmp_path / "PWNED"
    store = tmp_path / "s.zarr"
    shutil.copytree(shared["store"], store)
    payload = pickle.dumps(Payload(marker))
    if kind == "v3-numcodecs-pickle":
        _v3_pickle_codec(store, payload)
    else:
        _v2_store(store, payload, object_dtype=kind == "v2-object-pickle")
    argv = {"info": ["info", str(store)], "view": ["view", str(store), "--episodes", "0"],
            "train": ["train", f"data.store={store}", f"out_dir={tmp_path / 'runs'}", *TINY]}[command]
    rc, err = cli(capsys, *argv)
    assert rc == 2 and "s.zarr" in err and "Traceback" not in err, err
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "runs").exists() and not store.with_suffix(".rrd").exists()


def test_marker_payload_really_runs_when_unpickled(tmp_path):
    """Control: the payload is live (so the tests above would notice if it ran)."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    os.remove(marker)
    f = tmp_path / "x.pt"
    _torch_save(f, marker)
    torch.load(f, weights_only=False)
    assert marker.exists()
