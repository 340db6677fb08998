"""Checkpoints written by real runs: every format x phase, read back with plain libraries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from runner.data import server_test_split
from runner.runtime import build_model, build_task
from runner.tasks import EvalContext
from tests.helpers import SAMPLED, read_metrics, run_cli, run_dirs

EXT = {"npz": "npz", "torch": "pt", "safetensors": "safetensors"}


def _plain_load(path: Path) -> dict[str, np.ndarray]:
    """Read a weights file without this package, as a user would."""
    if path.suffix == ".npz":
        return dict(np.load(path))
    if path.suffix == ".pt":
        state = torch.load(path, weights_only=True)
        return {k: v.numpy() for k, v in state.items()}
    return load_file(path)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    cwd = tmp_path_factory.mktemp("formats")
    proc = run_cli(
        [
            "-m",
            "checkpoint.format=npz,torch,safetensors",
            "checkpoint.phase=fit,evaluate",
            "num_rounds=4",
            "num_clients=4",
            "train.local_epochs=1",
            "checkpoint.keep_last=2",
            # the worst round by centralized loss, so that best != last
            "checkpoint.monitor=centralized_loss",
            "checkpoint.mode=max",
            "progress=log",
            *SAMPLED,
        ],
        cwd=cwd,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for run in run_dirs(cwd / "multirun"):
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        fmt = next(f for f in EXT if f"checkpoint.format={f}" in overrides)
        phase = "fit" if "checkpoint.phase=fit" in overrides else "evaluate"
        runs[(fmt, phase)] = run
    assert len(runs) == 6
    return runs


def _best_round(run: Path) -> int:
    losses = {r["round"]: r["loss"] for r in read_metrics(run) if r["phase"] == "centralized" and r["round"] >= 1}
    return max(losses, key=losses.get)


def test_files_manifests_and_retention(sweep: dict[tuple[str, str], Path]):
    for (fmt, phase), run in sweep.items():
        ck = run / "checkpoints"
        best = _best_round(run)
        assert best != 4
        kept = {int(p.stem.split("-")[1]) for p in ck.glob("round-*.json")}
        assert kept == {3, 4, best}, (fmt, phase, kept)  # keep_last=2 plus best; final is 4
        assert sorted(p.name for p in ck.glob(f"round-*.{EXT[fmt]}") if ".state." not in p.name) == sorted(
            f"round-{r:04d}.{EXT[fmt]}" for r in kept
        )
        assert json.loads((ck / "last.json").read_text())["round"] == 4
        assert json.loads((ck / "best.json").read_text())["round"] == best
        assert not list(ck.glob(".tmp-*"))
        for rnd in kept:
            manifest = json.loads((ck / f"round-{rnd:04d}.json").read_text())
            assert (manifest["round"], manifest["phase"], manifest["format"]) == (rnd, phase, fmt)
            assert len(manifest["files"]["weights"]["sha256"]) == 64
            row = [r for r in read_metrics(run) if r["round"] == rnd and r["phase"] == "centralized"][0]
            if phase == "evaluate":  # saved after the round's evaluation, with its metrics
                assert manifest["metrics"]["centralized_accuracy"] == row["accuracy"]
                assert (
                    manifest["metrics"]["evaluate_loss"]
                    == [r for r in read_metrics(run) if r["round"] == rnd and r["phase"] == "evaluate"][0]["loss"]
                )
            else:  # saved before that evaluation: the train metrics of this round only
                assert (
                    manifest["metrics"]["train_loss"]
                    == [r for r in read_metrics(run) if r["round"] == rnd and r["phase"] == "train"][0]["loss"]
                )


def test_plain_libraries_read_the_servers_model_bit_for_bit(sweep: dict[tuple[str, str], Path]):
    reference: dict[int, dict[str, np.ndarray]] = {}
    for (fmt, phase), run in sorted(sweep.items()):
        config = json.loads(next((run / "checkpoints").glob("round-0004.json")).read_text())["config"]
        model = build_model(config)
        task, test = build_task(config), server_test_split(config)
        for path in sorted((run / "checkpoints").glob(f"round-*.{EXT[fmt]}")):
            if ".state." in path.name:
                continue
            rnd = int(path.name.split(".")[0].split("-")[1])
            weights = _plain_load(path)
            assert set(weights) == set(model.state_dict())  # named keys, not arr_0...
            if fmt != "safetensors":  # safetensors' own loader returns keys sorted
                assert list(weights) == list(model.state_dict())
            # the same tensors whatever the format and phase (checkpointing never changes a run)
            ref = reference.setdefault(rnd, weights)
            for k in ref:
                assert weights[k].dtype == ref[k].dtype and np.array_equal(weights[k], ref[k]), (fmt, phase, rnd, k)
            # ... and they are the global model the server evaluated in that round
            model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
            metrics = task.evaluate(model, test, EvalContext())
            row = [r for r in read_metrics(run) if r["round"] == rnd and r["phase"] == "centralized"][0]
            assert metrics["accuracy"] == row["accuracy"] and metrics["loss"] == row["loss"]


def test_cli_lists_and_verifies_a_real_sweep(sweep: dict[tuple[str, str], Path], tmp_path: Path):
    root = next(iter(sweep.values())).parent
    listing = run_cli(["list", str(root)], cwd=tmp_path, module="runner.ckpt", timeout=120)
    assert listing.returncode == 0, listing.stderr
    for fmt in EXT:
        assert fmt in listing.stdout
    verify = run_cli(["verify", str(root)], cwd=tmp_path, module="runner.ckpt", timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_flower_howto_weights_warm_start_a_run(sweep: dict[tuple[str, str], Path], tmp_path: Path):
    """Seed migration: Flower's how-to `round-N-weights.npz` (positional arr_0...) warm-starts."""
    source = sweep[("npz", "fit")]
    weights = dict(np.load(source / "checkpoints" / "round-0004.npz"))
    howto = tmp_path / "round-4-weights.npz"
    np.savez(howto, *weights.values())  # what Flower's SaveModelStrategy writes
    assert list(np.load(howto)) == [f"arr_{i}" for i in range(len(weights))]
    proc = run_cli(["num_clients=4", "train.local_epochs=1", "num_rounds=1", f"init_weights={howto}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    start = [r for r in read_metrics(run) if r["phase"] == "centralized" and r["round"] == 0][0]
    expected = [r for r in read_metrics(source) if r["phase"] == "centralized" and r["round"] == 4][0]
    assert start["accuracy"] == expected["accuracy"]
