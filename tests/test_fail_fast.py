"""Settings that cannot run fail fast and clearly (issue 11): one line naming the key,
exit 2, no traceback, well under a minute, before the config tree, and nothing an earlier
run left on disk changes."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from tests.helpers import run_cli


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


CASES = [
    (["backend.client_resources.num_gpus=1"], "backend.client_resources.num_gpus"),
    (["backend.client_resources.num_cpus=64"], "backend.client_resources.num_cpus"),
    (["device=cuda"], "device"),
    (["num_clients=2000"], "num_clients"),
    (["partitioner=pathological", "partitioner.num_classes_per_partition=11"], "partitioner.num_classes_per_partition"),
    (["partitioner=dirichlet", "partitioner.alpha=0.01", "num_clients=50"], "partitioner.alpha"),
    (["checkpoint.monitor=nosuch_metric"], "checkpoint.monitor"),
    (["resume=outputs/no/such/run"], "outputs/no/such/run"),
    (["dataset=mnist", "dataset.root=/nonexistent-data"], "MNIST/raw"),
]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A launch dir holding an earlier run's files (they must never change)."""
    cwd = tmp_path_factory.mktemp("launch")
    old = cwd / "outputs" / "2026-01-01" / "00-00-00"
    (old / "checkpoints").mkdir(parents=True)
    (old / "metrics.jsonl").write_text('{"round": 0, "phase": "centralized", "loss": 2.3, "accuracy": 0.1}\n')
    (old / "summary.json").write_text('{"status": "completed"}\n')
    (old / "checkpoints" / "last.json").write_text('{"round": 1, "manifest": "round-0001.json"}\n')
    return cwd


@pytest.mark.parametrize("args, needle", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_what_cannot_run_is_one_line_and_exit_2(earlier_run: Path, args: list[str], needle: str):
    before = _snapshot(earlier_run / "outputs" / "2026-01-01")
    t0 = time.monotonic()
    proc = run_cli(args, cwd=earlier_run, timeout=60)
    elapsed = time.monotonic() - t0
    console = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(console) <= 3, console
    assert "Traceback" not in proc.stdout + proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and needle in err[0], proc.stderr
    assert "config" not in proc.stdout.splitlines()[0:1], "the config tree must not come before the error"
    assert elapsed < 60
    assert _snapshot(earlier_run / "outputs" / "2026-01-01") == before
    if needle == "checkpoint.monitor":
        assert "centralized_accuracy" in err[0] and "train_loss" in err[0]  # lists what is available
