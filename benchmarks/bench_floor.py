"""Case 2 — the floor: ``python -m runner`` vs the same training as one plain PyTorch loop.

Arms, interleaved (order alternates per repetition): the runner with its defaults, the
runner with ``checkpoint.enabled=false`` (to price checkpointing), and
``benchmarks/floor.py`` (no Flower, no Ray: same clients sampled, same local training,
FedAvg, same evaluations; reaches bit-identical accuracies). Figure: median over
repetitions of runner wall / floor wall (no target: it says how far the runner is from the
physical floor), plus where the difference goes (see benchmarks/timeline.py).

    python benchmarks/bench_floor.py [--quick] [--pairs N] [--out FILE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402
from benchmarks.timeline import runner_timeline  # noqa: E402

CASE = "floor"


def settings(quick: bool) -> dict[str, int]:
    return (
        {"num_rounds": 2, "num_clients": 4, "local_epochs": 1}
        if quick
        else {"num_rounds": 5, "num_clients": 10, "local_epochs": 5}
    )


QUICK_EXTRA: list[str] = []


def run_runner(s: dict[str, int], timelines: list, *extra: str) -> dict[str, float]:
    with c.Workdir("bench-floor-runner-") as cwd:
        r = c.run_timed(
            c.runner_cmd(
                f"num_rounds={s['num_rounds']}",
                f"num_clients={s['num_clients']}",
                f"train.local_epochs={s['local_epochs']}",
                "progress=log",
                *QUICK_EXTRA,
                *extra,
            ),
            cwd,
        ).check()
        run_dir = c.run_dirs(cwd / "outputs")[0]
        tl = runner_timeline(r, run_dir)
        tl["accuracies"] = [
            round(row["accuracy"], 6)
            for row in c.read_jsonl(run_dir / "metrics.jsonl")
            if row["phase"] == "centralized" and row["round"] > 0
        ]
        timelines.append(tl)
        return {"wall_s": r.wall_s, "cpu_s": r.cpu_s}


def run_floor(s: dict[str, int], details: list) -> dict[str, float]:
    with c.Workdir("bench-floor-") as cwd:
        r = c.run_timed(
            [
                c.PY,
                str(c.BENCH_DIR / "floor.py"),
                "--num-rounds",
                str(s["num_rounds"]),
                "--num-clients",
                str(s["num_clients"]),
                "--local-epochs",
                str(s["local_epochs"]),
            ],
            cwd,
        ).check()
        line = next(line for _, line in r.lines if line.startswith("FLOOR "))
        d = json.loads(line[len("FLOOR ") :])
        d["exit_s"] = round(r.wall_s - d["total_in_process_s"], 3)
        details.append(d)
        return {"wall_s": r.wall_s, "cpu_s": r.cpu_s}


def breakdown(
    runner_tl: list[dict], floor_d: list[dict], runner_wall: float, nockpt_wall: float, floor_wall: float
) -> dict[str, dict[str, float]]:
    """Median seconds per segment, runner vs floor, and the runner's excess."""
    m = lambda rows, f: round(c.median(f(r) for r in rows), 3)  # noqa: E731
    rows = {
        "start-up (interpreter, imports, config, data, Ray + actors, discovery)": (
            m(runner_tl, lambda t: t["startup_to_run_dir"] + t["setup_to_engine"] + t["engine_start"]),
            m(floor_d, lambda d: d["imports_s"] + d["data_s"]),
        ),
        "first round (actors' first data load and first training)": (
            m(runner_tl, lambda t: t["first_round"]),
            m(floor_d, lambda d: d["rounds"][0]["s"]),
        ),
        "later rounds, per round (engine cost per round)": (
            m(runner_tl, lambda t: t["per_round_median"] if t["per_round_median"] is not None else float("nan")),
            m(floor_d, lambda d: c.median(x["s"] for x in d["rounds"][1:]) if len(d["rounds"]) > 1 else float("nan")),
        ),
        "evaluation, all rounds (federated + centralized)": (
            m(runner_tl, lambda t: t["phases"]["evaluate"] + t["phases"]["centralized"]),
            m(floor_d, lambda d: d["fed_eval_s"] + d["centralized_s"]),
        ),
        "finish (engine stop, last checkpoint, summary, plots)": (m(runner_tl, lambda t: t["finish"]), 0.0),
        "exit (Ray shutdown, interpreter teardown)": (
            m(runner_tl, lambda t: t["exit"]),
            m(floor_d, lambda d: d["exit_s"]),
        ),
        "checkpointing (runner wall - runner wall without checkpoints)": (round(runner_wall - nockpt_wall, 3), 0.0),
        "whole process": (round(runner_wall, 3), round(floor_wall, 3)),
    }
    return {k: {"runner_s": a, "floor_s": b, "excess_s": round(a - b, 3)} for k, (a, b) in rows.items()}


def main(argv: list[str] | None = None) -> dict:
    a = c.case_args(__doc__.splitlines()[0], pairs_default=3).parse_args(argv)
    pairs = a.pairs or (1 if a.quick else 3)
    s = settings(a.quick)
    if a.quick:
        QUICK_EXTRA.extend(c.QUICK_RUNNER)
    res = c.new_result(CASE, a.quick, {**s, "repetitions": pairs, "extra": QUICK_EXTRA})
    c.log(f"[{CASE}] runner vs runner without checkpoints vs plain PyTorch loop, {pairs} repetitions, {s}")
    tl_runner: list[dict] = []
    tl_nockpt: list[dict] = []
    floor_d: list[dict] = []
    arms = {
        "runner": lambda: run_runner(s, tl_runner),
        "runner_no_checkpoints": lambda: run_runner(s, tl_nockpt, "checkpoint.enabled=false"),
        "floor": lambda: run_floor(s, floor_d),
    }
    if a.quick:  # same code path as the runner arm; saves a Ray start in CI
        del arms["runner_no_checkpoints"]
    runs = c.paired(arms, pairs, c.log)
    ratio = c.ratio_figure(runs["runner"], runs["floor"], "wall_s")
    cpu_ratio = c.ratio_figure(runs["runner"], runs["floor"], "cpu_s")
    med = {k: c.median(r["wall_s"] for r in v) for k, v in runs.items()}
    c.figure(res, "runner_over_floor_wall", ratio["median"], None, "ratio", pairs=ratio["pairs"])
    c.figure(res, "runner_over_floor_cpu", cpu_ratio["median"], None, "ratio", pairs=cpu_ratio["pairs"])
    c.figure(res, "runner_wall_s", med["runner"], None, "s")
    if "runner_no_checkpoints" in med:
        c.figure(res, "runner_no_checkpoints_wall_s", med["runner_no_checkpoints"], None, "s")
    c.figure(res, "floor_wall_s", med["floor"], None, "s")
    same = all(
        t["accuracies"] == [round(x["accuracy"], 6) for x in d["rounds"]]
        for t, d in zip(tl_runner, floor_d, strict=True)
    )
    res["same_accuracies_as_runner"] = same
    res["breakdown"] = breakdown(
        tl_runner, floor_d, med["runner"], med.get("runner_no_checkpoints", float("nan")), med["floor"]
    )
    res["runs"] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    res["runner_timelines"] = tl_runner
    res["floor_details"] = floor_d
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
