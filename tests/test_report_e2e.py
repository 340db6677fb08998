"""End to end: real `python -m runner -m ...` sweeps, then the report on their files.

Each sweep is one process (the basic launcher runs jobs in it one after another and
the core keeps Ray up between them), so a sweep pays Ray's start-up once.
"""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_runner(cwd: Path, *args: str, timeout: int = 420, data_root: Path | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "HYDRA_FULL_ERROR": "0",
    }
    env.pop("RUNNER_DATA", None)
    if data_root is not None:
        env["RUNNER_DATA"] = str(data_root)  # root of the torchvision datasets
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def metrics_of(job_dir: Path) -> list[dict]:
    return [json.loads(s) for s in (job_dir / "metrics.jsonl").read_text().splitlines() if s]


def assert_row_matches_metrics(row: dict, job_dir: Path) -> None:
    rows = metrics_of(job_dir)
    for phase in ("centralized", "evaluate", "train"):
        for metric in ("accuracy", "loss"):
            vals = [r[metric] for r in rows if r["phase"] == phase and metric in r]
            if not vals:
                continue
            got = float(row[f"final_{phase}_{metric}"])
            assert got == vals[-1] or (math.isnan(got) and math.isnan(vals[-1])), (job_dir, phase, metric)
    cen = [r["accuracy"] for r in rows if r["phase"] == "centralized"]
    assert float(row["final_monitored"]) == cen[-1]
    assert float(row["best_monitored"]) == max(v for v in cen if not math.isnan(v))
    assert int(row["rounds_done"]) == max(r["round"] for r in rows)


def assert_real_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.size[0] >= 400 and im.size[1] >= 300
        assert len(im.convert("RGB").getcolors(1_000_000)) > 10


def test_sweep_2_strategies_x_2_seeds(tmp_path):
    sweep = tmp_path / "sweep"
    r = run_runner(tmp_path, "-m", "strategy=fedavg,fedadam", "seed=0,1", "num_rounds=2", f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    rows = read_csv(sweep / "summary.csv")
    assert [x["job"] for x in rows] == ["0", "1", "2", "3"]
    assert [x["overrides"] for x in rows] == [
        f"strategy={s} seed={seed} num_rounds=2" for s in ("fedavg", "fedadam") for seed in (0, 1)
    ]
    for x in rows:
        job_dir = sweep / x["job"]
        assert x["status"] == "completed"
        assert json.loads((job_dir / "summary.json").read_text())["status"] == "completed"
        assert_row_matches_metrics(x, job_dir)
        assert x["rounds_done"] == x["num_rounds"] == "2"
        for name in ("loss.png", "accuracy.png"):
            assert_real_png(job_dir / "plots" / name)
        assert float(x["wall_time_s"]) > 0
    assert_real_png(sweep / "comparison.png")
    md = (sweep / "summary.md").read_text()
    assert md.count("\n| ") == 5 and "4 completed" in md

    # rebuilding from disk gives the same table
    before = (sweep / "summary.csv").read_text()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rb = subprocess.run(
        [sys.executable, "-m", "runner.report", str(sweep)], env=env, capture_output=True, text=True, timeout=120
    )
    assert rb.returncode == 0, rb.stderr
    assert (sweep / "summary.csv").read_text() == before


def test_sweep_with_a_failing_job(tmp_path):
    # mnist is read from local files only (download: false); an empty data root makes
    # that job fail at run time, after Hydra composed it fine
    (tmp_path / "nodata").mkdir()
    sweep = tmp_path / "sweep"
    r = run_runner(
        tmp_path,
        "-m",
        "dataset=digits,mnist,digits",
        "seed=0",
        "num_rounds=1",
        f"hydra.sweep.dir={sweep}",
        data_root=tmp_path / "nodata",
    )
    assert r.returncode != 0, r.stdout[-3000:] + r.stderr[-3000:]

    rows = read_csv(sweep / "summary.csv")
    # the job after the failed one ran too (Hydra's basic launcher runs the whole batch)
    assert [(x["job"], x["overrides"].split()[0], x["status"]) for x in rows] == [
        ("0", "dataset=digits", "completed"),
        ("1", "dataset=mnist", "failed"),
        ("2", "dataset=digits", "completed"),
    ]
    assert rows[1]["error"].startswith("DatasetNotFound: ")
    assert rows[1]["rounds_done"] in ("", "0")
    for job in (0, 2):
        assert_row_matches_metrics(rows[job], sweep / str(job))
    md = (sweep / "summary.md").read_text()
    assert "**failed**" in md and "## Failed jobs" in md
    assert_real_png(sweep / "comparison.png")
