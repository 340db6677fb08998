"""Case 4 — resume: start → first new round, resumed vs fresh.

Each repetition, in a fresh temp dir: a fresh run of the default experiment with
``stop_after_round=2`` (the fresh measurement: its first round is round 1), then
``resume=latest`` of the same config (continues from the round-2 checkpoint; its first
round is the evaluation the fit-phase checkpoint preceded, then round 3). Figures, medians
of per-repetition ratios resumed / fresh (target <= 1.10 each):

- ``time_to_first_round_s`` from summary.json (run() entry to the end of the first round it
  runs: includes finding, verifying and loading the checkpoint);
- whole-process wall time from launch to the first "round i/N" progress line.

    python benchmarks/bench_resume.py [--quick] [--pairs N] [--out FILE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402

CASE = "resume"
TARGET = "<= 1.10"
PROGRESS = r"round \d+/\d+"


def settings(quick: bool) -> list[str]:
    base = ["progress=log"]
    if quick:
        return [*base, "num_rounds=3", "num_clients=4", "train.local_epochs=1", *c.QUICK_RUNNER]
    return base


def measure(r: c.ProcResult, run_dir: Path) -> dict[str, float]:
    summary = json.loads((run_dir / "summary.json").read_text())
    first_line = r.first_line_at(PROGRESS)
    if first_line is None or summary["time_to_first_round_s"] is None:
        raise RuntimeError(f"no first round in {run_dir}")
    return {
        "time_to_first_round_s": float(summary["time_to_first_round_s"]),
        "wall_to_first_round_line_s": first_line,
        "wall_s": r.wall_s,
    }


def one_pair(overrides: list[str], stop: int, log: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    with c.Workdir("bench-resume-") as cwd:
        r1 = c.run_timed(c.runner_cmd(*overrides, f"stop_after_round={stop}"), cwd).check()
        (d1,) = c.run_dirs(cwd / "outputs")
        fresh = measure(r1, d1)
        r2 = c.run_timed(c.runner_cmd(*overrides, "resume=latest"), cwd).check()
        d2 = [d for d in c.run_dirs(cwd / "outputs") if d != d1][0]
        resumed = measure(r2, d2)
        s2 = json.loads((d2 / "summary.json").read_text())
        if not s2.get("resumed_from") or s2["status"] != "completed":
            raise RuntimeError(f"the second run did not resume and complete: {s2}")
        log.append(
            {
                "resumed_from_round": stop,
                "first_progress_line": next(
                    line.strip() for _, line in r2.lines if __import__("re").search(PROGRESS, line)
                ),
            }
        )
        return fresh, resumed


def main(argv: list[str] | None = None) -> dict:
    a = c.case_args(__doc__.splitlines()[0], pairs_default=3).parse_args(argv)
    pairs = a.pairs or (1 if a.quick else 3)
    overrides = settings(a.quick)
    stop = 1 if a.quick else 2
    res = c.new_result(CASE, a.quick, {"overrides": overrides, "stop_after_round": stop, "pairs": pairs})
    c.log(f"[{CASE}] fresh (stop_after_round={stop}) then resume=latest, {pairs} pairs")
    fresh: list[dict] = []
    resumed: list[dict] = []
    info: list[dict] = []
    for i in range(pairs):
        f, r = one_pair(overrides, stop, info)
        fresh.append(f)
        resumed.append(r)
        c.log(f"  pair {i + 1}/{pairs}: fresh {f}  resumed {r}")
    for key, name in (
        ("time_to_first_round_s", "resumed_over_fresh_time_to_first_round"),
        ("wall_to_first_round_line_s", "resumed_over_fresh_wall_to_first_round_line"),
    ):
        ratio = c.ratio_figure(resumed, fresh, key)
        c.figure(res, name, ratio["median"], TARGET, "ratio", pairs=ratio["pairs"])
    for key in ("time_to_first_round_s", "wall_to_first_round_line_s"):
        c.figure(res, f"fresh_{key}", c.median(x[key] for x in fresh), None, "s")
        c.figure(res, f"resumed_{key}", c.median(x[key] for x in resumed), None, "s")
    res["runs"] = {
        "fresh": {k: c.summary([x[k] for x in fresh]) for k in fresh[0]},
        "resumed": {k: c.summary([x[k] for x in resumed]) for k in resumed[0]},
    }
    res["resumed_runs"] = info
    res["notes"].append(
        "fresh and resumed cannot alternate order: each resumed run continues the fresh run before it,"
        " in the same temp dir"
    )
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
