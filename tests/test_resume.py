"""Exact resume: an interrupted + resumed run equals the uninterrupted one, bit for bit.

Every run here is ``python -m runner`` in a subprocess. Sweeps (``-m``) run several
strategies in one process, which is also what a user's preemptible sweep does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, SAMPLED, read_metrics, run_cli, run_dirs

STRATEGIES = ["fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "qfedavg"]
# fraction_train=0.5 of 4 clients: sampling matters; one local epoch keeps it quick.
BASE = ["num_clients=4", "train.local_epochs=1", "progress=log", *SAMPLED]


def _strategy_of(run: Path) -> str:
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    return next(s for s in STRATEGIES if f"strategy={s}\n" in overrides + "\n")


def _final_weights(run: Path, rnd: int = 4) -> dict[str, np.ndarray]:
    return dict(np.load(run / "checkpoints" / f"round-{rnd:04d}.npz"))


def _rows(run: Path, rounds: set[int]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run) if r["round"] in rounds]


def _assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def _sweep(cwd: Path, *args: str, expect_ok: bool = True) -> dict[str, Path]:
    proc = run_cli(["-m", f"strategy={','.join(STRATEGIES)}", *BASE, *args], cwd=cwd, timeout=600)
    if expect_ok:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _by_strategy(root: Path) -> dict[str, Path]:
    """The newest run dir of each strategy under root."""
    out: dict[str, Path] = {}
    for run in run_dirs(root):
        out[_strategy_of(run)] = run
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Uninterrupted 4-round runs of every strategy (fit-phase checkpoints each round)."""
    cwd = tmp_path_factory.mktemp("reference")
    _sweep(cwd, "num_rounds=4")
    runs = _by_strategy(cwd / "multirun")
    assert sorted(runs) == sorted(STRATEGIES)
    return runs


@pytest.mark.parametrize("phase", ["fit", "evaluate"])
def test_stop_then_resume_latest_equals_uninterrupted(tmp_path: Path, reference: dict[str, Path], phase: str):
    _sweep(tmp_path, "num_rounds=4", "stop_after_round=2", f"checkpoint.phase={phase}")
    stopped = _by_strategy(tmp_path / "multirun")
    for run in stopped.values():
        assert json.loads((run / "summary.json").read_text())["status"] == "stopped"
        assert not (run / "checkpoints" / "round-0003.json").exists()
    time.sleep(1.1)  # a new Hydra sweep dir (second resolution)
    _sweep(tmp_path, "num_rounds=4", "resume=latest", f"checkpoint.phase={phase}")
    resumed = {s: r for s, r in _by_strategy(tmp_path / "multirun").items() if r not in stopped.values()}
    assert sorted(resumed) == sorted(STRATEGIES), "each job resumes its own strategy's checkpoint"
    for strategy, run in resumed.items():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["resumed_from"].startswith(str(stopped[strategy])), strategy
        _assert_same_weights(_final_weights(run), _final_weights(reference[strategy]))
        assert _rows(run, {3, 4}) == _rows(reference[strategy], {3, 4}), strategy
        # the resumed run's metrics file covers rounds 1..4, as the uninterrupted one
        assert _rows(run, {0, 1, 2, 3, 4}) == _rows(reference[strategy], {0, 1, 2, 3, 4}), strategy
        manifest = json.loads((run / "checkpoints" / "round-0004.json").read_text())
        assert manifest["resumed_from"] and manifest["phase"] == phase


def test_two_fresh_runs_are_bitwise_identical(tmp_path: Path, reference: dict[str, Path]):
    proc = run_cli([*BASE, "strategy=fedadam", "num_rounds=4"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    _assert_same_weights(_final_weights(run), _final_weights(reference["fedadam"]))
    assert _rows(run, {0, 1, 2, 3, 4}) == _rows(reference["fedadam"], {0, 1, 2, 3, 4})


def _wait_for(root: Path, pattern: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list(root.glob(pattern)):
        assert proc.poll() is None, "run ended before the expected checkpoint appeared"
        assert time.monotonic() < deadline, f"timed out waiting for {pattern}"
        time.sleep(0.1)


def _popen(cwd: Path, args: list[str], slow_save_from: int | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    # tests/slow_save.py: the runner with saves from that round stalled (a test seam)
    module = ["tests.slow_save", str(slow_save_from)] if slow_save_from else ["runner"]
    return subprocess.Popen(
        [sys.executable, "-m", *module, *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # SIGKILL the whole group: Ray's workers too
    )


@pytest.mark.parametrize("in_flight", [False, True], ids=["after-round-2", "save-in-flight"])
def test_sigkill_then_resume_latest_equals_uninterrupted(tmp_path: Path, reference: dict[str, Path], in_flight: bool):
    args = [*BASE, "strategy=fedavg", "num_rounds=4"]
    # Round 3's save stalls on the writer thread, so the run cannot finish before the kill.
    proc = _popen(tmp_path, args, slow_save_from=3)
    try:
        _wait_for(tmp_path, "outputs/*/*/checkpoints/round-0002.json", proc)
        if in_flight:  # wait until round 3 trained and its save is in flight
            deadline = time.monotonic() + 120
            while not any(
                r["round"] == 3 and r["phase"] == "train" for r in read_metrics(run_dirs(tmp_path / "outputs")[0])
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    (crashed,) = run_dirs(tmp_path / "outputs")
    assert not (crashed / "checkpoints" / "round-0004.json").exists()
    # whatever is on disk verifies: no torn file looks like a checkpoint
    verify = run_cli(["verify", str(crashed / "checkpoints")], cwd=tmp_path, module="runner.ckpt", timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    time.sleep(1.1)
    proc2 = run_cli([*args, "resume=latest"], cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    resumed = [r for r in run_dirs(tmp_path / "outputs") if r != crashed][0]
    _assert_same_weights(_final_weights(resumed), _final_weights(reference["fedavg"]))
    assert _rows(resumed, {3, 4}) == _rows(reference["fedavg"], {3, 4})


def test_resume_latest_without_candidates_warns_and_starts_fresh(tmp_path: Path):
    proc = run_cli([*BASE, "num_rounds=1", "resume=latest"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    log = (run / "runner.log").read_text()
    assert "no compatible checkpoint" in log and "STARTING FRESH" in log
    assert str(tmp_path / "outputs") in log  # says what was searched
    assert json.loads((run / "summary.json").read_text())["resumed_from"] is None


def test_already_complete_exits_zero_and_writes_nothing(tmp_path: Path, reference: dict[str, Path]):
    ref = reference["fedavg"]
    before = sorted(p for p in ref.parent.parent.rglob("*") if p.is_file())
    proc = run_cli([*BASE, "strategy=fedavg", "num_rounds=4", f"resume={ref}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete at round 4" in proc.stdout + proc.stderr
    assert sorted(p for p in ref.parent.parent.rglob("*") if p.is_file()) == before
    assert not list(tmp_path.rglob("checkpoints/*")) and not list(tmp_path.rglob("metrics.jsonl"))


def test_resume_best_picks_the_best_checkpoint(tmp_path: Path, reference: dict[str, Path]):
    ref = reference["fedavg"]
    # Monitor a metric whose best is not the last round: the *highest* centralized loss.
    losses = {r["round"]: r["loss"] for r in read_metrics(ref) if r["phase"] == "centralized" and r["round"] >= 1}
    best_round = max(losses, key=losses.get)
    assert best_round < 4
    link = tmp_path / "multirun"
    link.symlink_to(ref.parent.parent, target_is_directory=True)  # search the reference sweep
    proc = run_cli(
        [
            *BASE,
            "strategy=fedavg",
            "num_rounds=4",
            "resume=best",
            "checkpoint.monitor=centralized_loss",
            "checkpoint.mode=max",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"].endswith(f"round-{best_round:04d}.json")
    _assert_same_weights(_final_weights(run), _final_weights(ref))  # deterministic from there on


def test_resume_from_run_dir_and_from_file(tmp_path: Path, reference: dict[str, Path]):
    ref = reference["fedadam"]
    a = tmp_path / "a"
    a.mkdir()
    proc = run_cli([*BASE, "strategy=fedadam", "num_rounds=5", f"resume={ref}"], cwd=a)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(a / "outputs")
    assert [r["round"] for r in read_metrics(run) if r["phase"] == "train"] == [1, 2, 3, 4, 5]
    assert json.loads((run / "summary.json").read_text())["resumed_from"].endswith("round-0004.json")
    b = tmp_path / "b"
    b.mkdir()
    proc = run_cli(
        [*BASE, "strategy=fedadam", "num_rounds=4", f"resume={ref / 'checkpoints' / 'round-0002.npz'}"], cwd=b
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(b / "outputs")
    _assert_same_weights(_final_weights(run), _final_weights(ref))


def test_resume_path_with_other_architecture_is_a_clear_error(tmp_path: Path, reference: dict[str, Path]):
    proc = run_cli([*BASE, "model=cnn", "num_rounds=5", f"resume={reference['fedavg']}"], cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), proc.stderr
    assert "does not fit the model" in err[0]
    assert "body.1.weight" in err[0] or "features.0.weight" in err[0]  # names the keys
    assert "Traceback" not in proc.stderr


def test_resume_path_with_other_strategy_restores_weights_only(tmp_path: Path, reference: dict[str, Path]):
    """A different config may continue from a path when the weights fit; the log says what
    was and was not restored."""
    proc = run_cli([*BASE, "strategy=fedadam", "num_rounds=5", f"resume={reference['fedavg']}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    log = (run / "runner.log").read_text()
    assert "written by a different config" in log
    assert "not restored (config differs): strategy state, client state, rng, best tracker" in log
    assert [r["round"] for r in read_metrics(run) if r["phase"] == "train"] == [1, 2, 3, 4, 5]
