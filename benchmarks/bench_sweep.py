"""Case 6 — sweep: 12 tiny jobs as one Hydra multirun vs 12 separate invocations.

Tiny job: the default experiment with ``num_rounds=1 train.local_epochs=1`` and seeds
0..11. Arms (whole-process wall time, each in a fresh temp dir):

- ``multirun``: ``python -m runner -m seed=0,1,...,11 ...`` with ``backend.reuse_workers``
  on (the default: Ray and the warm actor pool are kept between the jobs of the process);
- ``multirun_no_reuse``: the same with ``backend.reuse_workers=false`` (Ray restarted per job);
- ``separate``: 12 invocations ``python -m runner seed=i ...`` one after the other.

Figures: multirun / separate (target < 1.0) and multirun_no_reuse / separate.

    python benchmarks/bench_sweep.py [--quick] [--jobs 12] [--pairs N] [--out FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402

CASE = "sweep"
TARGET = "< 1.0"
TINY = ["num_rounds=1", "train.local_epochs=1", "progress=log"]
QUICK_EXTRA: list[str] = []


def multirun(jobs: int, reuse: bool) -> dict[str, float]:
    with c.Workdir("bench-sweep-") as cwd:
        seeds = ",".join(str(i) for i in range(jobs))
        r = c.run_timed(
            c.runner_cmd("-m", f"seed={seeds}", *TINY, *QUICK_EXTRA, f"backend.reuse_workers={str(reuse).lower()}"),
            cwd,
            timeout=1800,
        ).check()
        done = len(list((cwd / "multirun").glob("*/*/*/summary.json")))
        if done != jobs:
            raise RuntimeError(f"multirun finished {done} of {jobs} jobs")
        return {"wall_s": r.wall_s, "cpu_s": r.cpu_s}


def separate(jobs: int) -> dict[str, float]:
    wall = cpu = 0.0
    with c.Workdir("bench-sweep-") as cwd:
        for i in range(jobs):
            r = c.run_timed(c.runner_cmd(f"seed={i}", *TINY, *QUICK_EXTRA), cwd).check()
            wall += r.wall_s
            cpu += r.cpu_s
    return {"wall_s": wall, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> dict:
    ap = c.case_args(__doc__.splitlines()[0], pairs_default=1)
    ap.add_argument("--jobs", type=int, default=None, help="jobs per sweep (default 12; quick: 1)")
    a = ap.parse_args(argv)
    jobs = a.jobs or (1 if a.quick else 12)  # quick: two Ray starts in a row, like the other cases
    pairs = a.pairs or 1
    if a.quick:
        QUICK_EXTRA.extend(["num_clients=2", *c.QUICK_RUNNER])
    res = c.new_result(CASE, a.quick, {"jobs": jobs, "overrides": TINY + QUICK_EXTRA, "pairs": pairs})
    c.log(f"[{CASE}] {jobs} jobs: multirun (reuse on / off) vs separate invocations, {pairs} repetition(s)")
    arms = {
        "multirun": lambda: multirun(jobs, True),
        "separate": lambda: separate(jobs),
        "multirun_no_reuse": lambda: multirun(jobs, False),
    }
    if a.quick:  # the same function with reuse off; saves two Ray starts in CI
        del arms["multirun_no_reuse"]
    runs = c.paired(arms, pairs, c.log)
    for arm, name in (
        ("multirun", "multirun_over_separate_wall"),
        ("multirun_no_reuse", "multirun_no_reuse_over_separate_wall"),
    ):
        if arm not in runs:
            continue
        ratio = c.ratio_figure(runs[arm], runs["separate"], "wall_s")
        c.figure(res, name, ratio["median"], TARGET, "ratio", pairs=ratio["pairs"])
    for arm in runs:
        c.figure(res, f"{arm}_wall_s", c.median(r["wall_s"] for r in runs[arm]), None, "s")
        c.figure(res, f"{arm}_per_job_s", c.median(r["wall_s"] for r in runs[arm]) / jobs, None, "s")
    res["runs"] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
