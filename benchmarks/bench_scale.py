"""Case 5 — scale: 10, 100 and 1000 clients, 3 rounds, "10 sampled per round" and "all sampled".

Each configuration is one ``python -m runner`` process (digits, mlp, FedAvg, checkpoint
every round) in a fresh temp dir: whole-process wall time, peak resident memory of the whole
process tree (sum of RSS of the runner and all its descendants: Ray's GCS, raylet, agents,
workers; sampled every 0.2 s; shared pages such as torch's libraries count once per
process, so this over-states real use) and CPU time. "10 sampled" sets
``strategy.fraction_train``/``fraction_evaluate`` to 10/N. Target: 1000 clients fit in
24 GB (the machine's RAM).

The runner first sends one query message to every node to learn its partition id
(runner/server_app.py ``discover_partitions``); ``benchmarks/discovery_probe.py`` times
that alone per size, next to a bare Flower ``send_and_receive`` of the same messages.

    python benchmarks/bench_scale.py [--quick] [--sizes 10,100,1000] [--out FILE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402

CASE = "scale"
RAM_TARGET_GB = 24


def run_config(
    n: int, mode: str, rounds: int, epochs: int, extra: list[str] = (), root: Path | None = None
) -> dict[str, float]:
    frac = 1.0 if mode == "all" else min(1.0, 10 / n)
    with c.Workdir("bench-scale-") as cwd:
        r = c.run_timed(
            c.runner_cmd(
                f"num_clients={n}",
                f"num_rounds={rounds}",
                f"train.local_epochs={epochs}",
                f"strategy.fraction_train={frac!r}",
                f"strategy.fraction_evaluate={frac!r}",
                "progress=log",
                *extra,
            ),
            cwd,
            timeout=1500,
            env=c.runner_env(root),
        ).check()
        run_dir = c.run_dirs(cwd / "outputs")[0]
        rows = c.read_jsonl(run_dir / "metrics.jsonl")
        summary = json.loads((run_dir / "summary.json").read_text())
        cen = [float(row["elapsed_s"]) for row in rows if row["phase"] == "centralized"]
        rounds_s = [b - a for a, b in zip(cen, cen[1:], strict=False)]  # round 1, 2, ... (metrics.jsonl elapsed_s)
        per_round = rounds_s[1:] or rounds_s
        train_replies = [row["num_replies"] for row in rows if row["phase"] == "train"]
        return {
            "wall_s": round(r.wall_s, 3),
            "cpu_s": round(r.cpu_s, 3),
            "peak_rss_mb": round(r.peak_rss_mb, 1),
            "peak_processes": r.peak_procs,
            "time_to_first_round_s": summary["time_to_first_round_s"],
            "engine_start_s": rows[0]["elapsed_s"],  # Ray + actors + discovery + round-0 eval
            "per_round_s": round(c.median(per_round), 3) if per_round else None,  # rounds 2..N
            "clients_trained_per_round": int(c.median(train_replies)),
        }


def probe(sizes: list[int], *flags: str) -> dict:
    with c.Workdir("bench-probe-") as cwd:
        r = c.run_timed(
            [c.PY, str(c.BENCH_DIR / "discovery_probe.py"), *flags, *map(str, sizes)], cwd, timeout=1200
        ).check()
        line = next(line for _, line in r.lines if line.startswith("PROBE "))
        return json.loads(line[len("PROBE ") :])


def main(argv: list[str] | None = None) -> dict:
    ap = c.case_args(__doc__.splitlines()[0], pairs_default=1)
    ap.add_argument("--sizes", default=None, help="comma-separated client counts (default 10,100,1000; quick: 4)")
    ap.add_argument(
        "--before-rev", default=c.BEFORE_REV, help="git revision of the 'before' engine (largest 'all' size)"
    )
    ap.add_argument("--no-before", action="store_true", help="no 'before' run of the largest 'all' size")
    a = ap.parse_args(argv)
    sizes = [int(x) for x in (a.sizes or ("4" if a.quick else "10,100,1000")).split(",")]
    rounds, epochs = (1, 1) if a.quick else (3, 5)
    res = c.new_result(
        CASE,
        a.quick,
        {
            "sizes": sizes,
            "num_rounds": rounds,
            "local_epochs": epochs,
            "modes": {"sampled10": "fraction_train = fraction_evaluate = 10/N", "all": "fraction 1.0"},
        },
    )
    c.log(f"[{CASE}] sizes {sizes}, {rounds} rounds")
    runs: dict[str, dict[str, dict]] = {}
    for mode in ("all",) if a.quick else ("sampled10", "all"):  # quick: one Ray start less in CI
        for n in sizes:
            m = run_config(n, mode, rounds, epochs, c.QUICK_RUNNER if a.quick else [])
            runs.setdefault(mode, {})[str(n)] = m
            c.log(f"  {mode} N={n}: {m}")
            c.figure(res, f"{mode}_{n}_wall_s", m["wall_s"], None, "s")
            c.figure(res, f"{mode}_{n}_peak_rss_gb", m["peak_rss_mb"] / 1024, f"< {RAM_TARGET_GB}", "GB")
    hi_n = sizes[-1]
    c.figure(
        res, f"all_{hi_n}_per_round_s", runs["all"][str(hi_n)]["per_round_s"], "<= 2" if hi_n == 1000 else None, "s"
    )
    if not a.quick and not a.no_before:
        import shutil

        before = c.before_tree(a.before_rev)
        try:
            c.log(f"  all N={hi_n} with the engine of {a.before_rev} ...")
            m = run_config(hi_n, "all", rounds, epochs, [], before)
        finally:
            shutil.rmtree(before, ignore_errors=True)
        runs.setdefault("all_before", {})[str(hi_n)] = m
        c.log(f"  all (before) N={hi_n}: {m}")
        c.figure(res, f"all_{hi_n}_per_round_s_before", m["per_round_s"], None, "s")
        c.figure(res, f"all_{hi_n}_wall_s_before", m["wall_s"], None, "s")
    c.log("  discovery probe ...")
    pr = probe(sizes, *(["--num-cpus", str(c.QUICK_CPUS_PER_CLIENT)] if a.quick else []))
    if not a.quick:
        c.log("  discovery probe with Flower's own message pump ...")
        res["discovery_probe_flower_pump"] = probe(sizes, "--flower-pump")
    for n in sizes:
        c.figure(
            res,
            f"discovery_{n}_s",
            pr[str(n)]["discover_s"],
            None,
            "s",
            flower_send_and_receive_s=pr[str(n)]["flower_send_and_receive_s"],
        )
    lo, hi = str(sizes[0]), str(sizes[-1])
    for mode in ("sampled10", "all"):
        if mode in runs:
            c.figure(
                res,
                f"{mode}_wall_growth_{lo}_to_{hi}",
                runs[mode][hi]["wall_s"] / runs[mode][lo]["wall_s"],
                None,
                "ratio",
            )
    res["runs"] = runs
    res["discovery_probe"] = pr
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
