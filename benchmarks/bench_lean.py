"""Case lean — issue 20: start-up, memory and many clients, before and after, in one invocation.

"Before" is the whole runner (runner/, conf/) as of ``--before-rev`` (default ``7d59b96``,
the last commit before issue 20's work), run from a temp copy of the tree; "after" is this
tree. Every measured command is a whole process in a fresh temp dir; arms are interleaved
(order alternating per pair) and ratios are medians of per-pair ratios.

Sections:

- ``default``: ``python -m runner`` with its defaults (digits, mlp, FedAvg, 10 clients,
  5 rounds, 5 local epochs, a checkpoint every round): ``runner`` (the data cache warm: the
  split of an earlier run on the same data), ``runner_cold`` (a fresh ``data_cache.dir``
  every run: the first run on a machine), ``runner_before`` and ``bare``
  (``benchmarks/bare_flower.py``). Figures: wall / bare (target <= 0.6), peak RSS and PSS of
  the whole process tree (targets <= 2.5 GB and <= 1.5 GB).
- ``rounds``: the same with ``num_rounds=60`` against ``benchmarks/floor.py --num-rounds 60``
  (plain PyTorch, no Flower, no Ray): whole run / floor (target <= 1.3) and per round,
  rounds 2..60, / floor's (target <= 1.15).
- ``many``: 1,000 clients, all sampled, against the floor doing the same training: per round
  (rounds 2..N) / floor's (target <= 1.3).
- ``client``: one train message through the real ClientApp in a fresh process
  (``tests/client_probe.py``: what Flower's deployment runtime pays per message): wall, CPU
  and peak RSS, before and after, and ``python -X importtime`` of ``runner.client_app``.

Bits: each section checks that ``runner`` and ``runner_before`` end with the same final
weights and the same metric rows (``elapsed_s`` aside), and that the floor reaches the same
centralized accuracies.

    python benchmarks/bench_lean.py [--quick] [--pairs N] [--only default,rounds,many,client] [--out FILE]
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402

CASE = "lean"
BEFORE_REV = "7d59b96"
SECTIONS = ("default", "rounds", "many", "client")


def settings(quick: bool) -> dict[str, dict[str, int]]:
    if quick:
        return {
            "default": {"num_rounds": 1, "num_clients": 2, "local_epochs": 1},
            "rounds": {"num_rounds": 3, "num_clients": 4, "local_epochs": 1},
            "many": {"num_rounds": 2, "num_clients": 20, "local_epochs": 1},
        }
    return {
        "default": {"num_rounds": 5, "num_clients": 10, "local_epochs": 5},
        "rounds": {"num_rounds": 60, "num_clients": 10, "local_epochs": 5},
        "many": {"num_rounds": 3, "num_clients": 1000, "local_epochs": 5},
    }


def _overrides(s: dict[str, int], quick: bool) -> list[str]:
    return [*c.experiment_overrides(s), *(c.QUICK_RUNNER if quick else [])]


def _run_outcome(run_dir: Path, num_rounds: int) -> dict[str, Any]:
    """What must be equal before and after: final weights (digest) and metric rows."""
    import hashlib

    import numpy as np

    rows = c.read_jsonl(run_dir / "metrics.jsonl")
    h = hashlib.sha256()
    with np.load(run_dir / "checkpoints" / f"round-{num_rounds:04d}.npz") as f:
        for k in sorted(f.files):
            h.update(k.encode())
            h.update(np.ascontiguousarray(f[k]).tobytes())
    cen = [float(r["elapsed_s"]) for r in rows if r["phase"] == "centralized"]
    return {
        "weights": h.hexdigest(),
        "rows": [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows],
        "accuracies": [round(float(r["accuracy"]), 6) for r in rows if r["phase"] == "centralized"][1:],
        "per_round_s": [b - a for a, b in zip(cen, cen[1:], strict=False)],
    }


def run_runner(s: dict[str, int], quick: bool, root: Path | None, outcomes: list, extra: list[str] = ()) -> dict:
    with c.Workdir("bench-lean-runner-") as cwd:
        r = c.run_timed(c.runner_cmd(*_overrides(s, quick), *extra), cwd, env=c.runner_env(root), timeout=1800).check()
        out = _run_outcome(c.run_dirs(cwd / "outputs")[0], s["num_rounds"])
        outcomes.append(out)
        later = out["per_round_s"][1:]
        return {**r.figures(), "per_round_s": c.median(later) if later else float("nan")}


def run_cold(s: dict[str, int], quick: bool, outcomes: list) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="bench-lean-cache-"))
    try:
        return run_runner(s, quick, None, outcomes, [f"data_cache.dir={cache}"])
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_bare(s: dict[str, int], quick: bool) -> dict:
    with c.Workdir("bench-lean-bare-") as cwd:
        cfg = cwd / "config.json"
        cfg.write_text(json.dumps(c.composed_config(_overrides(s, quick)[:3] + (c.QUICK_RUNNER if quick else []))))
        return c.run_timed([c.PY, str(c.BENCH_DIR / "bare_flower.py"), "--config", str(cfg)], cwd).check().figures()


def run_floor(s: dict[str, int], outcomes: list) -> dict:
    with c.Workdir("bench-lean-floor-") as cwd:
        r = c.run_timed(
            [
                c.PY,
                str(c.BENCH_DIR / "floor.py"),
                *("--num-rounds", str(s["num_rounds"]), "--num-clients", str(s["num_clients"])),
                *("--local-epochs", str(s["local_epochs"])),
            ],
            cwd,
            timeout=1800,
        ).check()
        d = json.loads(next(line for _, line in r.lines if line.startswith("FLOOR "))[len("FLOOR ") :])
        per_round = [float(x["s"]) for x in d["rounds"]]
        outcomes.append({"accuracies": [round(float(x["accuracy"]), 6) for x in d["rounds"]], "floor": d})
        return {**r.figures(), "per_round_s": c.median(per_round[1:]) if len(per_round) > 1 else per_round[0]}


def _same(a: list[dict], b: list[dict], keys: tuple[str, ...]) -> bool:
    return all(x[k] == y[k] for x, y in zip(a, b, strict=True) for k in keys) and len(a) == len(b) > 0


def _ratios(res: dict, runs: dict, num: str, den: str, key: str, name: str, target: str | None) -> None:
    if num in runs and den in runs:
        r = c.ratio_figure(runs[num], runs[den], key)
        c.figure(res, name, r["median"], target, "ratio", pairs=r["pairs"])


def section_default(res: dict, s: dict, quick: bool, pairs: int, before: Path | None) -> None:
    out: dict[str, list] = {"runner": [], "runner_cold": [], "runner_before": []}
    arms = {
        "runner": lambda: run_runner(s, quick, None, out["runner"]),
        "runner_cold": lambda: run_cold(s, quick, out["runner_cold"]),
        "bare": lambda: run_bare(s, quick),
    }
    if before is not None:
        arms["runner_before"] = lambda: run_runner(s, quick, before, out["runner_before"])
    run_runner(s, quick, None, [])  # the data cache warm for the "runner" arm (as after any earlier run)
    c.log(f"[{CASE}] default: {', '.join(arms)}: {pairs} pairs, {s}")
    runs = c.paired(arms, pairs, c.log)
    _ratios(res, runs, "runner", "bare", "wall_s", "default_runner_over_bare_wall", "<= 0.6")
    _ratios(res, runs, "runner_cold", "bare", "wall_s", "default_runner_cold_over_bare_wall", None)
    _ratios(res, runs, "runner_before", "bare", "wall_s", "default_runner_before_over_bare_wall", None)
    _ratios(res, runs, "runner", "runner_before", "wall_s", "default_runner_over_before_wall", None)
    for arm in runs:
        c.figure(res, f"default_{arm}_wall_s", c.median(r["wall_s"] for r in runs[arm]), None, "s")
        c.figure(res, f"default_{arm}_cpu_s", c.median(r["cpu_s"] for r in runs[arm]), None, "s")
        rss_t, pss_t = ("<= 2.5", "<= 1.5") if arm in ("runner", "runner_cold") and not quick else (None, None)
        c.figure(res, f"default_{arm}_peak_rss_gb", c.median(r["peak_rss_mb"] for r in runs[arm]) / 1024, rss_t, "GB")
        c.figure(res, f"default_{arm}_peak_pss_gb", c.median(r["peak_pss_mb"] for r in runs[arm]) / 1024, pss_t, "GB")
    res["runs"]["default"] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    _check_bits(res, "default", out)


def section_rounds(res: dict, name: str, s: dict, quick: bool, pairs: int, before: Path | None) -> None:
    out: dict[str, list] = {"runner": [], "runner_before": [], "floor": []}
    arms = {"runner": lambda: run_runner(s, quick, None, out["runner"]), "floor": lambda: run_floor(s, out["floor"])}
    if before is not None:
        arms["runner_before"] = lambda: run_runner(s, quick, before, out["runner_before"])
    c.log(f"[{CASE}] {name}: {', '.join(arms)}: {pairs} pairs, {s}")
    runs = c.paired(arms, pairs, c.log)
    whole, per = ("<= 1.3", "<= 1.15") if name == "rounds" else (None, "<= 1.3")
    for arm in ("runner", "runner_before"):
        sfx = "" if arm == "runner" else "_before"
        _ratios(res, runs, arm, "floor", "wall_s", f"{name}_whole_run_over_floor{sfx}", whole if not sfx else None)
        _ratios(res, runs, arm, "floor", "per_round_s", f"{name}_per_round_over_floor{sfx}", per if not sfx else None)
    for arm in runs:
        c.figure(res, f"{name}_{arm}_wall_s", c.median(r["wall_s"] for r in runs[arm]), None, "s")
        c.figure(res, f"{name}_{arm}_per_round_s", c.median(r["per_round_s"] for r in runs[arm]), None, "s")
        c.figure(res, f"{name}_{arm}_peak_rss_gb", c.median(r["peak_rss_mb"] for r in runs[arm]) / 1024, None, "GB")
    res["runs"][name] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}
    floor_acc = [o["accuracies"] for o in out["floor"]]
    res["bits"][f"{name}_same_accuracies_as_floor"] = all(
        o["accuracies"] == f for o, f in zip(out["runner"], floor_acc, strict=False)
    )
    res["details"][f"{name}_floor_breakdown"] = [o["floor"] for o in out["floor"]]
    _check_bits(res, name, out)


def _check_bits(res: dict, name: str, out: dict[str, list]) -> None:
    arms = [a for a in ("runner", "runner_cold", "runner_before") if out.get(a)]
    ref = out["runner"]
    for arm in arms[1:]:
        same = _same([ref[0]] * len(out[arm]), out[arm], ("weights", "rows"))
        res["bits"][f"{name}_{arm}_same_weights_and_rows"] = same
        if not same:
            res["notes"].append(f"{name}: {arm} ended with other weights or metric rows than runner")
    res["bits"][f"{name}_runner_repeatable"] = _same([ref[0]] * len(ref), ref, ("weights", "rows"))


# -- one client process, one train message -------------------------------------------------
def _client_message(cfg_path: Path, root: Path | None) -> dict[str, float]:
    with c.Workdir("bench-lean-client-") as cwd:
        r = c.run_timed([c.PY, "-m", "tests.client_probe", str(cfg_path), "3"], cwd, env=c.runner_env(root)).check()
        last = json.loads(r.lines[-1][1])
        return {**r.figures(), "heavy_imports": len(last["imported"]) - 1}


def _importtime(root: Path | None, module: str) -> float:
    with c.Workdir("bench-lean-import-") as cwd:
        r = c.run_timed([c.PY, "-X", "importtime", "-c", f"import {module}"], cwd, env=c.runner_env(root)).check()
        for _, line in r.lines:
            m = re.match(rf"import time:\s+\d+ \|\s+(\d+) \| {re.escape(module)}$", line.rstrip())
            if m:
                return int(m.group(1)) / 1e6
    return float("nan")


def section_client(res: dict, quick: bool, pairs: int, before: Path | None) -> None:
    from runner.data import publish_partitions

    cfg = c.composed_config(["num_clients=10"])
    work = Path(tempfile.mkdtemp(prefix="bench-lean-cfg-"))
    try:
        sent = {**cfg, "data_cache": publish_partitions(cfg)}
        paths = {"sent": work / "sent.json", "off": work / "off.json"}
        paths["sent"].write_text(json.dumps(sent))
        paths["off"].write_text(json.dumps({**cfg, "data_cache": {"enabled": False, "dir": None}}))
        arms = {
            "after": lambda: _client_message(paths["sent"], None),
            "after_no_cache": lambda: _client_message(paths["off"], None),
        }
        if before is not None:
            arms["before"] = lambda: _client_message(paths["off"], before)
        c.log(f"[{CASE}] client: {', '.join(arms)}: {pairs} pairs")
        runs = c.paired(arms, pairs, c.log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for arm in runs:
        for key, unit in (("wall_s", "s"), ("cpu_s", "s"), ("peak_rss_mb", "MB")):
            c.figure(res, f"client_{arm}_{key}", c.median(r[key] for r in runs[arm]), None, unit)
    _ratios(res, runs, "after", "before", "wall_s", "client_after_over_before_wall", None)
    _ratios(res, runs, "after", "before", "cpu_s", "client_after_over_before_cpu", None)
    for label, root in (("after", None), ("before", before)):
        if label == "before" and before is None:
            continue
        t = [_importtime(root, "runner.client_app") for _ in range(1 if quick else 3)]
        c.figure(res, f"client_importtime_runner_client_app_{label}_s", c.median(t), None, "s")
    res["runs"]["client"] = {k: {m: c.summary([r[m] for r in v]) for m in v[0]} for k, v in runs.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = c.case_args(__doc__.splitlines()[0], pairs_default=3)
    ap.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the 'before' runner")
    ap.add_argument("--no-before", action="store_true", help="leave out the before arms")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections, of {','.join(SECTIONS)}")
    a = ap.parse_args(argv)
    pairs = a.pairs or (1 if a.quick else 3)
    s = settings(a.quick)
    only = [x for x in a.only.split(",") if x]
    before = None if a.no_before or a.quick else c.before_tree(a.before_rev, ("runner", "conf"))
    res = c.new_result(CASE, a.quick, {**s, "pairs": pairs, "before_rev": before and a.before_rev, "sections": only})
    res.update(runs={}, bits={}, details={})
    try:
        if "default" in only:
            section_default(res, s["default"], a.quick, pairs, before)
        if "rounds" in only:
            section_rounds(res, "rounds", s["rounds"], a.quick, pairs, before)
        if "many" in only:
            section_rounds(res, "many", s["many"], a.quick, 1 if a.quick else max(1, pairs - 1), before)
        if "client" in only:
            section_client(res, a.quick, pairs, before)
    finally:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
    failed = [k for k, v in res["bits"].items() if v is False]
    out = c.finish(res, a.out)
    if failed:
        raise SystemExit(f"results differ: {failed}")
    return out


if __name__ == "__main__":
    main()
