"""Case 7 — many rounds: per-round latency and the whole run, runner vs the plain-PyTorch floor.

Arms, interleaved (order rotates per repetition), each a whole process in a fresh temp dir:

- ``runner``: ``python -m runner num_rounds=N progress=log`` (defaults otherwise: digits,
  MLP, FedAvg, 10 clients, 5 local epochs, a checkpoint every round);
- ``runner_flower``: the same with ``engine.fast_paths=false`` (Flower's own code for every
  internal the engine can replace; same results);
- ``runner_before``: the same runner with its engine (runner/engine/, conf/engine/) as of
  ``--before-rev`` (default: the last commit before the engine work of issues 11/14), from a
  temp copy of the tree (``--no-before`` leaves it out);
- ``floor``: ``benchmarks/floor.py --num-rounds N`` (no Flower, no Ray, one thread; the
  runner's own task and data code; reaches the runner's accuracies bit for bit).

Per-round wall time of rounds 2..N: the runner's from metrics.jsonl (``elapsed_s`` of one
round's centralized row to the next; a round is train + federated evaluation +
centralized evaluation + checkpoint submit), the floor's from its own timer. Figures
(medians over repetitions of per-repetition ratios): ``per_round_over_floor`` (target
<= 1.25) and ``whole_run_over_floor`` (target <= 1.5) for each runner arm.

    python benchmarks/bench_rounds.py [--quick] [--pairs N] [--num-rounds 60] [--out FILE]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402

CASE = "rounds"
TARGET_ROUND = "<= 1.25"
TARGET_WHOLE = "<= 1.5"


def settings(quick: bool, num_rounds: int | None) -> dict[str, int]:
    if quick:
        return {"num_rounds": num_rounds or 4, "num_clients": 4, "local_epochs": 1}
    return {"num_rounds": num_rounds or 60, "num_clients": 10, "local_epochs": 5}


def runner_rounds(run_dir: Path) -> tuple[list[float], list[float]]:
    """(per-round seconds from round 1 on, centralized accuracies of rounds 1..N)."""
    rows = c.read_jsonl(run_dir / "metrics.jsonl")
    cen = [r for r in rows if r["phase"] == "centralized"]
    t = [float(r["elapsed_s"]) for r in cen]
    return [b - a for a, b in zip(t, t[1:], strict=False)], [round(float(r["accuracy"]), 6) for r in cen[1:]]


def run_runner(s: dict[str, int], quick: bool, extra: list[str], root: Path | None, details: list) -> dict[str, float]:
    with c.Workdir("bench-rounds-runner-") as cwd:
        overrides = [
            f"num_rounds={s['num_rounds']}",
            f"num_clients={s['num_clients']}",
            f"train.local_epochs={s['local_epochs']}",
            "progress=log",
            *(c.QUICK_RUNNER if quick else []),
            *extra,
        ]
        r = c.run_timed(c.runner_cmd(*overrides), cwd, env=c.runner_env(root)).check()
        per_round, acc = runner_rounds(c.run_dirs(cwd / "outputs")[0])
        details.append(
            {"per_round_s": [round(x, 4) for x in per_round], "accuracies": acc, "wall_s": round(r.wall_s, 3)}
        )
        return _round_figures(r, per_round)


def _round_figures(r: c.ProcResult, per_round: list[float]) -> dict[str, float]:
    """The process's figures, round 1 (start-up) and the median of the later rounds."""
    later = per_round[1:]
    return {**r.figures(), "round1_s": per_round[0], "per_round_s": c.median(later) if later else float("nan")}


def run_floor(s: dict[str, int], details: list) -> dict[str, float]:
    with c.Workdir("bench-rounds-floor-") as cwd:
        r = c.run_timed(
            [
                c.PY,
                str(c.BENCH_DIR / "floor.py"),
                *("--num-rounds", str(s["num_rounds"]), "--num-clients", str(s["num_clients"])),
                *("--local-epochs", str(s["local_epochs"])),
            ],
            cwd,
        ).check()
        d = json.loads(next(line for _, line in r.lines if line.startswith("FLOOR "))[len("FLOOR ") :])
        per_round = [float(x["s"]) for x in d["rounds"]]
        details.append(
            {
                "per_round_s": per_round,
                "accuracies": [round(float(x["accuracy"]), 6) for x in d["rounds"]],
                "wall_s": round(r.wall_s, 3),
            }
        )
        return _round_figures(r, per_round)


def main(argv: list[str] | None = None) -> dict:
    ap = c.case_args(__doc__.splitlines()[0], pairs_default=3)
    ap.add_argument("--num-rounds", type=int, default=None, help="rounds per run (default 60; 4 with --quick)")
    ap.add_argument("--before-rev", default=c.BEFORE_REV, help="git revision of the 'before' engine")
    ap.add_argument("--no-before", action="store_true", help="leave out the runner_before arm")
    ap.add_argument("--no-flower-paths", action="store_true", help="leave out the runner_flower arm")
    a = ap.parse_args(argv)
    pairs = a.pairs or (1 if a.quick else 3)
    s = settings(a.quick, a.num_rounds)
    before = None if a.no_before or a.quick else c.before_tree(a.before_rev)
    res = c.new_result(CASE, a.quick, {**s, "pairs": pairs, "before_rev": None if before is None else a.before_rev})
    details: dict[str, list] = {"runner": [], "runner_flower": [], "runner_before": [], "floor": []}
    arms = {
        "runner": lambda: run_runner(s, a.quick, [], None, details["runner"]),
        "runner_flower": lambda: run_runner(s, a.quick, ["engine.fast_paths=false"], None, details["runner_flower"]),
        "runner_before": lambda: run_runner(s, a.quick, [], before, details["runner_before"]),
        "floor": lambda: run_floor(s, details["floor"]),
    }
    if before is None:
        del arms["runner_before"]
    if a.no_flower_paths or a.quick:
        del arms["runner_flower"]
    c.log(f"[{CASE}] {', '.join(arms)}: {pairs} repetitions, {s}")
    try:
        runs = c.paired(arms, pairs, c.log)
    finally:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
    for arm in (x for x in arms if x != "floor"):
        per = c.ratio_figure(runs[arm], runs["floor"], "per_round_s")
        whole = c.ratio_figure(runs[arm], runs["floor"], "wall_s")
        name = arm.replace("runner", "", 1).strip("_")
        sfx = f"_{name}" if name else ""
        c.figure(
            res,
            f"per_round_over_floor{sfx}",
            per["median"],
            TARGET_ROUND if not sfx else None,
            "ratio",
            pairs=per["pairs"],
        )
        c.figure(
            res,
            f"whole_run_over_floor{sfx}",
            whole["median"],
            TARGET_WHOLE if not sfx else None,
            "ratio",
            pairs=whole["pairs"],
        )
    for arm in arms:
        c.figure(res, f"{arm}_per_round_s", c.median(r["per_round_s"] for r in runs[arm]), None, "s")
        c.figure(res, f"{arm}_wall_s", c.median(r["wall_s"] for r in runs[arm]), None, "s")
    c.figure(res, "runner_peak_rss_gb", c.median(r["peak_rss_mb"] for r in runs["runner"]) / 1024, None, "GB")
    c.figure(res, "runner_peak_pss_gb", c.median(r["peak_pss_mb"] for r in runs["runner"]) / 1024, None, "GB")
    floor_acc = [d["accuracies"] for d in details["floor"]]
    res["same_accuracies_as_floor"] = all(
        d["accuracies"] == f for arm in arms if arm != "floor" for d, f in zip(details[arm], floor_acc, strict=True)
    )
    res["runs"] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    res["details"] = details
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
