"""SweepSummaryCallback driven through a real (tiny) Hydra app in a subprocess."""

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.report.callback import SweepSummaryCallback

REPO = Path(__file__).resolve().parents[1]

APP = textwrap.dedent("""
    import json
    import math
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig


    @hydra.main(version_base="1.3", config_path="conf", config_name="config")
    def main(cfg):
        out = Path(HydraConfig.get().runtime.output_dir)
        with open(out / "metrics.jsonl", "w") as f:
            f.write(json.dumps({"round": 0, "phase": "centralized", "loss": 2.3,
                                "accuracy": 0.1, "elapsed_s": 0.01}) + "\\n")
            for r in range(1, cfg.num_rounds + 1):
                acc = 0.1 * cfg.x + 0.2 * r
                f.write(json.dumps({"round": r, "phase": "train", "loss": 1.0 / r,
                                    "accuracy": acc, "num_replies": 2, "num_failures": 0,
                                    "elapsed_s": 0.01}) + "\\n")
                f.write(json.dumps({"round": r, "phase": "centralized", "loss": 1.5 / r,
                                    "accuracy": acc - 0.05, "elapsed_s": 0.01}) + "\\n")
                if cfg.x == 2 and r == 2:
                    raise RuntimeError("boom: x=2 diverged in round 2")
        (out / "summary.json").write_text(json.dumps({
            "status": "completed", "num_rounds": cfg.num_rounds,
            "rounds_done": cfg.num_rounds, "wall_time_s": 0.1, "final": {}, "best": None,
            "resumed_from": None, "checkpoints": {"last": None, "best": None},
            "error": None, "overrides": []}))
        return 0.0


    if __name__ == "__main__":
        main()
""")

CONFIG = textwrap.dedent("""
    x: 1
    num_rounds: 3
    hydra:
      callbacks:
        sweep_summary:
          _target_: runner.report.callback.SweepSummaryCallback
""")


@pytest.fixture
def app(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def run_app(app: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "app.py", *args], cwd=app, env=env, capture_output=True, text=True, timeout=180
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_sweep(sweep: Path) -> list[dict]:
    rows = read_csv(sweep / "summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["overrides"] for r in rows] == ["x=1", "x=2", "x=3"]
    assert [r["status"] for r in rows] == ["completed", "failed", "completed"]
    assert rows[1]["error"] == "RuntimeError: boom: x=2 diverged in round 2"
    assert rows[1]["rounds_done"] == "2"
    # numbers are those of each job's own metrics file
    for r in rows:
        lines = (sweep / r["job"] / "metrics.jsonl").read_text().splitlines()
        cen = [json.loads(s) for s in lines if '"centralized"' in s]
        assert float(r["final_centralized_accuracy"]) == cen[-1]["accuracy"]
        assert float(r["best_monitored"]) == max(c["accuracy"] for c in cen)
        assert (sweep / r["job"] / "plots" / "accuracy.png").is_file()
        assert json.loads((sweep / r["job"] / "hydra_job.json").read_text())["status"] == r["status"]
    md = (sweep / "summary.md").read_text()
    assert "**failed**" in md and "boom: x=2 diverged" in md
    assert (sweep / "comparison.png").stat().st_size > 5000
    return rows


def test_failed_job_still_gets_summary_basic_launcher(app):
    sweep = app / "sweep"
    r = run_app(app, "-m", "x=1,2,3", f"hydra.sweep.dir={sweep}")
    assert r.returncode != 0, r.stdout + r.stderr
    assert "boom" in r.stderr
    check_sweep(sweep)


def test_joblib_launcher_summary_is_complete(app):
    sweep = app / "sweep_joblib"
    r = run_app(app, "-m", "x=1,2,3", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}")
    assert r.returncode != 0, r.stdout + r.stderr
    check_sweep(sweep)


def test_successful_sweep_relative_sweep_dir_and_chdir(app):
    # relative sweep dir + chdir=True: on_job_end runs with cwd = the job dir
    r = run_app(app, "-m", "x=1,3", "hydra.sweep.dir=rel/sweep", "hydra.job.chdir=true")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = read_csv(app / "rel" / "sweep" / "summary.csv")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert not (app / "rel" / "sweep" / "0" / "rel").exists()


def test_single_run_is_left_alone(app):
    r = run_app(app, "x=3", "hydra.run.dir=single")
    assert r.returncode == 0, r.stderr
    assert (app / "single" / "metrics.jsonl").is_file()
    assert not (app / "single" / "hydra_job.json").exists()
    assert not (app / "single" / "summary.csv").exists()
    assert not (app / "single" / "plots").exists()


def _job_config(job_dir: Path, mode: str = "MULTIRUN"):
    from hydra.types import RunMode

    return OmegaConf.create(
        {
            "hydra": {
                "mode": RunMode[mode],
                "runtime": {"output_dir": str(job_dir)},
                "sweep": {"dir": str(job_dir.parent), "subdir": job_dir.name},
            }
        }
    )


def test_summary_errors_never_fail_the_job(tmp_path, monkeypatch, caplog):
    import runner.report.summary as summary

    def broken(_):
        raise OSError("disk full")

    monkeypatch.setattr(summary, "summarize_sweep", broken)
    job_dir = tmp_path / "0"
    job_dir.mkdir()

    class Ret:  # JobReturn stand-in for a failed job
        status = type("S", (), {"name": "FAILED"})()

        @property
        def return_value(self):
            raise ValueError("task failed")

    cb = SweepSummaryCallback()
    with caplog.at_level(logging.WARNING, logger="runner.report.callback"):
        cb.on_job_end(_job_config(job_dir), job_return=Ret())
        cb.on_multirun_end(_job_config(job_dir))
    assert any("disk full" in r.getMessage() for r in caplog.records)
    state = json.loads((job_dir / "hydra_job.json").read_text())
    assert state["status"] == "failed" and state["error"] == "ValueError: task failed"
