"""Before / after the runner's performance fixes, paired in one invocation.

"Before" is the current tree with ``--paths`` (default: runner/engine and conf/engine) as
they were at ``--before-rev``; it runs from a temp copy of the tree
(``benchmarks.common.before_tree``). "After" is the working tree. Measured:
the default run (pairs) and 1000 clients with all sampled, 3 rounds (one pair). Writes
benchmarks/results/fixes.json, which BENCHMARKS.md shows as "Before / after".

    python -m benchmarks.bench_fixes [--before-rev cac80c1] [--paths runner/engine,conf/engine] [--pairs 3] [--quick]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402


def arm(root: Path | None, overrides: list[str], timeout: float = 1500) -> dict[str, float]:
    env = c.runner_env(root)
    with c.Workdir("bench-fixes-") as cwd:
        r = c.run_timed(c.runner_cmd("progress=log", *overrides), cwd, env=env, timeout=timeout).check()
        run_dir = c.run_dirs(cwd / "outputs")[0]
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = c.read_jsonl(run_dir / "metrics.jsonl")
        return {
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,
            "time_to_first_round_s": float(summary["time_to_first_round_s"]),
            "final_accuracy": [x["accuracy"] for x in rows if x["phase"] == "centralized"][-1],
        }


def main(argv: list[str] | None = None) -> dict:
    ap = c.case_args(__doc__.splitlines()[0], pairs_default=3)
    ap.add_argument("--before-rev", default=c.BEFORE_REV, help="git revision holding the files before the fixes")
    ap.add_argument("--paths", default=",".join(c.BEFORE_PATHS), help="comma-separated paths taken from --before-rev")
    a = ap.parse_args(argv)
    pairs = a.pairs or (1 if a.quick else 3)
    paths = [p for p in a.paths.split(",") if p]
    root = c.before_tree(a.before_rev, paths)
    res = c.new_result("fixes", a.quick, {"before_rev": a.before_rev, "files": paths, "pairs": pairs})
    default = ["num_rounds=1", "num_clients=2", "train.local_epochs=1"] if a.quick else []
    big = [
        "num_clients=20" if a.quick else "num_clients=1000",
        "num_rounds=1" if a.quick else "num_rounds=3",
        "strategy.fraction_train=1.0",
        "strategy.fraction_evaluate=1.0",
    ]
    comps: dict[str, dict] = {}
    try:
        big_name = "20 clients, all sampled, 1 round" if a.quick else "1000 clients, all sampled, 3 rounds"
        for name, overrides, n in (("default run", default, pairs), (big_name, big, 1)):
            c.log(f"[fixes] {name}: before vs after, {n} pair(s)")
            runs = c.paired(
                {"before": lambda o=overrides: arm(root, o), "after": lambda o=overrides: arm(None, o)}, n, c.log
            )
            if any(
                b["final_accuracy"] != x["final_accuracy"] for b, x in zip(runs["before"], runs["after"], strict=True)
            ):
                raise RuntimeError(f"{name}: results differ before/after the fixes")
            for key in ("wall_s", "time_to_first_round_s", "cpu_s"):
                ratio = c.ratio_figure(runs["after"], runs["before"], key)
                comps[f"{name}: {key}"] = {
                    "before": round(c.median(r[key] for r in runs["before"]), 3),
                    "after": round(c.median(r[key] for r in runs["after"]), 3),
                    "ratio": ratio["median"],
                    "pairs": ratio["pairs"],
                }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["comparisons"] = comps
    res["notes"].append("final centralized accuracy identical before and after in every pair")
    out = a.out or c.RESULTS_DIR / f"fixes{'-quick' if a.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    res["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(res, indent=1) + "\n")
    for k, v in comps.items():
        print(f"  {k}: before {v['before']} after {v['after']} ratio {v['ratio']}")
    print(f"wrote {out}")
    return res


if __name__ == "__main__":
    main()
