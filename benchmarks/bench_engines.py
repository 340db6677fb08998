"""Case engines — the same small experiment on the simulation engine and the deployment engine.

Arms, interleaved (order alternates per repetition), each a whole ``python -m runner``
process in a fresh temp dir, same overrides (digits, MLP, FedAvg, ``num_clients=3``,
``train.local_epochs=1``, ``num_rounds=N``, a checkpoint every round):

- ``simulation``: ``engine=simulation`` (default): Flower's Ray simulation in the driver;
- ``deployment``: ``engine=deployment engine.superlink=…`` against a SuperLink and 3
  SuperNodes on loopback started once by this script (runner.engine.deployment.
  LocalFederation, ``--insecure``, ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` = ``--poll``,
  default 0.1 s; Flower's default is 1.0 s). Its start is timed separately
  (``federation_start_s``) and not part of any run;
- ``deployment_floor``: the floor Flower's process-per-message design allows, on the same
  federation: ``benchmarks/floor_app`` (a ClientApp that imports torch and returns the
  arrays it received; a ServerApp with Flower's FedAvg sending one train and one evaluate
  message to every node per round, over arrays of the MLP's shapes), submitted by
  ``benchmarks/floor_app/submit.py`` through the runner's own staging, private connection,
  ``flwr run`` and ``flwr log --stream`` (runner.engine.deployment), same ``num_rounds``.

Per run: ``wall_s`` (whole process), ``first_round_s`` (process start to the end of round
1: the first ``round 1/N`` line on the driver's console; for deployment the ServerApp's
line streamed back), ``per_round_s`` (median duration of rounds 2..N from metrics.jsonl:
one centralized row to the next; a round = train + federated evaluation + centralized
evaluation + checkpoint), ``round1_s`` (round 1 alone, same source), ``startup_s`` =
``first_round_s`` - ``round1_s`` (what a run costs before its first round starts: Hydra,
data and model checks, Ray start or FAB submit, ServerApp start, node discovery, the
initial centralized evaluation). Deployment runs also report Flower's own record of the run
(``<run dir>/.flwr/run.json``: pending -> running, ServerApp and ClientApp seconds,
traffic). The runner's two arms end with the same weights (checked: round N's checkpoint, bit for
bit). The floor: ``first_round_s`` is process start of its submit command to its echoed
``round 1/N`` line (the same path as the runner's), ``per_round_s``/``round1_s`` from the
ServerApp's own time stamps. Figures are medians over repetitions; ratios deployment /
simulation (no targets) and deployment / floor. Targets (issue 20): deployment per round /
the floor's per round <= 1.5; deployment launch to the end of round 1 <= 12 s. Each
deployment run also gets a ``breakdown`` of its launch and round 1 (runner.log time stamps:
driver start, preflight, checks, submit, ServerApp start, preparation and node discovery,
round 1's train and evaluate phases, the log stream's lag), the floor's likewise.

    python benchmarks/bench_engines.py [--quick] [--pairs N] [--num-rounds 5] [--poll 0.1] [--out FILE]
        [--arms simulation,deployment,deployment_floor]
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
FLOOR_PROGRESS = r"floor: round 1/\d+"
FLOOR_SUBMIT = Path(__file__).resolve().parent / "floor_app" / "submit.py"
ARMS = ("simulation", "deployment", "deployment_floor", "deployment_before")
BEFORE_REV = "7d59b96"  # the last commit before issue 20's work (deployment_before arm)


def settings(quick: bool, num_rounds: int | None) -> dict[str, int]:
    return {"num_rounds": num_rounds or (2 if quick else 5), "num_clients": 3, "local_epochs": 1}


def overrides(s: dict[str, int]) -> list[str]:
    return c.experiment_overrides(s)


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


def before_tree(rev: str) -> Path:
    """The whole runner (runner/, conf/, pyproject.toml: the deployment engine ships them as
    the Flower App) as of ``rev``, in a temp dir."""
    import subprocess

    root = c.before_tree(rev, ("runner", "conf"))
    text = subprocess.run(["git", "show", f"{rev}:pyproject.toml"], cwd=c.ROOT, capture_output=True, text=True)
    pyproject = text.stdout if text.returncode == 0 else (c.ROOT / "pyproject.toml").read_text()
    (root / "pyproject.toml").write_text(pyproject)
    return root


def one_run(
    arm: str, s: dict[str, int], extra: list[str], details: list, weights: dict, root: Path | None = None
) -> dict[str, float]:
    with c.Workdir(f"bench-engines-{arm}-") as cwd:
        r = c.run_timed(c.runner_cmd(*overrides(s), *extra), cwd, timeout=1800, env=c.runner_env(root)).check()
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
        record = _flower_record(run_dir) if arm in ("deployment", "deployment_before") else {}
        if arm in ("deployment", "deployment_before"):
            record["breakdown"] = _deployment_breakdown(run_dir, r.t0_epoch, first)
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


def _deployment_breakdown(run_dir: Path, t0: float, first_line: float) -> dict[str, float]:
    """Where a deployment run's launch and round 1 go (seconds, from runner.log; t0: the
    driver's process start, epoch)."""
    rows = c.read_log(run_dir / "runner.log")

    def at(text: str, logger: str | None = None) -> tuple[float, str] | None:
        return next(((t, m) for t, lg, m in rows if text in m and (logger is None or lg == logger)), None)

    online = at("SuperNodes online")
    submitted = at("submitted to")
    server = at("ServerApp of Flower run")
    train0, train1 = at("configure_train"), at("aggregate_train")
    eval0, eval1 = at("configure_evaluate"), at("aggregate_evaluate")
    round1 = at("round 1/")
    out: dict[str, float] = {}
    if not (online and submitted and server and train0 and train1 and eval0 and eval1 and round1):
        return out
    import re

    m = re.search(r"in ([0-9.]+)s", submitted[1])
    submit = float(m.group(1)) if m else float("nan")
    out["driver_start_and_preflight_s"] = online[0] - t0  # Hydra, config, `flwr supernode ls`
    out["driver_checks_s"] = submitted[0] - submit - online[0]  # data and model checks, run config
    out["submit_s"] = submit  # staging + `flwr run` (FAB build, upload)
    out["serverapp_start_s"] = server[0] - submitted[0]  # SuperExec poll, flwr-serverapp, FAB install, imports
    out["prep_and_discovery_s"] = train0[0] - server[0]  # data, model, initial evaluation, query phase
    out["round1_train_phase_s"] = train1[0] - train0[0]
    out["round1_between_phases_s"] = eval0[0] - train1[0]
    out["round1_evaluate_phase_s"] = eval1[0] - eval0[0]
    out["round1_rest_s"] = round1[0] - eval1[0]  # aggregation, centralized evaluation, checkpoint
    out["log_stream_lag_s"] = first_line - (round1[0] - t0)  # ServerApp's line -> driver's console
    return {k: round(v, 3) for k, v in out.items()}


def floor_run(address: str, s: dict[str, int], details: list) -> dict[str, float]:
    with c.Workdir("bench-engines-floor-") as cwd:
        out = cwd / "floor"
        cmd = [sys.executable, str(FLOOR_SUBMIT), "--superlink", address, "--num-rounds", str(s["num_rounds"])]
        r = c.run_timed([*cmd, "--out", str(out)], cwd, timeout=1800).check()
        first = r.first_line_at(FLOOR_PROGRESS)
        if first is None:
            raise RuntimeError("deployment_floor: no 'floor: round 1/N' line on the console")
        rows = c.read_jsonl(out / "stamps.jsonl")
        t = [float(x["t"]) for x in sorted((x for x in rows if "t" in x), key=lambda x: x["round"])]
        per_round = [b - a for a, b in zip(t[:-1], t[1:], strict=True)]
        phases = {(x["phase"], x["round"]): x for x in rows if "phase" in x}
        submitted = r.first_line_at(r"floor: Flower run \d+ submitted")
        breakdown = {}
        if t and submitted is not None and ("train", 1) in phases and ("evaluate", 1) in phases:
            tr, ev = phases[("train", 1)], phases[("evaluate", 1)]
            breakdown = {
                "submit_s": submitted,  # process start, staging, `flwr run`
                "serverapp_start_s": t[0] - r.t0_epoch - submitted,  # to just before round 1
                "round1_train_phase_s": tr["end"] - tr["start"],
                "round1_between_phases_s": ev["start"] - tr["end"],
                "round1_evaluate_phase_s": ev["end"] - ev["start"],
                "log_stream_lag_s": first - (t[1] - r.t0_epoch),
            }
        later = c.median(per_round[1:]) if len(per_round) > 1 else float("nan")
        round1 = per_round[0] if per_round else float("nan")
        record = _flower_record(out)
        details.append(
            {
                "per_round_s": [round(x, 4) for x in per_round],
                "first_round_line_s": round(first, 3),
                "wall_s": round(r.wall_s, 3),
                "breakdown": {k: round(v, 3) for k, v in breakdown.items()},
                **{k: v for k, v in record.items() if v is not None},
            }
        )
        return {
            "wall_s": r.wall_s,
            "cpu_s": r.cpu_s,
            "peak_rss_mb": r.peak_rss_mb,
            "first_round_s": first,
            "per_round_s": later,
            "round1_s": round1,
            "startup_s": first - round1,
        }


def _median_breakdowns(details: dict[str, list]) -> dict[str, dict[str, float]]:
    """Per arm, the median of each breakdown segment over repetitions."""
    out: dict[str, dict[str, float]] = {}
    for arm, runs in details.items():
        keys = [k for d in runs for k in d.get("breakdown", {})]
        segs = dict.fromkeys(keys)
        if segs:
            out[arm] = {k: round(c.median(d["breakdown"].get(k, float("nan")) for d in runs), 3) for k in segs}
    return out


FLOWER_NOTE = (
    "where a deployment message phase goes (Flower 1.42, both deployment arms alike): a SuperNode whose pull "
    "finds no message sleeps 3 s before it pulls again (hard-coded in flwr/supernode/start_client_internal.py), "
    "so each phase first waits 0-3 s for each node (the phase waits for the last of the 3: ~2.3 s on average); "
    "the node's SuperExec then starts a fresh flwr-clientapp process (polling every "
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL s), which imports Python, flwr and torch (~2 s of CPU each, three at "
    "once on this machine's cores) before it handles the message; the reply goes back through the SuperNode "
    "(0.5 s polls) and the SuperLink to the ServerApp, which pulls every 0.1 s (both arms; Flower's own HttpGrid "
    "sleeps 3 s between pulls). The floor's round is exactly that: two such phases and nothing else"
)
ENGINE_NOTE = (
    "deployment engine (runner/engine/deployment_app.py, issue 20): the ServerApp pulls replies every 0.1 s "
    "instead of Flower HttpGrid's 3 s (each phase - discovery, train, evaluate - ended on a 3-s step after its "
    "push: ~1.5 s lost per phase on average), and pushes node discovery's QUERY messages as soon as it starts, "
    "before it imports torch and prepares data and model, so the nodes' pull wait and query processes overlap "
    "that preparation; replies are sorted by partition id as before: same weights bit for bit"
)


def _breakdown_notes(breakdown: dict[str, dict[str, float]]) -> list[str]:
    notes = [FLOWER_NOTE, ENGINE_NOTE]
    labels = {"deployment": "deployment (runner.log)", "deployment_floor": "floor (its time stamps)"}
    for arm, segs in breakdown.items():
        parts = ", ".join(f"{k.removesuffix('_s')} {v:.2f}" for k, v in segs.items())
        notes.append(f"launch to the end of round 1, {labels.get(arm, arm)}, medians in s: {parts}")
    return notes


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
    ap.add_argument(
        "--arms", default=None, help=f"comma-separated subset of {','.join(ARMS)} (default: all; quick: no before)"
    )
    ap.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the deployment_before arm's runner")
    a = ap.parse_args(argv)
    if a.arms is None:
        a.arms = ",".join(x for x in ARMS if not (a.quick and x == "deployment_before"))
    chosen = [x.strip() for x in a.arms.split(",") if x.strip()]
    if not chosen or any(x not in ARMS for x in chosen):
        ap.error(f"--arms: choose from {', '.join(ARMS)}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the federation is stopped in `finally`
    pairs = a.pairs or (1 if a.quick else 2)
    s = settings(a.quick, a.num_rounds)
    res = c.new_result(CASE, a.quick, {**s, "pairs": pairs, "poll_interval_s": a.poll, "overrides": overrides(s)})
    base = Path(tempfile.mkdtemp(prefix="bench-fed-", dir="/tmp"))
    fed = LocalFederation(s["num_clients"], base, poll_interval=a.poll, env=c.bench_env())
    details: dict[str, list] = {arm: [] for arm in chosen}
    weights: dict[str, list] = {}
    before = before_tree(a.before_rev) if "deployment_before" in chosen else None
    res["config"]["before_rev"] = a.before_rev if before is not None else None
    try:
        t = time.monotonic()
        address = fed.start()
        federation_start = time.monotonic() - t
        c.log(f"[{CASE}] federation at {address} in {federation_start:.1f}s; {pairs} repetitions, {s}")
        every = {
            "simulation": lambda: one_run("simulation", s, [], details["simulation"], weights),
            "deployment": lambda: one_run(
                "deployment", s, ["engine=deployment", f"engine.superlink={address}"], details["deployment"], weights
            ),
            "deployment_floor": lambda: floor_run(address, s, details["deployment_floor"]),
            "deployment_before": lambda: one_run(
                "deployment_before",
                s,
                ["engine=deployment", f"engine.superlink={address}"],
                details["deployment_before"],
                weights,
                before,
            ),
        }
        arms = {arm: every[arm] for arm in chosen}
        runs = c.paired(arms, pairs, c.log)
    finally:
        stubborn = fed.stop()
        left = fed.processes()
        shutil.rmtree(base, ignore_errors=True)
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
    if stubborn or left:
        res["notes"].append(f"federation processes needed SIGKILL: {stubborn}; left: {len(left)}")
    c.figure(res, "federation_start_s", federation_start, None, "s")
    for arm in arms:
        for key in ("startup_s", "round1_s", "per_round_s", "first_round_s", "wall_s"):
            c.figure(res, f"{arm}_{key}", c.median(x[key] for x in runs[arm]), None, "s")
    if "deployment" in runs:  # issue 20's target: launch to the end of round 1
        first = c.median(x["first_round_s"] for x in runs["deployment"])
        c.figure(res, "deployment_first_round_s", first, "<= 12", "s")
    if "deployment_before" in runs:
        first = c.median(x["first_round_s"] for x in runs["deployment_before"])
        c.figure(res, "deployment_first_round_s_before", first, None, "s")
        if "deployment_floor" in runs:
            ratio = c.ratio_figure(runs["deployment_before"], runs["deployment_floor"], "per_round_s")
            name = "deployment_over_floor_per_round_before"
            c.figure(res, name, ratio["median"], None, "ratio", pairs=ratio["pairs"])
    if "deployment" in runs and "simulation" in runs:
        for key in ("startup_s", "per_round_s", "wall_s"):
            ratio = c.ratio_figure(runs["deployment"], runs["simulation"], key)
            c.figure(res, f"deployment_over_simulation_{key}", ratio["median"], None, "ratio", pairs=ratio["pairs"])
    if "deployment" in runs and "deployment_floor" in runs:
        for key, target in (("per_round_s", "<= 1.5"), ("first_round_s", None)):
            ratio = c.ratio_figure(runs["deployment"], runs["deployment_floor"], key)
            name = f"deployment_over_floor_{key.removesuffix('_s')}"
            c.figure(res, name, ratio["median"], target, "ratio", pairs=ratio["pairs"])
    res["runs"] = {arm: {k: c.summary([x[k] for x in runs[arm]]) for k in runs[arm][0]} for arm in arms}
    res["details"] = details
    res["breakdown"] = _median_breakdowns(details)
    same = _same_bits(weights) if weights else True
    res["same_weights_across_engines"] = same
    res["notes"].append(
        "deployment: every Flower message starts a fresh flwr-clientapp process (imports torch, loads the "
        "partition); a round is two message phases (train, evaluate) plus node discovery once per run"
    )
    res["notes"].append("cpu_s and peak_rss_mb cover the driver's process tree, not the SuperLink/SuperNodes")
    res["notes"] += _breakdown_notes(res["breakdown"])
    if not same:
        raise RuntimeError("the engines ended with different weights")
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
