"""``python -m runner.report`` rebuilds reports from the files on disk."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.report_fixtures import make_rows, write_run

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "runner.report", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_rebuild_sweep_summary_and_job_plots(tmp_path):
    sweep = tmp_path / "multirun" / "2026-11-24" / "10-00-00"
    for job, strategy in enumerate(["fedavg", "fedadam", "fedprox"]):
        rows = make_rows(3, seed=job)
        if job == 2:
            write_run(
                sweep / str(job), rows[:4], overrides=[f"strategy={strategy}"], summary=None
            )  # killed: metrics but no summary.json
        else:
            write_run(sweep / str(job), rows, overrides=[f"strategy={strategy}"])
    r = cli(sweep)
    assert r.returncode == 0, r.stderr
    assert "3 job(s)" in r.stdout
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(x["job"], x["status"]) for x in rows] == [("0", "completed"), ("1", "completed"), ("2", "failed")]
    for name in ("summary.md", "comparison.png"):
        assert (sweep / name).is_file()
    for job in range(3):
        assert (sweep / str(job) / "plots" / "loss.png").is_file()

    # rebuilding again is fine and idempotent in content
    before = (sweep / "summary.csv").read_text()
    assert cli(sweep, "--no-job-plots").returncode == 0
    assert (sweep / "summary.csv").read_text() == before


def test_rebuild_single_run_plots(tmp_path):
    run = write_run(tmp_path / "outputs" / "2026-11-24" / "10-00-00", make_rows(2))
    r = cli(run)
    assert r.returncode == 0, r.stderr
    assert (run / "plots" / "accuracy.png").is_file()
    assert (run / "plots" / "loss.png").is_file()
    assert not (run / "summary.csv").exists()


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "file"])
def test_bad_path_is_a_one_line_error(tmp_path, kind):
    target = tmp_path / "nothing"
    if kind == "empty_dir":
        target.mkdir()
    elif kind == "file":
        target.write_text("x")
    r = cli(target)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and str(target) in lines[0]
    assert "Traceback" not in r.stderr
