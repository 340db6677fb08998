"""BENCHMARKS.md from the JSON results in benchmarks/results/ (``python -m benchmarks.report``)."""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT

ORDER = ["overhead", "floor", "rounds", "checkpoint_io", "resume", "scale", "sweep"]
TITLES = {
    "overhead": "1. Runner overhead (runner vs bare Flower)",
    "floor": "2. The floor (runner vs a plain PyTorch loop)",
    "checkpoint_io": "3. Checkpoint I/O",
    "resume": "4. Resume (start to first new round)",
    "scale": "5. Scale (10 / 100 / 1000 clients)",
    "sweep": "6. Sweep (12 jobs: one multirun vs 12 invocations)",
    "rounds": "7. Many rounds (per-round latency and whole run vs the floor; before / after)",
}

FINDINGS = """\
## What the benchmarks found, and what was done

Fixed in the runner (runner/engine.py; results bit-identical, see "Before / after" for the
paired measurements):

- **Flower starts Ray with a `runtime_env`** (raybackend.py `init_ray`: the driver's
  `sys.path` as `env_vars.PYTHONPATH`). Ray never gives an actor with a runtime env to the
  workers it prestarted at `ray.init`; it starts and sets up new worker processes (seen as
  `setup_worker.py` processes; 12-15 processes per run instead of 10). The runner now starts
  a local Ray itself with Flower's arguments and puts `PYTHONPATH` in the environment that
  raylet and its workers inherit (a cluster `address` or a user `runtime_env` still goes
  through Flower unchanged).
- **Flower's message pump is quadratic.** `vce_api.add_messages_to_queue` calls
  `InMemoryLinkState.get_message_ins(node_id, limit=1)` for every node every 0.1 s, and
  every call walks all stored messages through `_check_stored_messages`: N x M checks per
  sweep under the state lock and the driver's GIL. py-spy (`--gil`) at 1000 clients, all
  sampled: 77 % of the driver's GIL samples in that loop. The runner swaps in a pump that
  makes the same deliveries (per sweep and node, the first undelivered message in store
  order) in one pass.
- **Flower's engine takes up to 1 s to stop.** Its worker and reply threads block on
  `queue.get(timeout=1.0)` before checking the stop event, and `run_api` joins them after
  the last round (so does every job of a sweep). The runner gives those threads a view of
  the same queues whose waits are at most 50 ms: last round to "completed" went from
  ~1.2 s to ~0.25 s.

Tried and reverted (project decision):

- **Every data-touching process imports scikit-learn, datasets and flwr_datasets**
  (~1.9 s per process on this machine; the driver pays it serially before the engine
  starts, every Ray actor again in its first round) for millisecond work on digits. A
  bit-identical fast path (read digits.csv.gz as `load_digits` does, replay
  `StratifiedShuffleSplit`'s draws, IID shards as `Dataset.shard(contiguous=True)`) cut the
  first `client_split` from 1.9 s to 0.04 s and the default run by ~35 %, but was reverted:
  issue 2 asks for flwr-datasets partitioners and no hand-written partitioning. With
  `backend.reuse_workers` a sweep pays it once per process.

Found, not fixable in the runner's files (evidence in the sections above):

- **Per-process start-up that every Flower simulation pays**: Ray's head processes (GCS,
  raylet, dashboard head even with `include_dashboard=False`, dashboard agent, runtime-env
  agent, log monitor, autoscaler monitor: each a Python process importing Ray), then in
  every actor `import torch` and torch's lazy `import torch._dynamo` on the first
  optimizer (`Optimizer.add_param_group` is wrapped by `torch._disable_dynamo`, ~1.1 s per
  process). The floor pays torch once; the runner and bare Flower pay it in the driver and
  in each actor. `ray.init` exposes no switch for the monitor, log monitor or dashboard head.
- **Flower's polling granularity**: `InMemoryGrid.send_and_receive` sleeps 0.1 s between
  pulls (`pull_interval`, not settable through `run_simulation`) and the pump sweeps every
  0.1 s, so each round trip (train, evaluate, the discovery query) costs at least
  ~0.1-0.2 s however small the work: the floor's later rounds take ~0.02-0.08 s, the
  runner's ~0.25 s (bare Flower the same).
- **Noise**: on this shared machine single runs of either arm occasionally take 2-4x their
  median with the same CPU time (e.g. a 78 s runner run at 27 s CPU in an earlier
  overhead pass); the per-run CPU time and timelines in the JSON show such waits. Medians of
  interleaved pairs are what the targets are judged on. Case 2 was re-run on its own
  (`python -m benchmarks --only floor`) after the full pass of 2026-11-24 10:45, in which a
  neighbour's load made even the single-process floor take 24 s median (usually 6 s) at
  unchanged CPU time.
- **Per-message Ray cost**: each message is one `actor.run.remote(app_fn, message, cid,
  context)` round trip with the ClientApp pickled along; with one actor per core that is a
  few ms per message, which is what the 1000-client rows and the discovery probe show after
  the pump fix.
- **Node discovery** (runner/server_app.py `discover_partitions`, not this task's file):
  one query message per node at start-up, because Flower's node ids are random per run.
  Flower's `vce_api._register_nodes` already holds the node id -> partition id mapping and
  registers nodes in partition order; a suggested change: have `engine.simulate` capture
  that mapping (wrap `vce_api._register_nodes` as it wraps the pump) and let
  `discover_partitions` use it when present, falling back to the query. Its cost is in the
  discovery probe rows of case 5.
"""


def _load(results: Path, quick: bool) -> dict[str, dict[str, Any]]:
    out = {}
    for case in ORDER:
        p = results / f"{case}{'-quick' if quick else ''}.json"
        if p.exists():
            out[case] = json.loads(p.read_text())
            out[case]["_mtime"] = _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
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
                rows.append((f"checkpoint {r['model']}/{r['format']}: {key}", f"<= {targets[key]}", val, val <= targets[key], unit))
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
            lines.append(f"| {case}: {name} | {f['target'] or '—'} | {_fmt(f['value'], f['unit'])} | {_met(f['met'])} | {date} | {mach} |")
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
    }


def _runs_table(d: dict[str, Any]) -> list[str]:
    runs = d.get("runs") or {}
    if not runs or not all(isinstance(v, dict) and all(isinstance(x, dict) and "median" in x for x in v.values()) for v in runs.values()):
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
    if case == "checkpoint_io":
        out += ["| model | format | raw bytes | file bytes | size/raw | save s | raw write s | save/raw | save CPU s | submit blocking ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in d.get("results", []):
            out.append(
                f"| {r['model']} | {r['format']} | {r.get('raw_bytes')} | {r.get('file_bytes')} | {_fmt(r.get('size_vs_raw'))} | {_fmt(r.get('save_s'))} "
                f"| {_fmt(r.get('raw_write_s'))} | {_fmt(r.get('save_vs_raw'))} | {_fmt(r.get('save_cpu_s'))} | {_fmt(r.get('submit_block_ms'))} |"
            )
        out += ["", f"Repetitions: {d.get('reps')}; load average at start {d.get('machine', {}).get('loadavg_1m')}.", ""]
        return out
    out += [f"Config: `{json.dumps(d.get('config'))}`; load average start/end {d['machine'].get('loadavg_start')} / {d['machine'].get('loadavg_end')}.", ""]
    out += ["| figure | value | target | met | per pair |", "|---|---|---|---|---|"]
    for name, f in d["figures"].items():
        out.append(f"| {name} | {_fmt(f['value'], f['unit'])} | {f['target'] or '—'} | {_met(f['met'])} | {f.get('pairs', '')} |")
    out.append("")
    rt = _runs_table(d)
    if rt:
        out += [*rt, ""]
    if case == "floor" and "breakdown" in d:
        out += [
            "Where the runner's extra time goes (medians; runner segments from runner.log time stamps and metrics.jsonl `elapsed_s`, floor segments from its own timer):",
            "",
            "| segment | runner s | floor s | excess s |",
            "|---|---|---|---|",
        ]
        for k, v in d["breakdown"].items():
            out.append(f"| {k} | {v['runner_s']} | {v['floor_s']} | {v['excess_s']} |")
        out += ["", f"Floor reproduces the runner's accuracies bit for bit: {d.get('same_accuracies_as_runner')}.", ""]
    if case == "scale" and "runs" in d:
        out += ["| mode | clients | wall s | CPU s | peak RSS MB (tree) | processes | time to first round s | engine start s | per round s | trained per round |", "|---|---|---|---|---|---|---|---|---|---|"]
        for mode, by_n in d["runs"].items():
            for n, m in by_n.items():
                out.append(
                    f"| {mode} | {n} | {m['wall_s']} | {m['cpu_s']} | {m['peak_rss_mb']} | {m['peak_processes']} | {m['time_to_first_round_s']} | {m['engine_start_s']} | {m['per_round_s']} | {m['clients_trained_per_round']} |"
                )
        out.append("")
        pr = d.get("discovery_probe", {})
        if pr:
            out += [
                "Discovery probe (benchmarks/discovery_probe.py; warm Ray and actors; seconds): the runner's `discover_partitions`, once and again, next to a plain `grid.send_and_receive` of the same query messages; `flower_pump` rows use Flower's own message pump instead of the runner's.",
                "",
                "| clients | discover | discover again | send_and_receive | discover (flower_pump) | send_and_receive (flower_pump) |",
                "|---|---|---|---|---|---|",
            ]
            for n, m in pr.items():
                fp = d.get("discovery_probe_flower_pump", {}).get(n, {})
                out.append(f"| {n} | {m['discover_s']} | {m['discover_again_s']} | {m['flower_send_and_receive_s']} | {fp.get('discover_s', '—')} | {fp.get('flower_send_and_receive_s', '—')} |")
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


def fixes_section(results: Path) -> list[str]:
    p = results / "fixes.json"
    if not p.exists():
        return []
    d = json.loads(p.read_text())
    out = [
        "## Before / after: the runner fixes",
        "",
        f"`python -m benchmarks.bench_fixes --before-rev {d['config'].get('before_rev')}`: the runner with runner/engine.py, runner/dataset.py and "
        "runner/client_app.py as they were at that commit (everything else as now) vs the current tree, interleaved, same invocation. "
        f"{d['date']}, {_machine(d['machine'])}, load average {d['machine'].get('loadavg_start')} / {d['machine'].get('loadavg_end')}.",
        "",
        "| measurement | before | after | after/before (median of pairs) | per pair |",
        "|---|---|---|---|---|",
    ]
    for name, f in d["comparisons"].items():
        out.append(f"| {name} | {_fmt(f['before'])} | {_fmt(f['after'])} | {_fmt(f['ratio'], 'ratio')} | {f['pairs']} |")
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
        "python -m benchmarks            # full runs, ~20 min on 2 cores; results/*.json + BENCHMARKS.md",
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
        lines += ["**Quick mode**: tiny settings, one repetition, cases run concurrently — these numbers only prove the scripts work.", ""]
    if first:
        m = first["machine"]
        lines += [
            f"Machine: `nproc` = {m.get('nproc')}, RAM {m.get('ram_gb')} GB, CPU {m.get('cpu_model')}; Python {m.get('python')},"
            f" flwr {m.get('flwr_version')}, ray {m.get('ray_version')}, torch {m.get('torch_version')}.",
            "",
        ]
    lines += ["## Summary", "", *summary_rows(data), ""]
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
