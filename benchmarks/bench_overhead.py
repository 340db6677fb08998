"""Case 1 — runner overhead: ``python -m runner`` vs the same experiment in bare Flower.

Both as whole processes in fresh temp dirs, interleaved in pairs (AB, BA, …): the runner
with its defaults (digits, mlp, FedAvg, 10 clients, 5 rounds, a checkpoint every round)
and ``benchmarks/bare_flower.py`` (Flower's documented Message-API way, ``torch.save``
every round). Figure: median over pairs of runner wall / bare wall (target <= 0.7, issue
14; it was <= 1.05). With a ``runner_before`` arm (the engine as of ``--before-rev``, from a
temp copy of the tree) the same invocation gives the before / after pair.

    python benchmarks/bench_overhead.py [--quick] [--pairs N] [--out FILE]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402
from benchmarks.timeline import runner_timeline  # noqa: E402

TIMELINES: list[dict] = []  # the runner arm's segments (benchmarks/timeline.py), per run

CASE = "overhead"
TARGET = "<= 0.7"  # issue 14: clearly ahead of a bare Flower script


def settings(quick: bool) -> dict[str, int]:
    if quick:
        return {"num_rounds": 1, "num_clients": 2, "local_epochs": 1, "num_cpus": c.QUICK_CPUS_PER_CLIENT}
    return {"num_rounds": 5, "num_clients": 10, "local_epochs": 5, "num_cpus": 1}


def run_runner(s: dict[str, int], root: Path | None = None, timelines: list | None = None) -> dict[str, float]:
    with c.Workdir("bench-runner-") as cwd:
        r = c.run_timed(c.runner_cmd(*overrides(s), "progress=log"), cwd, env=c.runner_env(root)).check()
        tl = runner_timeline(r, c.run_dirs(cwd / "outputs")[0])
        (TIMELINES if timelines is None else timelines).append({k: v for k, v in tl.items() if k != "phases"})
        return r.figures()


def overrides(s: dict[str, int]) -> list[str]:
    return [
        f"num_rounds={s['num_rounds']}",
        f"num_clients={s['num_clients']}",
        f"train.local_epochs={s['local_epochs']}",
        f"backend.client_resources.num_cpus={s['num_cpus']}",
    ]


def run_bare(s: dict[str, int]) -> dict[str, float]:
    with c.Workdir("bench-bare-") as cwd:
        cfg = cwd / "config.json"  # the runner's composed config: bare Flower runs no Hydra
        cfg.write_text(json.dumps(c.composed_config(overrides(s))))
        r = c.run_timed([c.PY, str(c.BENCH_DIR / "bare_flower.py"), "--config", str(cfg)], cwd).check()
        if len(list((cwd / "models").glob("*.pth"))) != s["num_rounds"]:
            raise RuntimeError("bare flower did not save one model per round")
        return r.figures()


def main(argv: list[str] | None = None) -> dict:
    ap = c.case_args(__doc__.splitlines()[0], pairs_default=4)
    ap.add_argument(
        "--before-rev", default=c.BEFORE_REV, help="git revision of the 'before' engine (runner_before arm)"
    )
    ap.add_argument("--no-before", action="store_true", help="leave out the runner_before arm")
    a = ap.parse_args(argv)
    pairs = a.pairs or (1 if a.quick else 4)
    s = settings(a.quick)
    before = None if a.no_before or a.quick else c.before_tree(a.before_rev)
    res = c.new_result(
        CASE,
        a.quick,
        {
            **s,
            "pairs": pairs,
            "checkpoint": "every round (runner: npz + manifest; bare: torch.save)",
            "before_rev": before and a.before_rev,
        },
    )
    before_timelines: list[dict] = []
    arms = {"runner": lambda: run_runner(s), "bare": lambda: run_bare(s)}
    if before is not None:
        arms["runner_before"] = lambda: run_runner(s, before, before_timelines)
    c.log(f"[{CASE}] {', '.join(arms)}: {pairs} repetitions, {s}")
    try:
        runs = c.paired(arms, pairs, c.log)
    finally:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
    ratio = c.ratio_figure(runs["runner"], runs["bare"], "wall_s")
    c.figure(res, "runner_over_bare_wall", ratio["median"], TARGET, "ratio", pairs=ratio["pairs"])
    cpu = c.ratio_figure(runs["runner"], runs["bare"], "cpu_s")
    c.figure(res, "runner_over_bare_cpu", cpu["median"], None, "ratio", pairs=cpu["pairs"])
    if before is not None:
        rb = c.ratio_figure(runs["runner_before"], runs["bare"], "wall_s")
        c.figure(res, "runner_before_over_bare_wall", rb["median"], None, "ratio", pairs=rb["pairs"])
        ab = c.ratio_figure(runs["runner"], runs["runner_before"], "wall_s")
        c.figure(res, "runner_over_runner_before_wall", ab["median"], None, "ratio", pairs=ab["pairs"])
    for arm in arms:
        c.figure(res, f"{arm}_wall_s", c.median(r["wall_s"] for r in runs[arm]), None, "s")
        target = "<= 2.5" if arm == "runner" and not a.quick else None  # issue 14: whole process tree
        c.figure(res, f"{arm}_peak_rss_gb", c.median(r["peak_rss_mb"] for r in runs[arm]) / 1024, target, "GB")
        c.figure(res, f"{arm}_peak_pss_gb", c.median(r["peak_pss_mb"] for r in runs[arm]) / 1024, None, "GB")
    res["runs"] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    res["runner_timelines"] = TIMELINES
    res["runner_before_timelines"] = before_timelines
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
