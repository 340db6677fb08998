"""Case engines — the same small experiment on the simulation engine and the deployment engine.

Arms, interleaved (order alternates per repetition), each a whole ``python -m runner``
process in a fresh temp dir, same overrides (digits, MLP, FedAvg, ``num_clients=3``,
``train.local_epochs=1``, ``num_rounds=N``, a checkpoint every round):

- ``simulation``: ``engine=simulation`` (default): Flower's Ray simulation in the driver;
- ``deployment``: ``engine=deployment engine.superlink=…`` against a SuperLink and 3
  SuperNodes on loopback started once by this script (runner.engine.deployment.
  LocalFederation, ``--insecure``, ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` = ``--poll``,
  default 0.1 s; Flower's default is 1.0 s). Its start is timed separately
  (``federation_start_s``) and not part of any run.

Per run: ``wall_s`` (whole process), ``first_round_s`` (process start to the end of round
1: the first ``round 1/N`` line on the driver's console; for deployment the ServerApp's
line streamed back), ``per_round_s`` (median duration of rounds 2..N from metrics.jsonl:
one centralized row to the next; a round = train + federated evaluation + centralized
evaluation + checkpoint), ``round1_s`` (round 1 alone, same source), ``startup_s`` =
``first_round_s`` - ``round1_s`` (what a run costs before its first round starts: Hydra,
data and model checks, Ray start or FAB submit, ServerApp start, node discovery, the
initial centralized evaluation). Deployment runs also report Flower's own record of the run
(``<run dir>/.flwr/run.json``: pending -> running, ServerApp and ClientApp seconds,
traffic). The two arms end with the same weights (checked: round N's checkpoint, bit for
bit). Figures are medians over repetitions; ratios deployment / simulation. No targets: the
case tells the README what each engine costs on this machine.

    python benchmarks/bench_engines.py [--quick] [--pairs N] [--num-rounds 5] [--poll 0.1] [--out FILE]
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common as c  # noqa: E402

CASE = "engines"
PROGRESS = r"round 1/\d+"


def settings(quick: bool, num_rounds: int | None) -> dict[str, int]:
    return {"num_rounds": num_rounds or (2 if quick else 5), "num_clients": 3, "local_epochs": 1}


def overrides(s: dict[str, int]) -> list[str]:
    return [
        f"num_rounds={s['num_rounds']}",
        f"num_clients={s['num_clients']}",
        f"train.local_epochs={s['local_epochs']}",
        "progress=log",
        "print_config=false",
    ]


def round_times(run_dir: Path) -> list[float]:
    """Seconds per round, from round 1 on (centralized rows of metrics.jsonl)."""
    t = [float(r["elapsed_s"]) for r in c.read_jsonl(run_dir / "metrics.jsonl") if r["phase"] == "centralized"]
    return [b - a for a, b in zip(t[:-1], t[1:], strict=True)]


def _flower_record(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / ".flwr" / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, Any] = {}
    stamps = {k: info.get(k) for k in ("pending-at", "running-at", "finished-at")}
    try:
        import datetime as dt

        def parse(x: str) -> float:
            return dt.datetime.strptime(x, "%Y-%m-%d %H:%M:%SZ").timestamp()

        out["pending_to_running_s"] = parse(stamps["running-at"]) - parse(stamps["pending-at"])
    except (TypeError, ValueError):
        pass
    compute = info.get("compute-time") or {}
    out["serverapp_s"] = compute.get("serverapp-seconds")
    out["clientapp_s"] = compute.get("clientapp-seconds")
    out["traffic_bytes"] = (info.get("network-traffic") or {}).get("total-bytes")
    return out


def one_run(arm: str, s: dict[str, int], extra: list[str], details: list, weights: dict) -> dict[str, float]:
    with c.Workdir(f"bench-engines-{arm}-") as cwd:
        r = c.run_timed(c.runner_cmd(*overrides(s), *extra), cwd, timeout=1800).check()
        (run_dir,) = c.run_dirs(cwd / "outputs")
        per_round = round_times(run_dir)
        first = r.first_line_at(PROGRESS)
        if first is None:
            raise RuntimeError(f"{arm}: no 'round 1/N' line on the console")
        later = c.median(per_round[1:]) if len(per_round) > 1 else float("nan")
        round1 = per_round[0] if per_round else float("nan")
        import numpy as np

        with np.load(run_dir / "checkpoints" / f"round-{s['num_rounds']:04d}.npz") as f:
            weights.setdefault(arm, []).append({k: f[k].copy() for k in f.files})
        record = _flower_record(run_dir) if arm == "deployment" else {}
        details.append(
            {
                "per_round_s": [round(x, 4) for x in per_round],
                "first_round_line_s": round(first, 3),
                "wall_s": round(r.wall_s, 3),
                **{k: v for k, v in record.items() if v is not None},
            }
        )
        return {
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,  # the driver's process tree only (not the SuperLink/SuperNodes)
            "peak_rss_mb": r.peak_rss_mb,
            "first_round_s": first,
            "per_round_s": later,
            "round1_s": round1,
            "startup_s": first - round1,
        }


def _same_bits(weights: dict[str, list[dict]]) -> bool:
    import numpy as np

    runs = [w for arm in weights.values() for w in arm]
    ref = runs[0]
    return all(sorted(w) == sorted(ref) and all(np.array_equal(w[k], ref[k]) for k in ref) for w in runs[1:])


def main(argv: list[str] | None = None) -> dict:
    from runner.engine.deployment import LocalFederation

    ap = c.case_args(__doc__.splitlines()[0], pairs_default=2)
    ap.add_argument("--num-rounds", type=int, default=None, help="rounds per run (default 5; 2 with --quick)")
    ap.add_argument("--poll", type=float, default=0.1, help="FLWR_SUPEREXEC_TASK_POLL_INTERVAL of the federation")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the federation is stopped in `finally`
    pairs = a.pairs or (1 if a.quick else 2)
    s = settings(a.quick, a.num_rounds)
    res = c.new_result(CASE, a.quick, {**s, "pairs": pairs, "poll_interval_s": a.poll, "overrides": overrides(s)})
    base = Path(tempfile.mkdtemp(prefix="bench-fed-", dir="/tmp"))
    fed = LocalFederation(s["num_clients"], base, poll_interval=a.poll, env=c.bench_env())
    details: dict[str, list] = {"simulation": [], "deployment": []}
    weights: dict[str, list] = {}
    try:
        t = time.monotonic()
        address = fed.start()
        federation_start = time.monotonic() - t
        c.log(f"[{CASE}] federation at {address} in {federation_start:.1f}s; {pairs} repetitions, {s}")
        arms = {
            "simulation": lambda: one_run("simulation", s, [], details["simulation"], weights),
            "deployment": lambda: one_run(
                "deployment", s, ["engine=deployment", f"engine.superlink={address}"], details["deployment"], weights
            ),
        }
        runs = c.paired(arms, pairs, c.log)
    finally:
        stubborn = fed.stop()
        left = fed.processes()
        shutil.rmtree(base, ignore_errors=True)
    if stubborn or left:
        res["notes"].append(f"federation processes needed SIGKILL: {stubborn}; left: {len(left)}")
    c.figure(res, "federation_start_s", federation_start, None, "s")
    for arm in arms:
        for key in ("startup_s", "round1_s", "per_round_s", "first_round_s", "wall_s"):
            c.figure(res, f"{arm}_{key}", c.median(x[key] for x in runs[arm]), None, "s")
    for key in ("startup_s", "per_round_s", "wall_s"):
        ratio = c.ratio_figure(runs["deployment"], runs["simulation"], key)
        c.figure(res, f"deployment_over_simulation_{key}", ratio["median"], None, "ratio", pairs=ratio["pairs"])
    res["runs"] = {arm: {k: c.summary([x[k] for x in runs[arm]]) for k in runs[arm][0]} for arm in arms}
    res["details"] = details
    same = _same_bits(weights)
    res["same_weights_across_engines"] = same
    res["notes"].append(
        "deployment: every Flower message starts a fresh flwr-clientapp process (imports torch, loads the "
        "partition); a round is two message phases (train, evaluate) plus node discovery once per run"
    )
    res["notes"].append("cpu_s and peak_rss_mb cover the driver's process tree, not the SuperLink/SuperNodes")
    if not same:
        raise RuntimeError("the engines ended with different weights")
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
