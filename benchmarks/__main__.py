"""``python -m benchmarks``: run every benchmark case, write JSON results, regenerate BENCHMARKS.md.

    python -m benchmarks                 # full runs (~20 min on 2 cores), then BENCHMARKS.md
    python -m benchmarks --quick         # smoke test of every script (< 2 min; CI)
    python -m benchmarks --only overhead,resume

Cases (each also runs alone: ``python benchmarks/bench_<case>.py [--quick]``):
overhead, floor, rounds, checkpoint_io (benchmarks/bench_checkpoint_io.py), resume, scale, sweep,
engines (full runs only: ``--quick --only engines`` for its smoke mode), client_state, algorithms (the
learning check of the algorithm zoo: ``--only algorithms``, ~45 jobs), lean (issue 20: start-up, memory,
1,000 clients and one client process, before / after).
Full runs go one after another (timings), into benchmarks/results/<case>.json; quick runs
go all at once into <case>-quick.json and never touch BENCHMARKS.md unless --report says
where to write.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import common as c
from benchmarks.report import write_report

CASES = [
    "overhead", "floor", "rounds", "checkpoint_io", "resume", "scale", "sweep", "engines", "client_state", "algorithms",
    "lean",
]  # fmt: skip
# engines starts a loopback Flower federation (a process per client message): too heavy to run
# next to the other quick cases in CI; tests/test_deployment.py covers the deployment engine, and
# `python -m benchmarks --quick --only engines` runs its smoke mode alone.
NOT_IN_QUICK = {"engines"}
QUICK_ORDER = [  # longest first
    "engines", "client_state", "lean", "algorithms", "sweep", "scale", "floor", "rounds", "resume", "overhead",
    "checkpoint_io",
]  # fmt: skip
SCRIPTS = {case: c.BENCH_DIR / f"bench_{case}.py" for case in CASES}


def run_case(case: str, quick: bool, results: Path) -> tuple[str, int, float, str]:
    out = results / f"{case}{'-quick' if quick else ''}.json"
    script = SCRIPTS[case]
    if not script.exists():
        out.write_text(
            json.dumps(
                {
                    "case": case,
                    "quick": quick,
                    "missing": True,
                    "note": f"{script.relative_to(c.ROOT)} does not exist yet",
                }
            )
            + "\n"
        )
        return case, 0, 0.0, f"{script.name} missing: wrote a 'missing' note\n"
    t = time.monotonic()
    p = subprocess.run(
        [c.PY, str(script), *(["--quick"] if quick else []), "--out", str(out)],
        cwd=c.ROOT,
        env=c.bench_env(),
        capture_output=True,
        text=True,
    )
    return case, p.returncode, time.monotonic() - t, p.stdout + p.stderr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, one repetition, cases concurrently (CI)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--results-dir", type=Path, default=c.RESULTS_DIR)
    ap.add_argument(
        "--report",
        type=Path,
        default=None,
        help="where to write the report (default: BENCHMARKS.md for full runs, none for --quick)",
    )
    ap.add_argument("--jobs", type=int, default=None, help="cases at a time (default 1; all with --quick)")
    a = ap.parse_args(argv)
    default = [k for k in CASES if not (a.quick and k in NOT_IN_QUICK)]
    cases = [x for x in (a.only.split(",") if a.only else default) if x]
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    a.results_dir.mkdir(parents=True, exist_ok=True)
    jobs = a.jobs or (len(cases) if a.quick else 1)
    if a.quick:
        cases = sorted(cases, key=QUICK_ORDER.index)
    t0 = time.monotonic()
    failed = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for case, rc, secs, output in pool.map(lambda k: run_case(k, a.quick, a.results_dir), cases):
            print(f"== {case}: rc={rc} in {secs:.0f}s", flush=True)
            print(output.rstrip(), flush=True)
            if rc != 0:
                failed.append(case)
    print(f"== all cases in {time.monotonic() - t0:.0f}s; failed: {failed or 'none'}", flush=True)
    report = a.report or (None if a.quick else c.ROOT / "BENCHMARKS.md")
    if report is not None:
        write_report(a.results_dir, report, quick=a.quick)
        print(f"wrote {report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
