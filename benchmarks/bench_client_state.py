"""Case 9 — client state that scales (issue 18): before (one state file with every client,
rewritten every round; the tree at ``BEFORE_REV``) and after (content-addressed blobs), in
one invocation.

SCAFFOLD with model=cnn (``checkpoint.format=safetensors``, ``keep_last=null``), each figure
measured for both arms:

- **bytes per round** ÷ one weights file: a fresh run of 200 clients, 10 sampled
  (``fraction_train = fraction_evaluate = 0.05``), R rounds; a round's bytes are its weights,
  state file, manifest and the client-state blobs it adds (before: its state file holds
  every client that ever trained). Target ``<= 1.2 × (sampled + 2)``.
- **checkpoint dir after R rounds** ÷ ``R × (sampled + 2) × weights``, same run. Target <= 1.2.
- **1,000 vs 10 clients with state**: a round-1 checkpoint in which *every* client has a
  SCAFFOLD variate (written by this script from a real 10-client run, each client's
  variate perturbed so all differ; the before arm gets the older layout, the after arm
  blobs), resumed for R more rounds with 10 sampled per round. Peak RSS of the driver
  process (sampled every 0.05 s; Ray's processes excluded), resume time to the first round
  (summary.json ``time_to_first_round_s``) and the median per-round wall time
  (metrics.jsonl, resumed rounds after the first). Targets: ``+200 MB``, ``1.2×``, ``1.2×``.

    python benchmarks/bench_client_state.py [--quick] [--out FILE]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks import common as c  # noqa: E402

CASE = "client_state"
# The last commit before issue 18: client states in one state file per round, all in memory.
BEFORE_REV = "6cedd80"
BEFORE_FILES = ("runner", "conf")


def before_tree(rev: str = BEFORE_REV) -> Path:
    """runner/ and conf/ as at ``rev``: the whole runner of then, not its checkpoint package
    alone (mixed with today's runner, an older package misses what later modules import)."""
    root = Path(tempfile.mkdtemp(prefix="bench-before-state-"))
    files = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "--", *BEFORE_FILES],
        cwd=c.ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        text = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=c.ROOT, capture_output=True, text=True, check=True)
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(text.stdout)
    return root


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "model": "mlp",
            "fresh_clients": 20,
            "sampled": 2,
            "rounds": 2,
            "sizes": (4, 20),
            "extra": ["train.local_epochs=1", *c.QUICK_RUNNER],
        }
    return {"model": "cnn", "fresh_clients": 200, "sampled": 10, "rounds": 3, "sizes": (10, 1000), "extra": []}


def overrides(s: dict[str, Any], n: int, rounds: int) -> list[str]:
    frac = min(1.0, s["sampled"] / n)
    return [
        "strategy=scaffold",
        f"model={s['model']}",
        f"num_clients={n}",
        f"strategy.fraction_train={frac!r}",
        f"strategy.fraction_evaluate={frac!r}",
        f"num_rounds={rounds}",
        "checkpoint.format=safetensors",
        "checkpoint.phase=evaluate",
        "progress=log",
        *s["extra"],
    ]


def run_driver(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800) -> dict[str, float]:
    """Run ``cmd``; whole-process wall time and the peak RSS of that one process (the driver)."""
    psutil = c._psutil()
    t0 = time.monotonic()
    p = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    peak = [0]
    out: list[str] = []

    def sample() -> None:
        try:
            ps = psutil.Process(p.pid)
            while p.poll() is None:
                peak[0] = max(peak[0], ps.memory_info().rss)
                time.sleep(0.05)
        except psutil.Error:
            pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    reader = threading.Thread(target=lambda: out.extend(p.stdout or []), daemon=True)
    reader.start()
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        c._kill_group(p.pid)
        rc = p.wait()
    wall = time.monotonic() - t0
    c._kill_group(p.pid)
    sampler.join(5)
    reader.join(5)
    if rc != 0:
        raise RuntimeError(f"rc={rc}: {' '.join(cmd)}\n{''.join(out[-40:])}")
    return {"wall_s": wall, "driver_peak_rss_mb": peak[0] / 2**20}


def _files_size(m: dict[str, Any]) -> int:
    return sum(int(e["size"]) for e in m["files"].values() if e)


def written_per_round(ckpt: Path) -> tuple[dict[int, int], int, int]:
    """(bytes each round's save wrote, weights file bytes, dir bytes) of a checkpoints dir."""
    seen: set[str] = set()
    per_round: dict[int, int] = {}
    weights = 0
    for path in sorted(ckpt.glob("round-*.json")):
        m = json.loads(path.read_text())
        weights = int(m["files"]["weights"]["size"])
        new = {n: int(e["size"]) for n, e in (m.get("blobs") or {}).items() if n not in seen}
        seen |= set(new)
        per_round[int(m["round"])] = _files_size(m) + path.stat().st_size + sum(new.values())
    on_disk = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    return per_round, weights, on_disk


def fresh_bytes(s: dict[str, Any], env: dict[str, str], cwd: Path) -> tuple[dict[str, Any], Path]:
    """Figures of a fresh run, and its round-1 manifest."""
    cwd.mkdir(parents=True)
    run_driver(c.runner_cmd(*overrides(s, s["fresh_clients"], s["rounds"])), cwd, env)
    (run,) = c.run_dirs(cwd / "outputs")
    per_round, weights, on_disk = written_per_round(run / "checkpoints")
    ratios = {r: b / weights for r, b in per_round.items()}
    return {
        "weights_bytes": weights,
        "bytes_per_round_over_weights": {str(r): round(v, 3) for r, v in ratios.items()},
        "max_bytes_per_round_over_weights": max(ratios.values()),
        "dir_bytes": on_disk,
        "dir_over_bound": on_disk / (s["rounds"] * (s["sampled"] + 2) * weights),
    }, run / "checkpoints" / "round-0001.json"


# ------------------------------------------------------------------ states for every client


def all_clients_checkpoint(seed: Path, n: int, s: dict[str, Any], out: Path, layout: int) -> Path:
    """The seed's round 1 (the after arm's fresh run) with a state for each of ``n``
    clients (client i: the i mod k-th seed client's variate + i * 1e-6), for the config of
    an n-client run; ``layout`` 2 is the
    older one (every client's arrays in the state file), 3 blobs."""
    from runner.checkpoint.fingerprint import fingerprint
    from runner.checkpoint.formats import save_arrays
    from runner.checkpoint.store import CheckpointData, load_checkpoint, write_checkpoint
    from runner.client_state import ClientStateStore
    from runner.stateful import pack

    loaded = load_checkpoint(seed)
    comps = loaded.manifest["state"]["components"]
    from runner.stateful import unpack

    seeds = unpack(comps["clients"], loaded.state_arrays)
    keys = sorted(seeds, key=int)
    states = {}
    for pid in range(n):
        base = seeds[keys[pid % len(keys)]]
        states[str(pid)] = _perturbed(base, pid * 1e-6)
    strategy_arrays = {k: v for k, v in loaded.state_arrays.items() if not k.startswith("clients/")}
    cfg = c.composed_config(overrides(s, n, 1 + s["rounds"]))
    state = dict(loaded.manifest["state"])
    out.mkdir(parents=True)
    if layout == 3:
        store = ClientStateStore()
        for pid, st in states.items():
            store.put(int(pid), st)
        data = CheckpointData(
            round=1,
            phase="evaluate",
            weights=loaded.weights,
            state_arrays=strategy_arrays,
            state={**state, "components": {**comps, "clients": {}}},
            metrics=loaded.manifest["metrics"],
            fingerprint=fingerprint(cfg),
            config=cfg,
            clients=store.records(),
        )
        return write_checkpoint(out, data, "safetensors")
    skeleton, client_arrays = pack(states, prefix="clients")
    manifest = {k: v for k, v in loaded.manifest.items() if k != "blobs"}
    manifest["state"] = {**state, "layout": 2, "components": {**comps, "clients": skeleton}}
    manifest["config"], manifest["fingerprint"] = cfg, fingerprint(cfg)
    files = {}
    for what, arrays in (("weights", loaded.weights), ("state", {**strategy_arrays, **client_arrays})):
        name = manifest["files"][what]["name"]
        sha, size = save_arrays(out / name, arrays, "safetensors")
        files[what] = {"name": name, "sha256": sha, "size": size, "arrays": len(arrays)}
    manifest["files"] = files
    path = out / seed.name
    path.write_text(json.dumps(manifest, indent=1))
    return path


def _perturbed(value: Any, eps: float) -> Any:
    if isinstance(value, dict):
        return {k: _perturbed(v, eps) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return (value + np.asarray(eps, dtype=value.dtype)).astype(value.dtype)
    return value


def resumed(s: dict[str, Any], n: int, manifest: Path, env: dict[str, str]) -> dict[str, float]:
    with c.Workdir("bench-state-resume-") as cwd:
        r = run_driver(c.runner_cmd(*overrides(s, n, 1 + s["rounds"]), f"resume={manifest}"), cwd, env)
        (run,) = c.run_dirs(cwd / "outputs")
        summary = json.loads((run / "summary.json").read_text())
        if summary["status"] != "completed" or not summary["resumed_from"]:
            raise RuntimeError(f"{run}: did not resume and complete: {summary}")
        log = (run / "runner.log").read_text()
        if "clients" not in next(line for line in log.splitlines() if "resuming from" in line):
            raise RuntimeError(f"{run}: client states were not restored")
        rows = c.read_jsonl(run / "metrics.jsonl")
        cen = [float(row["elapsed_s"]) for row in rows if row["phase"] == "centralized" and row["round"] >= 1]
        rounds_s = [b - a for a, b in zip(cen, cen[1:], strict=False)]
        per_round = rounds_s[1:] or rounds_s
        return {
            **r,
            "time_to_first_round_s": float(summary["time_to_first_round_s"]),
            "per_round_s": c.median(per_round),
        }


def main(argv: list[str] | None = None) -> dict:
    a = c.case_args(__doc__.splitlines()[0], pairs_default=1).parse_args(argv)
    s = settings(a.quick)
    lo, hi = s["sizes"]
    res = c.new_result(CASE, a.quick, {**s, "before_rev": BEFORE_REV, "format": "safetensors"})
    before_root = before_tree()
    envs = {"before": c.runner_env(before_root), "after": c.runner_env()}
    runs: dict[str, dict[str, Any]] = {"before": {}, "after": {}}
    # Quick mode (CI) resumes only the after arm: its figures prove the script works.
    resume_arms = ["after"] if a.quick else ["before", "after"]
    try:
        with c.Workdir("bench-state-") as work:
            for arm, env in envs.items():
                c.log(f"[{CASE}] {arm}: fresh run, {s['fresh_clients']} clients, {s['sampled']} sampled")
                runs[arm]["fresh"], seed = fresh_bytes(s, env, work / f"fresh-{arm}")
                c.log(f"  {runs[arm]['fresh']}")
            for arm in resume_arms:
                env = envs[arm]
                for n in (lo, hi):
                    manifest = all_clients_checkpoint(
                        seed, n, s, work / f"{arm}-{n}" / "checkpoints", 2 if arm == "before" else 3
                    )
                    runs[arm][str(n)] = resumed(s, n, manifest, env)
                    c.log(f"[{CASE}] {arm}: resumed with {n} clients with state: {runs[arm][str(n)]}")
    finally:
        shutil.rmtree(before_root, ignore_errors=True)
    bound = 1.2 * (s["sampled"] + 2)
    for arm in ("before", "after"):
        target = (lambda t: t) if arm == "after" else (lambda t: None)  # noqa: E731  targets apply to after
        fresh = runs[arm]["fresh"]
        suffix = "" if arm == "after" else "_before"
        c.figure(
            res,
            f"bytes_per_round_over_weights{suffix}",
            fresh["max_bytes_per_round_over_weights"],
            target(f"<= {bound:g}"),
            "×",
        )
        c.figure(res, f"dir_over_bound{suffix}", fresh["dir_over_bound"], target("<= 1.2"), "×")
        if arm not in resume_arms:
            continue
        small, big = runs[arm][str(lo)], runs[arm][str(hi)]
        c.figure(
            res,
            f"driver_rss_{hi}_minus_{lo}_mb{suffix}",
            big["driver_peak_rss_mb"] - small["driver_peak_rss_mb"],
            target("<= 200"),
            "MB",
        )
        c.figure(
            res,
            f"resume_time_to_first_round_{hi}_over_{lo}{suffix}",
            big["time_to_first_round_s"] / small["time_to_first_round_s"],
            target("<= 1.2"),
            "×",
        )
        c.figure(
            res, f"per_round_{hi}_over_{lo}{suffix}", big["per_round_s"] / small["per_round_s"], target("<= 1.2"), "×"
        )
    res["runs"] = runs
    res["notes"].append(f"before = runner/ and conf/ at {BEFORE_REV}; targets apply to the after arm")
    res["notes"].append(
        "bytes per round: the maximum over the run's rounds; the 1,000-client runs resume from a checkpoint in which "
        "every client has state (a real 10-client round 1, each variate perturbed), 10 sampled per round"
    )
    return c.finish(res, a.out)


if __name__ == "__main__":
    main()
