import csv
import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from runner.report.summary import (
    CSV_COLUMNS,
    collect_sweep,
    comparison_phase,
    job_dirs,
    summarize_sweep,
)
from tests.report_fixtures import make_rows, write_run

STRATEGIES = ("fedavg", "fedadam")
SEEDS = (0, 1)


def expected_from_file(job_dir: Path) -> dict:
    """What the summary must say, recomputed straight from the job's metrics.jsonl."""
    by = {}
    for line in (job_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue  # torn tail
        by[(row["phase"], row["round"])] = row
    out = {}
    for phase in ("centralized", "evaluate", "train"):
        rounds = sorted(r for p, r in by if p == phase)
        for metric in ("accuracy", "loss"):
            vals = [(r, by[(phase, r)][metric]) for r in rounds if metric in by[(phase, r)]]
            if vals:
                out[f"final_{phase}_{metric}"] = vals[-1][1]
    acc = [(r, by[("centralized", r)]["accuracy"]) for r in sorted(r for p, r in by if p == "centralized")]
    finite = [(r, v) for r, v in acc if not math.isnan(v)]
    best_r, best_v = max(finite, key=lambda rv: (rv[1], -rv[0]))
    out["best_monitored"], out["best_round"] = best_v, best_r
    out["final_monitored"] = acc[-1][1]
    out["rounds_done"] = max(r for _, r in by)
    return out


def make_sweep(root: Path, *, failed: str = "summary") -> Path:
    """2 strategies x 2 seeds; job 3 failed (``summary``: summary.json says failed,
    ``nosummary``: crashed hard, metrics but no summary.json)."""
    sweep = root / "multirun" / "2026-11-24" / "10-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for strategy in STRATEGIES:
        for seed in SEEDS:
            overrides = [f"strategy={strategy}", f"seed={seed}", "num_rounds=4"]
            rows = make_rows(4, seed=job, nan=[("evaluate", 2, "loss")])
            d = sweep / str(job)
            ck = {"last": str(d / "checkpoints" / "round-0004.npz"), "best": str(d / "checkpoints" / "round-0004.npz")}
            if job == 3:
                rows = rows[:7]  # died during round 2
                if failed == "summary":
                    write_run(
                        d,
                        rows,
                        overrides=overrides,
                        status="failed",
                        num_rounds=4,
                        error="RuntimeError: client 3 raised: loss is NaN\n  traceback...",
                    )
                else:
                    write_run(d, rows, overrides=overrides, summary=None)
            else:
                write_run(
                    d,
                    rows,
                    overrides=overrides,
                    num_rounds=4,
                    checkpoints=ck,
                    wall_time_s=10.0 + job,
                    resumed_from=str(root / "outputs/x") if job == 1 else None,
                )
            job += 1
    return sweep


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("failed", ["summary", "nosummary"])
def test_sweep_summary_matches_each_jobs_metrics(tmp_path, failed):
    sweep = make_sweep(tmp_path, failed=failed)
    csv_path = summarize_sweep(sweep)
    assert csv_path == sweep / "summary.csv"
    rows = read_csv(csv_path)
    # one column per swept override key (num_rounds is the same in every job), after overrides
    assert list(rows[0]) == [*CSV_COLUMNS[:2], "strategy", "seed", *CSV_COLUMNS[2:]]
    assert [(r["strategy"], r["seed"]) for r in rows] == [(s, str(seed)) for s in STRATEGIES for seed in SEEDS]
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [r["overrides"] for r in rows] == [
        f"strategy={s} seed={seed} num_rounds=4" for s in STRATEGIES for seed in SEEDS
    ]
    for r in rows:
        exp = expected_from_file(sweep / r["job"])
        for key, value in exp.items():
            got = float(r[key]) if key not in ("rounds_done", "best_round") else int(r[key])
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got), (r["job"], key)
            else:
                assert got == value, (r["job"], key, got, value)
        assert r["monitor"] == "centralized_accuracy" and r["mode"] == "max"
    assert [r["status"] for r in rows] == ["completed"] * 3 + ["failed"]
    assert rows[1]["resumed_from"].endswith("outputs/x")
    assert rows[0]["wall_time_s"] == "10.0"
    assert rows[0]["last_checkpoint"].endswith("0/checkpoints/round-0004.npz")
    assert rows[0]["error"] == ""
    if failed == "summary":
        assert rows[3]["error"] == "RuntimeError: client 3 raised: loss is NaN"
        assert rows[3]["num_rounds"] == "4"
    else:
        assert "no summary.json" in rows[3]["error"]
    assert rows[3]["rounds_done"] == "2"

    md = (sweep / "summary.md").read_text()
    assert md.count("\n| ") == 5  # header + 4 jobs
    assert "**failed**" in md and "## Failed jobs" in md
    assert rows[3]["error"] in md
    assert "`strategy=fedadam seed=1 num_rounds=4`" in md
    with Image.open(sweep / "comparison.png") as im:
        assert im.size[0] >= 400 and im.size[1] >= 300
        assert len(im.convert("RGB").getcolors(1_000_000)) > 10
    assert not [n for n in os.listdir(sweep) if n.endswith(".tmp")]


def test_job_dirs_sorted_numerically_and_non_jobs_ignored(tmp_path):
    for n in (10, 2, 1):
        write_run(tmp_path / str(n), make_rows(1))
    (tmp_path / "notes").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "summary.csv").write_text("")
    assert [d.name for d in job_dirs(tmp_path)] == ["1", "2", "10"]
    summarize_sweep(tmp_path)
    assert [r["job"] for r in read_csv(tmp_path / "summary.csv")] == ["1", "2", "10"]


def test_status_unknown_running_and_killed(tmp_path):
    (tmp_path / "0").mkdir()  # nothing at all yet
    write_run(tmp_path / "1", make_rows(1), summary=None)
    (tmp_path / "1" / "hydra_job.json").write_text(json.dumps({"status": "running", "pid": os.getpid(), "host": None}))
    write_run(tmp_path / "2", make_rows(1), summary=None)
    (tmp_path / "2" / "hydra_job.json").write_text(
        json.dumps({"status": "running", "pid": 2**22 + 12345})
    )  # no such process
    write_run(tmp_path / "3", make_rows(1))  # summary.json says completed ...
    (tmp_path / "3" / "hydra_job.json").write_text(
        json.dumps({"status": "failed", "error": "ValueError: raised after the summary"})
    )
    records = collect_sweep(tmp_path)
    assert [r.status for r in records] == ["unknown", "running", "failed", "failed"]
    assert "killed" in records[2].error
    assert records[3].error == "ValueError: raised after the summary"


def test_monitor_from_run_config_and_summary_fallback(tmp_path):
    rows = make_rows(3)
    write_run(tmp_path / "0", rows, summary=None, config={"checkpoint": {"monitor": "centralized_loss", "mode": "min"}})
    # already-complete resume: no metric rows in this dir, the numbers come from summary.json
    write_run(
        tmp_path / "1",
        None,
        status="already_complete",
        num_rounds=3,
        summary={
            "status": "already_complete",
            "num_rounds": 3,
            "rounds_done": 3,
            "wall_time_s": 0.5,
            "final": {"centralized_accuracy": 0.9},
            "best": {"metric": "centralized_accuracy", "mode": "max", "value": 0.91, "round": 2},
            "resumed_from": "/x",
            "checkpoints": {"last": None, "best": None},
            "error": None,
            "overrides": ["resume=latest"],
        },
    )
    r0, r1 = collect_sweep(tmp_path)
    assert (r0.monitor, r0.mode) == ("centralized_loss", "min")
    losses = [r["loss"] for r in rows if r["phase"] == "centralized"]
    assert r0.best_monitored == min(losses) and r0.final_monitored == losses[-1]
    assert r1.status == "already_complete"
    assert (r1.final_monitored, r1.best_monitored, r1.best_round) == (0.9, 0.91, 2)
    assert r1.rounds_done == 3 and r1.resumed_from == "/x"
    summarize_sweep(tmp_path)
    md = (tmp_path / "summary.md").read_text()
    assert "| monitor |" in md  # jobs monitor different metrics


def test_comparison_falls_back_to_federated_accuracy(tmp_path):
    write_run(tmp_path / "0", make_rows(3, phases=("train", "evaluate")))
    write_run(tmp_path / "1", make_rows(3, phases=("train", "evaluate"), seed=1))
    records = collect_sweep(tmp_path)
    assert comparison_phase(records) == "evaluate"
    summarize_sweep(tmp_path)
    with Image.open(tmp_path / "comparison.png") as im:
        assert len(im.convert("RGB").getcolors(1_000_000)) > 10
    write_run(tmp_path / "2", make_rows(3, seed=2))
    assert comparison_phase(collect_sweep(tmp_path)) == "centralized"


def test_empty_sweep_dir_still_gets_a_summary(tmp_path):
    (tmp_path / "multirun.yaml").write_text("{}\n")
    summarize_sweep(tmp_path)
    assert read_csv(tmp_path / "summary.csv") == []
    assert (tmp_path / "comparison.png").is_file()
    assert "0 job(s)" in (tmp_path / "summary.md").read_text()
