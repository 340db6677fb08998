"""Where a runner process spends its wall time, from runner.log and metrics.jsonl.

runner.log time stamps (ms) are on the same clock as the harness's ``time.time()`` at
process start, so the log splits the whole-process wall time into segments:

- ``startup_to_run_dir``: interpreter, imports, Hydra compose, validation, model/strategy
  build, resume resolution (up to the "run dir" line);
- ``setup_to_engine``: the server's model and test split (data loading) and the checkpoint
  writer, up to the round loop's construction, just before the engine starts (located as
  the first ``configure_train`` time stamp minus the round-0 row's ``elapsed_s``);
- ``engine_start``: Ray start, actor pool, node discovery query, round-0 centralized
  evaluation (the round-0 row's ``elapsed_s``);
- ``first_round``: first ``configure_train`` to the end of round 1 (progress line): includes
  the actors' first data load and first training;
- ``later_rounds``: the other rounds (and ``per_round_median``);
- ``finish``: last round to the "completed" line: engine stop, final checkpoint write,
  summary, plots;
- ``exit``: "completed" line to process exit: Ray shutdown at exit, interpreter teardown.

metrics.jsonl ``elapsed_s`` (seconds since the round loop was built) splits rounds into
train / federated evaluate / centralized evaluate phases.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from benchmarks.common import ProcResult, median, read_jsonl, read_log

ROUND_RX = re.compile(r"round (\d+)/(\d+)")


def runner_timeline(r: ProcResult, run_dir: Path) -> dict[str, Any]:
    entries = read_log(run_dir / "runner.log")
    t0 = r.t0_epoch
    end = t0 + r.wall_s

    def first(logger: str | None, pattern: str) -> float | None:
        rx = re.compile(pattern)
        for ts, lg, msg in entries:
            if (logger is None or lg == logger) and rx.search(msg):
                return ts
        return None

    run_dir_t = first("runner", r"^run dir ")
    cfg_train_t = first("flwr", r"configure_train")
    rows = read_jsonl(run_dir / "metrics.jsonl")
    e0 = float(rows[0]["elapsed_s"]) if rows else None
    engine_t = cfg_train_t - e0 if cfg_train_t is not None and e0 is not None else None
    completed_t = first("runner", r"^(completed|stopped|failed): ")
    rounds = [
        (ts, int(ROUND_RX.search(msg).group(1))) for ts, lg, msg in entries if lg == "runner" and ROUND_RX.match(msg)
    ]
    seg: dict[str, Any] = {}
    if run_dir_t and engine_t and cfg_train_t and rounds and completed_t:
        seg["startup_to_run_dir"] = run_dir_t - t0
        seg["setup_to_engine"] = engine_t - run_dir_t
        seg["engine_start"] = cfg_train_t - engine_t
        seg["first_round"] = rounds[0][0] - cfg_train_t
        gaps = [b[0] - a[0] for a, b in zip(rounds, rounds[1:], strict=False)]
        seg["later_rounds"] = sum(gaps)
        seg["finish"] = completed_t - rounds[-1][0]
        seg["exit"] = end - completed_t
        seg = {k: round(v, 3) for k, v in seg.items()}
        seg["per_round_median"] = round(median(gaps), 3) if gaps else None
    seg["phases"] = phase_split(run_dir / "metrics.jsonl")
    return seg


def phase_split(metrics: Path) -> dict[str, float]:
    """Seconds in train / evaluate / centralized phases (all rounds) from elapsed_s."""
    rows = read_jsonl(metrics)
    out = {"round0_centralized_at": 0.0, "train": 0.0, "evaluate": 0.0, "centralized": 0.0, "between_rounds": 0.0}
    prev = None
    for row in rows:
        t = float(row["elapsed_s"])
        if prev is None:
            out["round0_centralized_at"] = t
        else:
            key = row["phase"] if row["phase"] in out else "between_rounds"
            if row["phase"] == "train" and prev is not None:
                out["train"] += t - prev
            elif row["phase"] in ("evaluate", "centralized"):
                out[row["phase"]] += t - prev
            else:
                out[key] += t - prev
        prev = t
    return {k: round(v, 3) for k, v in out.items()}
