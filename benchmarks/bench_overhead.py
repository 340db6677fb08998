"""Case 1 — runner overhead: ``python -m runner`` vs the same experiment in bare Flower.

Both as whole processes in fresh temp dirs, interleaved in pairs (AB, BA, …): the runner
with its defaults (digits, mlp, FedAvg, 10 clients, 5 rounds, a checkpoint every round)
and ``benchmarks/bare_flower.py`` (Flower's documented Message-API way, ``torch.save``
every round). Figure: median over pairs of runner wall / bare wall (target <= 1.05).

    python benchmarks/bench_overhead.py [--quick] [--pairs N] [--out FILE]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402
from benchmarks.timeline import runner_timeline  # noqa: E402

TIMELINES: list[dict] = []  # the runner arm's segments (benchmarks/timeline.py), per run

CASE = "overhead"
TARGET = "<= 1.05"


def check_bare_matches_runner() -> None:
    """bare_flower.DEFAULTS must describe the runner's default experiment."""
    from hydra import compose, initialize_config_dir

    from benchmarks.bare_flower import DEFAULTS
    from runner.config import to_container

    with initialize_config_dir(config_dir=str(c.ROOT / "conf"), version_base="1.3"):
        cfg = to_container(compose("config"))
    strategy = {k: v for k, v in cfg["strategy"].items() if k != "_target_"}
    mismatch = {
        k: (cfg.get(k) if k != "strategy" else strategy, v)
        for k, v in DEFAULTS.items()
        if k not in ("client_resources",) and (cfg.get(k) if k != "strategy" else strategy) != v
    }
    if cfg["backend"]["client_resources"] != DEFAULTS["client_resources"]:
        mismatch["client_resources"] = (cfg["backend"]["client_resources"], DEFAULTS["client_resources"])
    if cfg["strategy"]["_target_"] != "flwr.serverapp.strategy.FedAvg" or not cfg["checkpoint"]["enabled"] or cfg["checkpoint"]["every_n_rounds"] != 1:
        mismatch["strategy/checkpoint"] = (cfg["strategy"]["_target_"], cfg["checkpoint"])
    if mismatch:
        raise SystemExit(f"benchmarks/bare_flower.py DEFAULTS no longer match conf/ (runner, bare): {mismatch}")


def settings(quick: bool) -> dict[str, int]:
    if quick:
        return {"num_rounds": 1, "num_clients": 2, "local_epochs": 1, "num_cpus": c.QUICK_CPUS_PER_CLIENT}
    return {"num_rounds": 5, "num_clients": 10, "local_epochs": 5, "num_cpus": 1}


def run_runner(s: dict[str, int], extra: tuple[str, ...] = ()) -> dict[str, float]:
    with c.Workdir("bench-runner-") as cwd:
        r = c.run_timed(
            c.runner_cmd(
                f"num_rounds={s['num_rounds']}",
                f"num_clients={s['num_clients']}",
                f"train.local_epochs={s['local_epochs']}",
                f"backend.client_resources.num_cpus={s['num_cpus']}",
                "progress=log",
                *extra,
            ),
            cwd,
        ).check()
        tl = runner_timeline(r, c.run_dirs(cwd / "outputs")[0])
        TIMELINES.append({k: v for k, v in tl.items() if k != "phases"})
        return {"wall_s": r.wall_s, "cpu_s": r.cpu_s, "peak_rss_mb": r.peak_rss_mb}


def run_bare(s: dict[str, int]) -> dict[str, float]:
    with c.Workdir("bench-bare-") as cwd:
        r = c.run_timed(
            [
                c.PY,
                str(c.BENCH_DIR / "bare_flower.py"),
                *("--num-rounds", str(s["num_rounds"]), "--num-clients", str(s["num_clients"])),
                *("--local-epochs", str(s["local_epochs"]), "--num-cpus", str(s["num_cpus"])),
            ],
            cwd,
        ).check()
        if len(list((cwd / "models").glob("*.pth"))) != s["num_rounds"]:
            raise RuntimeError("bare flower did not save one model per round")
        return {"wall_s": r.wall_s, "cpu_s": r.cpu_s, "peak_rss_mb": r.peak_rss_mb}


def main(argv: list[str] | None = None) -> dict:
    a = c.case_args(__doc__.splitlines()[0], pairs_default=4).parse_args(argv)
    pairs = a.pairs or (1 if a.quick else 4)
    check_bare_matches_runner()
    s = settings(a.quick)
    res = c.new_result(CASE, a.quick, {**s, "pairs": pairs, "checkpoint": "every round (runner: npz + manifest; bare: torch.save)"})
    c.log(f"[{CASE}] runner vs bare Flower, {pairs} pairs, {s}")
    runs = c.paired({"runner": lambda: run_runner(s), "bare": lambda: run_bare(s)}, pairs, c.log)
    ratio = c.ratio_figure(runs["runner"], runs["bare"], "wall_s")
    c.figure(res, "runner_over_bare_wall", ratio["median"], TARGET, "ratio", pairs=ratio["pairs"])
    cpu = c.ratio_figure(runs["runner"], runs["bare"], "cpu_s")
    c.figure(res, "runner_over_bare_cpu", cpu["median"], None, "ratio", pairs=cpu["pairs"])
    c.figure(res, "runner_wall_s", c.median(r["wall_s"] for r in runs["runner"]), None, "s")
    c.figure(res, "bare_wall_s", c.median(r["wall_s"] for r in runs["bare"]), None, "s")
    res["runs"] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    res["runner_timelines"] = TIMELINES
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
