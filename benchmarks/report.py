"""BENCHMARKS.md from the JSON results in benchmarks/results/ (``python -m benchmarks.report``)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT

ORDER = [
    "overhead", "floor", "rounds", "checkpoint_io", "resume", "scale", "sweep", "engines", "client_state", "algorithms",
    "lean",
]  # fmt: skip
TITLES = {
    "overhead": "1. Runner overhead (runner vs bare Flower)",
    "floor": "2. The floor (runner vs a plain PyTorch loop)",
    "checkpoint_io": "3. Checkpoint I/O",
    "resume": "4. Resume (start to first new round)",
    "scale": "5. Scale (10 / 100 / 1000 clients)",
    "sweep": "6. Sweep (12 jobs: one multirun vs 12 invocations)",
    "rounds": "7. Many rounds (per-round latency and whole run vs the floor; before / after)",
    "engines": "8. Engines (the same config on the simulation and the deployment engine)",
    "client_state": "9. Client state that scales (issue 18: blobs; before / after)",
    "algorithms": "10. Algorithms (learning check of the zoo: digits, 20 clients, Dirichlet 0.1)",
    "lean": "11. Lean client processes (issue 20: start-up, memory, 1,000 clients; before / after)",
}

FINDINGS = """\
## What the benchmarks found, and what was done

### Issue 20: lean client processes (runner/partition_cache.py, runner/lean_torch.py, runner/records.py)

Measured first (per-process CPU and peak RSS of the whole tree sampled every 0.1 s, cProfile of
the driver and of one process handling 200 train+evaluate message pairs, `-X importtime`):

- **Start-up was CPU on 2 cores.** The default run used ~14 s of CPU in ~10 s of wall time:
  the driver ~4.4 s (scikit-learn ~1.4 s and `datasets`/flwr-datasets ~1 s of it, to
  load and partition digits), each of the two actors ~4.1 s, Ray's Python agents ~1.6 s.
- **`torch._dynamo` in every training process.** torch.optim's `step()` runs `import
  torch._dynamo` and `graph_break()` even in eager mode, and `zero_grad`/`state_dict`/
  `add_param_group` import it through `torch._disable_dynamo`: ~0.5 s and ~150 MB (sympy,
  fx) in each actor and in each deployment message's process.
- **Per message** (one process, 1,000 one-sample clients): `torch.manual_seed` formats a
  stack trace for each lazy accelerator seed it queues (CUDA, XPU, MTIA: ~0.7 ms a call)
  and `Array.numpy()` parses every array's header with `ast.literal_eval` (~0.1 ms an array).
- **The run's last step at 1,000 clients** was the label-distribution plot: 10,000 bars, ~18 s.
- **Ray stopped after the run's last files**, ~1 s of `ray.shutdown()` at exit.

Done (same bits throughout: the digest tests, the before/after arms below end with the same
weights and metric rows):

- The partition cache is keyed by a data fingerprint (the loader's files, the loading
  libraries' versions, the runner's data code) and kept across processes, with the whole
  split for the server side: a run on data seen before imports none of scikit-learn,
  `datasets` or flwr-datasets anywhere, and a remote node partitions at most once.
- `runner.lean_torch`: torch.optim's built-in optimizers run without importing the compiler
  while nothing has imported it (and hand back to torch's own path once anything does).
- Client messages: arrays decoded from the npy bytes once the header is checked against the
  Array's dtype and shape; on a CPU-only process only the CPU generator is seeded.
- A single run starts Ray before its own imports and stops it on a thread as the rounds end.
- partitions.png draws one band per label past 100 clients.
- Deployment (helper's work, same bits): the ServerApp pulls replies every 0.1 s (Flower
  1.42's grid sleeps 3 s between pulls, so every phase ended on a 3-s step) and sends node
  discovery before it imports torch and prepares data and model.

Found, not removable from the runner's side:

- **Deployment's floor is Flower's.** A SuperNode that finds no message sleeps 3 s before it
  asks again (hard-coded in `flwr/supernode/start_client_internal.py`), every message starts a
  fresh `flwr-clientapp` process that imports flwr and torch (~2 s on 2 cores, three at once),
  and replies travel SuperNode -> SuperLink -> ServerApp on 0.5-s polls. The minimal
  ClientApp (benchmarks/floor_app: imports torch, echoes the arrays) pays all of it: its
  launch to the end of round 1 alone exceeds 12 s here.
- **Memory is torch's.** An actor that has imported torch (the CUDA build, the one that
  installs here) holds ~510 MB RSS, ~280 MB of it private, before any work; the driver holds
  torch too (the server's model and evaluation). Ray's GCS, raylet, dashboard agent,
  runtime-env agent and log monitor add ~360 MB RSS (~250 MB PSS).
- **Many small clients.** At 1,000 one-sample clients a round is 2,000 Flower messages:
  each is built, serialized, queued by Flower's simulation engine, sent through Ray and
  answered; the floor trains the same clients in one loop without any of that. The per-message
  cost left on the client side is ~1.25 ms (train and evaluate, one process); the rest is the
  driver's share of Flower's message path, on the same 2 cores as the actors.

### Issue 14: per-round latency and start-up (runner/engine/, `engine.fast_paths`)

Measured first (py-spy on the driver and on one actor, `--gil` for the driver; runner.log
and metrics.jsonl time stamps; a thread-traced run of the engine's phases):

- **A round was mostly waiting.** Flower's in-memory grid pulls replies every
  `pull_interval` (0.1 s), its message pump sweeps every 0.1 s, and a round makes two round
  trips (train, evaluate): 0.31 s per round before (case 7, median of 3), while the floor
  needs 0.08 s for the same work on one core. py-spy on a steady run: the driver holds the
  GIL a few percent of the time, the actors wait between messages (at 1000 clients, with
  one message per actor at a time, an actor idled 22 % of the time; 9 % with pipelining).
- **Start-up was serial and CPU-bound**: driver imports and data, then Ray's head (GCS,
  raylet, dashboard head, autoscaler monitor, log monitor, dashboard agent, runtime-env
  agent: five of them Python processes importing Ray), then two actors importing torch,
  flwr (`flwr.simulation` ~1.1 s), the ClientApp's modules, and in round 1 scikit-learn
  and `datasets` (~1.8 s per process) and `torch._dynamo` (~1.2 s per process, imported
  lazily by the first optimizer). On 2 cores the sum of CPU time, not the latency of any
  one step, sets the start-up wall time.
- **Exit took 3-4 s after the last round**: `ray.shutdown()` ~0.4 s, then the
  interpreter's final garbage collections over everything torch, flwr, ray and datasets
  allocated (~1.3 s measured alone).

Done (every piece is a fast path: shape-checked against the installed Flower at start,
Flower's own code with one log line when a shape differs, off with `engine.fast_paths=false`;
metrics and checkpoints are bit-identical either way: tests/test_engine_e2e.py):

- Messages move on events: the grid wakes the pump when it pushes; the pump delivers in one
  pass over the stored messages (Flower: one pass per node); the reply thread tells the grid
  which replies it stored and the grid pulls just those at once (a full pull still runs
  every second for what only a full pull reports). The grid is the runner's wrapper of
  Flower's (public `Grid` API only), which also ends the round loop when the engine dies.
- Pipelined actors: each actor gets its next message while it runs the current one (two in
  flight per actor, least busy first), instead of one message per actor and a driver round
  trip in between.
- A leaner local Ray: no autoscaler monitor and no dashboard head (`include_dashboard=False`
  alone still starts it); no `runtime_env` (kept from before).
- Ray and the actor pool start in `preflight`, on a thread of their own (Ray ties its head
  processes to that thread: it lives until `ray.shutdown()`), while the driver loads the
  data, builds the model and prints the config; each actor imports the ClientApp's modules
  and `torch._dynamo` meanwhile (`engine.warmup_imports`).
- At exit, after `ray.shutdown()`, `gc.freeze()`: the interpreter's last collections skip
  the heap (exit 3.2-4.0 s -> 0.6-1.1 s).

Found, not removable from the engine's side (figures in the cases below):

- **Data path in every actor** (runner/data.py, the lead's): each actor imports
  scikit-learn, `datasets` and `flwr_datasets` and partitions the whole dataset to get its
  own indices: ~1.8 s CPU and ~200 MB RSS per process, on top of the driver doing the same.
  On the default run (driver + 2 actors) that is ~5.4 s of ~21 s CPU and ~600 MB of the
  ~3.2 GB RSS sum. Proposal: the driver writes the partitions it computes anyway to
  `<run dir>/.cache/partitions-<partition_key>.npz` (uncompressed: `x`, `y`, `test_idx`,
  one index array per client; atomic write), and `runner.data._partitions` memory-maps that
  file when it exists (key = the same `partition_key`, so a stale file is never used),
  falling back to computing (deployment engine, another machine). Actors then never import
  scikit-learn or `datasets`.
- **Node discovery** (runner/server_app.py `discover_partitions`): one query message per
  node at start, because Flower's node ids are random per run. Flower's
  `vce_api._register_nodes` returns the node id -> partition id mapping; the engine could
  capture it (as it wraps the pump) and hand it to the ServerApp, saving a round trip per
  node (1000 clients: ~1.5 s).
- **Log monitor**: with Flower's default `log_to_driver=True` Ray runs a log monitor (a
  Python process, ~80 MB, ~1 s CPU at start) to copy worker output to the console.
  `backend.init_args.log_to_driver=false` drops it (the engine then skips it); whether the
  runner's default should do so is a product decision (conf/config.yaml).
- **Per-process costs Ray imposes**: dashboard agent and runtime-env agent (started by the
  raylet; no switch), `flwr.simulation` and torch in each actor, `torch._dynamo` on the
  first optimizer step (the floor pays it once; the runner once per actor).
- **1000 clients, all sampled (target <= 2 s per round)**: the work itself does not fit.
  The floor (same task code, no Flower, no Ray, one thread) takes 4.8-5.7 s per round for
  1000 clients (~5 ms to train and ~0.9 ms to evaluate one client of ~1 sample with the
  runner's task), so two cores need >= ~2.5 s even without any engine. The runner's actors
  are ~90 % busy at that scale; per message they spend ~3 ms beyond the floor's client work:
  Ray's deserialization of the message, Flower's `Array.numpy()` (an `np.load` with a header
  `literal_eval` per array), `torch.manual_seed` recording a stack trace per call for a CUDA
  seed it queues lazily (`linecache.checkcache` in the profile), and `client_split`'s
  per-call permutation. 8.8 s per round measured (10.4 s before) at load average 6-9.
- **Noise**: the machine is shared (load average 5-9 during these runs). The floor is one
  CPU-bound process and loses most when neighbours take the cores (its 60-round run took
  13.6 s in a quiet pair and 35 s in two loaded ones at ~the same CPU time); the runner, with
  three busy processes, gets a larger share. So the medians of case 7 flatter the runner:
  in its one quiet pair the runner took 1.33x the floor per round and 1.55x for the whole
  60-round run (before: 3.73x and 3.33x), just above the targets of 1.25x and 1.5x. CPU
  time is the steadier measure: 60 rounds cost the runner ~30 s of CPU (before: ~34 s;
  the floor: ~12-14 s), 5 rounds ~21 s (before ~24 s, bare Flower ~26 s).

### Earlier findings (issue 9; still in place)

- **Flower starts Ray with a `runtime_env`** (raybackend.py `init_ray`: the driver's
  `sys.path` as `env_vars.PYTHONPATH`). Ray never gives an actor with a runtime env to the
  workers it prestarted at `ray.init`; it starts and sets up new worker processes. The
  runner starts a local Ray itself with Flower's arguments and puts `PYTHONPATH` in the
  environment that raylet and its workers inherit (a cluster `address` or a user
  `runtime_env` still goes through Flower unchanged).
- **Flower's message pump is quadratic** (N x M `_check_stored_messages` per sweep: at
  1000 clients 77 % of the driver's GIL samples). The runner's pump makes the same
  deliveries in one pass.
- **Flower's engine takes up to 1 s to stop** (its threads block on `queue.get(timeout=1.0)`
  before they look at the stop event); the runner's views of those queues wait 50 ms.
"""


def _load(results: Path, quick: bool) -> dict[str, dict[str, Any]]:
    out = {}
    for case in ORDER:
        p = results / f"{case}{'-quick' if quick else ''}.json"
        if p.exists():
            out[case] = json.loads(p.read_text())
            out[case]["_mtime"] = _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        s = f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    else:
        s = str(v)
    return f"{s} {unit}".strip() if unit and unit != "ratio" else (f"{s}×" if unit == "ratio" else s)


def _met(m: Any) -> str:
    return {True: "yes", False: "**no**", None: "—"}.get(m, str(m))


def _machine(m: dict[str, Any]) -> str:
    return f"{m.get('nproc')} CPU, {m.get('ram_gb')} GB, {m.get('cpu_model')}"


def _ckpt_rows(d: dict[str, Any]) -> list[tuple[str, str, Any, bool | None, str]]:
    rows = []
    targets = d.get("targets", {})
    for r in d.get("results", []):
        for key, unit in (("save_vs_raw", "ratio"), ("size_vs_raw", "ratio"), ("submit_block_ms", "ms")):
            if key in r and key in targets:
                val = r[key]
                rows.append(
                    (
                        f"checkpoint {r['model']}/{r['format']}: {key}",
                        f"<= {targets[key]}",
                        val,
                        val <= targets[key],
                        unit,
                    )
                )
    return rows


def summary_rows(data: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| figure | target | measured | met | date | machine |", "|---|---|---|---|---|---|"]
    for case in ORDER:
        d = data.get(case)
        if d is None:
            lines.append(f"| {case} | | not run | | | |")
            continue
        if d.get("missing"):
            lines.append(f"| {case} | | **missing**: {d.get('note', '')} | | | |")
            continue
        date = d.get("date") or d.get("_mtime", "")
        mach = _machine(d["machine"]) if "nproc" in d.get("machine", {}) else f"{d.get('machine', {}).get('cpus')} CPU"
        if case == "checkpoint_io":
            for name, target, val, met, unit in _ckpt_rows(d):
                lines.append(f"| {name} | {target} | {_fmt(val, unit)} | {_met(met)} | {date} | {mach} |")
            continue
        for name, f in d["figures"].items():
            if f["target"] is None and not _headline(case, name):
                continue
            lines.append(
                f"| {case}: {name} | {f['target'] or '—'} | {_fmt(f['value'], f['unit'])} | {_met(f['met'])} "
                f"| {date} | {mach} |"
            )
    return lines


def _headline(case: str, name: str) -> bool:
    return (case, name) in {
        ("floor", "runner_over_floor_wall"),
        ("floor", "runner_over_floor_cpu"),
        ("scale", "sampled10_1000_wall_s"),
        ("scale", "all_1000_per_round_s_before"),
        ("overhead", "runner_before_over_bare_wall"),
        ("overhead", "runner_over_runner_before_wall"),
        ("overhead", "runner_before_peak_rss_gb"),
        ("rounds", "per_round_over_floor_before"),
        ("rounds", "whole_run_over_floor_before"),
        ("rounds", "per_round_over_floor_flower"),
        ("rounds", "whole_run_over_floor_flower"),
        ("scale", "all_1000_wall_s"),
        ("scale", "discovery_1000_s"),
        ("engines", "deployment_per_round_s"),
        ("engines", "deployment_floor_per_round_s"),
        ("engines", "deployment_floor_first_round_s"),
    }


def _runs_table(d: dict[str, Any]) -> list[str]:
    runs = d.get("runs") or {}
    if not runs or not all(
        isinstance(v, dict) and all(isinstance(x, dict) and "median" in x for x in v.values()) for v in runs.values()
    ):
        return []
    lines = ["| arm | measure | median | min | max | n |", "|---|---|---|---|---|---|"]
    for arm, ms in runs.items():
        for m, s in ms.items():
            lines.append(f"| {arm} | {m} | {s['median']} | {s['min']} | {s['max']} | {s['n']} |")
    return lines


def case_section(case: str, d: dict[str, Any]) -> list[str]:
    out = [f"### {TITLES[case]}", ""]
    if d.get("missing"):
        return [*out, f"**Missing**: {d.get('note')}. `python -m benchmarks` calls it as soon as it exists.", ""]
    doc = _doc(case)
    if doc:
        out += [doc, ""]
    if case == "algorithms":
        return [*out, *_algorithms_section(d)]
    if case == "checkpoint_io":
        out += [
            "| model | format | raw bytes | file bytes | size/raw | save s | raw write s | save/raw | save CPU s "
            "| submit blocking ms |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in d.get("results", []):
            out.append(
                f"| {r['model']} | {r['format']} | {r.get('raw_bytes')} | {r.get('file_bytes')} "
                f"| {_fmt(r.get('size_vs_raw'))} | {_fmt(r.get('save_s'))} "
                f"| {_fmt(r.get('raw_write_s'))} | {_fmt(r.get('save_vs_raw'))} | {_fmt(r.get('save_cpu_s'))} "
                f"| {_fmt(r.get('submit_block_ms'))} |"
            )
        out += [
            "",
            f"Repetitions: {d.get('reps')}; load average at start {d.get('machine', {}).get('loadavg_1m')}.",
            "",
        ]
        return out
    out += [
        f"Config: `{json.dumps(d.get('config'))}`; load average start/end {d['machine'].get('loadavg_start')}"
        f" / {d['machine'].get('loadavg_end')}.",
        "",
    ]
    out += ["| figure | value | target | met | per pair |", "|---|---|---|---|---|"]
    for name, f in d["figures"].items():
        out.append(
            f"| {name} | {_fmt(f['value'], f['unit'])} | {f['target'] or '—'} | {_met(f['met'])} "
            f"| {f.get('pairs', '')} |"
        )
    out.append("")
    rt = _runs_table(d)
    if rt:
        out += [*rt, ""]
    if case == "floor" and "breakdown" in d:
        out += [
            "Where the runner's extra time goes (medians; runner segments from runner.log time stamps and "
            "metrics.jsonl `elapsed_s`, floor segments from its own timer):",
            "",
            "| segment | runner s | floor s | excess s |",
            "|---|---|---|---|",
        ]
        for k, v in d["breakdown"].items():
            out.append(f"| {k} | {v['runner_s']} | {v['floor_s']} | {v['excess_s']} |")
        out += ["", f"Floor reproduces the runner's accuracies bit for bit: {d.get('same_accuracies_as_runner')}.", ""]
    if case == "engines" and d.get("breakdown"):
        out += _engines_breakdown(d["breakdown"])
    if case == "scale" and "runs" in d:
        out += [
            "| mode | clients | wall s | CPU s | peak RSS MB (tree) | processes | time to first round s "
            "| engine start s | per round s | trained per round |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for mode, by_n in d["runs"].items():
            for n, m in by_n.items():
                out.append(
                    f"| {mode} | {n} | {m['wall_s']} | {m['cpu_s']} | {m['peak_rss_mb']} | {m['peak_processes']} "
                    f"| {m['time_to_first_round_s']} | {m['engine_start_s']} | {m['per_round_s']} "
                    f"| {m['clients_trained_per_round']} |"
                )
        out.append("")
        pr = d.get("discovery_probe", {})
        if pr:
            out += [
                "Discovery probe (benchmarks/discovery_probe.py; warm Ray and actors; seconds): the runner's "
                "`discover_partitions`, once and again, next to a plain `grid.send_and_receive` of the same query "
                "messages; `flower_pump` rows use Flower's own message pump instead of the runner's.",
                "",
                "| clients | discover | discover again | send_and_receive | discover (flower_pump) "
                "| send_and_receive (flower_pump) |",
                "|---|---|---|---|---|---|",
            ]
            for n, m in pr.items():
                fp = d.get("discovery_probe_flower_pump", {}).get(n, {})
                out.append(
                    f"| {n} | {m['discover_s']} | {m['discover_again_s']} | {m['flower_send_and_receive_s']} "
                    f"| {fp.get('discover_s', '—')} | {fp.get('flower_send_and_receive_s', '—')} |"
                )
            out.append("")
    for note in d.get("notes", []):
        out.append(f"- {note}")
    if d.get("notes"):
        out.append("")
    return out


ENGINES_SEGMENTS = {  # breakdown key -> what it covers (benchmarks/bench_engines.py)
    "driver_start_and_preflight_s": "driver start: Hydra, config, preflight (`flwr supernode ls`)",
    "driver_checks_s": "driver: data and model checks, run config",
    "submit_s": "submit: staging + `flwr run` (floor: from its process start)",
    "serverapp_start_s": "SuperExec starts the ServerApp, its first line (floor: to just before round 1)",
    "prep_and_discovery_s": "ServerApp: imports, data, model, initial evaluation, node discovery",
    "round1_train_phase_s": "round 1: train messages out, last reply in",
    "round1_between_phases_s": "round 1: aggregation until the evaluate messages go out",
    "round1_evaluate_phase_s": "round 1: evaluate messages out, last reply in",
    "round1_rest_s": "round 1: centralized evaluation, checkpoint",
    "log_stream_lag_s": "round 1's line: ServerApp -> `flwr log --stream` -> console",
}


def _engines_breakdown(breakdown: dict[str, dict[str, float]]) -> list[str]:
    """Launch to the end of round 1, segment by segment, deployment next to the floor."""
    dep, floor = breakdown.get("deployment", {}), breakdown.get("deployment_floor", {})
    keys = [k for k in ENGINES_SEGMENTS if k in dep or k in floor]
    keys += [k for k in [*dep, *floor] if k not in keys]
    out = [
        "Where launch-to-round-1 goes (medians; deployment from runner.log time stamps, the floor from its "
        "ServerApp's own stamps; seconds):",
        "",
        "| segment | deployment s | floor s | what |",
        "|---|---|---|---|",
    ]
    for k in dict.fromkeys(keys):
        out.append(
            f"| {k.removesuffix('_s')} | {_fmt(dep.get(k))} | {_fmt(floor.get(k))} | {ENGINES_SEGMENTS.get(k, '')} |"
        )
    out.append("")
    return out


def _pm(s: dict[str, Any]) -> str:
    return "—" if s.get("mean") is None else f"{s['mean']:.3f} ± {s['std']:.3f}"


def _algorithms_section(d: dict[str, Any]) -> list[str]:
    """The zoo's table (mean ± std over seeds of the final round) and each paper's claim."""
    cfg = d.get("config", {})
    out = [
        f"Config: {len(cfg.get('seeds', []))} seeds {cfg.get('seeds')}, {cfg.get('num_rounds')} rounds, "
        f"`{' '.join(cfg.get('overrides', []))}`; one multirun of {len(cfg.get('algorithms', []))} x "
        f"{len(cfg.get('seeds', []))} jobs in {d.get('wall_s')} s; load average start/end "
        f"{d['machine'].get('loadavg_start')} / {d['machine'].get('loadavg_end')}.",
        "",
        "| algorithm | centralized_accuracy | evaluate_accuracy | evaluate_personal_accuracy |",
        "|---|---|---|---|",
    ]
    for algo, row in d.get("table", {}).items():
        out.append(
            f"| {algo} | {_pm(row['centralized_accuracy'])} | {_pm(row['evaluate_accuracy'])} "
            f"| {_pm(row['evaluate_personal_accuracy'])} |"
        )
    out += [
        "",
        "| claim (rule, fixed before the runs) | claimant | baseline | difference | verdict |",
        "|---|---|---|---|---|",
    ]
    for cl in d.get("claims", []):
        if cl.get("holds") is None:
            out.append(f"| {cl['claimant']} vs {cl['baseline']} | | | | {cl.get('note')} |")
            continue
        verdict = "holds" if cl["holds"] else "**does not hold**"
        if cl["within_seed_noise"]:
            verdict += " (within one std)"
        out.append(
            f"| {cl['rule']} | {cl['claimant_mean']:.3f} ± {cl['claimant_std']:.3f} "
            f"| {cl['baseline_mean']:.3f} ± {cl['baseline_std']:.3f} | {cl['difference']:+.3f} | {verdict} |"
        )
    out.append("")
    for note in d.get("notes", []):
        out.append(f"- {note}")
    if d.get("notes"):
        out.append("")
    return out


def _doc(case: str) -> str:
    import importlib

    try:
        mod = importlib.import_module(f"benchmarks.bench_{case}")
    except Exception:  # noqa: BLE001 - another owner's script may not import cleanly here
        return ""
    text = (mod.__doc__ or "").strip().split("\n\n")
    return "\n\n".join(p for p in text[1:] if not p.strip().startswith("python "))


ISSUE14 = [  # (label, case, before figure, after figure, target)
    (
        "per-round wall, rounds 2..N / floor's per-round",
        "rounds",
        "per_round_over_floor_before",
        "per_round_over_floor",
        "<= 1.25",
    ),
    ("whole N-round run / floor", "rounds", "whole_run_over_floor_before", "whole_run_over_floor", "<= 1.5"),
    (
        "default 5-round run / bare Flower",
        "overhead",
        "runner_before_over_bare_wall",
        "runner_over_bare_wall",
        "<= 0.7",
    ),
    ("1000 clients all sampled, per round (s)", "scale", "all_1000_per_round_s_before", "all_1000_per_round_s", "<= 2"),
    (
        "peak RSS of the default run, process tree (GB)",
        "overhead",
        "runner_before_peak_rss_gb",
        "runner_peak_rss_gb",
        "<= 2.5",
    ),
    (
        "peak PSS of the default run, process tree (GB)",
        "overhead",
        "runner_before_peak_pss_gb",
        "runner_peak_pss_gb",
        "—",
    ),
    ("runner wall / runner before, default run", "overhead", None, "runner_over_runner_before_wall", "—"),
]


def issue14_section(data: dict[str, dict[str, Any]]) -> list[str]:
    """Before / after of every figure of issue 14, each pair from one invocation of its case."""
    rows = []
    for label, case, before, after, target in ISSUE14:
        d = data.get(case)
        if not d or after not in d.get("figures", {}):
            continue
        fa = d["figures"][after]
        fb = d["figures"].get(before) if before else None
        unit = fa["unit"]
        rows.append(
            f"| {label} | {_fmt(fb['value'], unit) if fb else '—'} | {_fmt(fa['value'], unit)} | {target} "
            f"| {fb.get('pairs', '') if fb else ''} | {fa.get('pairs', '')} | {d.get('date', '')} |"
        )
    if not rows:
        return []
    rev = next((d["config"].get("before_rev") for d in data.values() if d.get("config", {}).get("before_rev")), None)
    return [
        "## Before / after: issue 14 (engine)",
        "",
        f'"Before" is the runner with its engine (runner/engine/, conf/engine/) as of `{rev}`, run from a temp copy of'
        ' the tree as one more arm of the same invocation; "after" is this tree. Ratios are medians of per-pair'
        " ratios (the pairs are listed); the machine was shared and loaded (load average in each case's section).",
        "",
        "| figure | before | after | target | before, per pair | after, per pair | date |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]


ISSUE18 = [  # (label, figure key of the after arm; the before arm's is <key>_before)
    (
        "bytes written per round ÷ one weights file (200 clients, 10 sampled, SCAFFOLD, cnn)",
        "bytes_per_round_over_weights",
    ),
    ("checkpoint dir after R rounds ÷ (R × (sampled + 2) × weights), keep_last=null", "dir_over_bound"),
    ("peak driver RSS, 1,000 − 10 clients with state (MB)", "driver_rss_1000_minus_10_mb"),
    ("resume time to first round, 1,000 ÷ 10 clients with state", "resume_time_to_first_round_1000_over_10"),
    ("per-round wall, 1,000 ÷ 10 clients with state (10 sampled)", "per_round_1000_over_10"),
]


def issue18_section(data: dict[str, dict[str, Any]]) -> list[str]:
    """Before / after of every figure of issue 18, both arms from one invocation."""
    d = data.get("client_state")
    if not d:
        return []
    figs = d.get("figures", {})
    rows = []
    for label, key in ISSUE18:
        fa, fb = figs.get(key), figs.get(f"{key}_before")
        if not fa:
            continue
        met = "yes" if fa.get("met") else ("**no**" if fa.get("met") is False else "—")
        rows.append(
            f"| {label} | {_fmt(fb['value'], fb['unit']) if fb else '—'} | {_fmt(fa['value'], fa['unit'])} "
            f"| {fa.get('target') or '—'} | {met} |"
        )
    rev = d.get("config", {}).get("before_rev")
    return [
        "## Before / after: issue 18 (client state)",
        "",
        f'`python benchmarks/bench_client_state.py`, {d.get("date", "")}: "before" is runner/checkpoint/ and'
        f" runner/client_state.py as of `{rev}` (one state file per round holding every client, all states in"
        ' memory), run from a temp copy of the tree in the same invocation; "after" is this tree (content-addressed'
        " blobs). Targets apply to the after arm.",
        "",
        "| figure | before | after | target | met |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


ISSUE20 = [  # (label, case, before figure, after figure, target)
    (
        "whole 60-round run ÷ floor",
        "lean",
        "rounds_whole_run_over_floor_before",
        "rounds_whole_run_over_floor",
        "<= 1.3",
    ),  # fmt: skip
    (
        "per round, rounds 2..60 ÷ floor",
        "lean",
        "rounds_per_round_over_floor_before",
        "rounds_per_round_over_floor",
        "<= 1.15",
    ),
    (
        "default 5-round run ÷ bare Flower (data cache warm)",
        "lean",
        "default_runner_before_over_bare_wall",
        "default_runner_over_bare_wall",
        "<= 0.6",
    ),
    (
        "default 5-round run ÷ bare Flower, first run (cold cache)",
        "lean",
        None,
        "default_runner_cold_over_bare_wall",
        "—",
    ),  # fmt: skip
    (
        "peak RSS, sum of the tree, default run (GB)",
        "lean",
        "default_runner_before_peak_rss_gb",
        "default_runner_peak_rss_gb",
        "<= 2.5",
    ),  # fmt: skip
    (
        "peak PSS, sum of the tree, default run (GB)",
        "lean",
        "default_runner_before_peak_pss_gb",
        "default_runner_peak_pss_gb",
        "<= 1.5",
    ),  # fmt: skip
    (
        "1,000 clients all sampled, per round ÷ floor",
        "lean",
        "many_per_round_over_floor_before",
        "many_per_round_over_floor",
        "<= 1.3",
    ),
    ("one train message, fresh client process: wall (s)", "lean", "client_before_wall_s", "client_after_wall_s", "—"),
    ("one train message, fresh client process: CPU (s)", "lean", "client_before_cpu_s", "client_after_cpu_s", "—"),
    (
        "one train message, fresh client process: peak RSS (MB)",
        "lean",
        "client_before_peak_rss_mb",
        "client_after_peak_rss_mb",
        "—",
    ),  # fmt: skip
    (
        "`import runner.client_app` (s, -X importtime)",
        "lean",
        "client_importtime_runner_client_app_before_s",
        "client_importtime_runner_client_app_after_s",
        "—",
    ),  # fmt: skip
    (
        "deployment, 3 SuperNodes: per round ÷ the minimal ClientApp's round",
        "engines",
        "deployment_over_floor_per_round_before",
        "deployment_over_floor_per_round",
        "<= 1.5",
    ),
    (
        "deployment: launch to end of round 1 (s)",
        "engines",
        "deployment_first_round_s_before",
        "deployment_first_round_s",
        "<= 12",
    ),
    ("deployment: per round (s)", "engines", "deployment_before_per_round_s", "deployment_per_round_s", "—"),
    ("deployment: the minimal ClientApp's round (s)", "engines", None, "deployment_floor_per_round_s", "—"),
    ("deployment: the minimal ClientApp, to round 1 (s)", "engines", None, "deployment_floor_first_round_s", "—"),
]


def issue20_section(data: dict[str, dict[str, Any]]) -> list[str]:
    """Before / after of every figure of issue 20; each pair from one invocation of its case."""
    rows = []
    for label, case, before, after, target in ISSUE20:
        d = data.get(case)
        if not d or after not in d.get("figures", {}):
            continue
        fa = d["figures"][after]
        fb = d["figures"].get(before) if before else None
        met = "yes" if fa.get("met") else ("**no**" if fa.get("met") is False else "—")
        rows.append(
            f"| {label} | {_fmt(fb['value'], fb['unit']) if fb else '—'} | {_fmt(fa['value'], fa['unit'])} "
            f"| {target} | {met} | {fa.get('pairs', '')} | {case}, {d.get('date', '')} |"
        )
    if not rows:
        return []
    lean = data.get("lean") or {}
    rev = lean.get("config", {}).get("before_rev")
    bits = lean.get("bits") or {}
    same = ", ".join(f"{k}: {'yes' if v else '**NO**'}" for k, v in bits.items())
    return [
        "## Before / after: issue 20 (lean client processes)",
        "",
        f'`python benchmarks/bench_lean.py` and `python benchmarks/bench_engines.py`: "before" is the whole runner'
        f" (runner/, conf/) as of `{rev}`, the last commit before issue 20's work, run from a temp copy of the"
        " tree as one more arm of the same invocation (the deployment engine ships that tree as the Flower"
        ' App); "after" is this tree. Ratios are medians of per-pair ratios (after\'s pairs listed).',
        "",
        "| figure | before | after | target | met | after, per pair | case, date |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Same results: {same or 'not run'}.",
        "",
    ]


def fixes_section(results: Path) -> list[str]:
    p = results / "fixes.json"
    if not p.exists():
        return []
    d = json.loads(p.read_text())
    out = [
        "## Before / after: the runner fixes of issue 9",
        "",
        f"`python -m benchmarks.bench_fixes --before-rev {d['config'].get('before_rev')}`: the runner with "
        "runner/engine.py, runner/dataset.py and "
        "runner/client_app.py as they were at that commit (everything else as now) vs the current tree, "
        "interleaved, same invocation. "
        f"{d['date']}, {_machine(d['machine'])}, load average {d['machine'].get('loadavg_start')} "
        f"/ {d['machine'].get('loadavg_end')}.",
        "",
        "| measurement | before | after | after/before (median of pairs) | per pair |",
        "|---|---|---|---|---|",
    ]
    for name, f in d["comparisons"].items():
        out.append(
            f"| {name} | {_fmt(f['before'])} | {_fmt(f['after'])} | {_fmt(f['ratio'], 'ratio')} | {f['pairs']} |"
        )
    out.append("")
    return out


def write_report(results: Path = RESULTS_DIR, path: Path = ROOT / "BENCHMARKS.md", quick: bool = False) -> None:
    data = _load(results, quick)
    first = next((d for d in data.values() if "nproc" in d.get("machine", {})), None)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m benchmarks` from the JSON in `benchmarks/results/` (do not edit by hand;"
        " narrative lives in benchmarks/report.py). One command runs every case and rewrites this file:",
        "",
        "```bash",
        "python -m benchmarks            # full runs, ~40 min on 2 cores; results/*.json + BENCHMARKS.md",
        "python -m benchmarks --quick    # every script in smoke-test mode (< 2 min; what CI runs)",
        "python benchmarks/bench_overhead.py [--quick] [--pairs N]   # any case alone",
        "```",
        "",
        "Every measured command is a separate process in a fresh temp dir with `HF_HUB_OFFLINE=1"
        " FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0`. Wall time is whole-process wall"
        " time. The machine is shared and noisy: figures are medians, and ratios are medians of"
        " per-pair ratios of runs interleaved in the same invocation (order alternating AB, BA, …)."
        " Slow cases use 3 pairs (resume, floor) or a single repetition (scale, sweep), as each"
        " section says. CPU time (user+sys of the whole process tree, sampled) is given where"
        " wall time is dominated by the neighbours.",
        "",
    ]
    if quick:
        lines += [
            "**Quick mode**: tiny settings, one repetition, cases run concurrently — these numbers only prove the"
            " scripts work.",
            "",
        ]
    if first:
        m = first["machine"]
        lines += [
            f"Machine: `nproc` = {m.get('nproc')}, RAM {m.get('ram_gb')} GB, CPU {m.get('cpu_model')};"
            f" Python {m.get('python')},"
            f" flwr {m.get('flwr_version')}, ray {m.get('ray_version')}, torch {m.get('torch_version')}.",
            "",
        ]
    lines += ["## Summary", "", *summary_rows(data), ""]
    lines += issue14_section(data)
    lines += issue18_section(data)
    lines += issue20_section(data)
    lines += fixes_section(results)
    if not quick:
        lines += [FINDINGS]
    lines += ["## Cases", ""]
    for case in ORDER:
        if case in data:
            lines += case_section(case, data[case])
    path.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    write_report(quick="--quick" in sys.argv)
    print(f"wrote {ROOT / 'BENCHMARKS.md'}")
