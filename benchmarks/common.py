"""Shared harness of the benchmark cases: timed subprocesses, paired runs, results JSON.

Every measured command runs as a separate process in a fresh temporary working directory
(its ``outputs/``/``multirun/`` land there and are deleted afterwards), with
``HF_HUB_OFFLINE=1 FLWR_TELEMETRY_ENABLED=0 RAY_USAGE_STATS_ENABLED=0``. Wall time is
whole-process wall time (``Popen`` to exit). While a process runs, a thread sums the RSS of
the process and all its descendants (Ray's GCS, raylet, agents, workers) every 0.2 s.
Each output line is time-stamped as it arrives, so progress lines can be timed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
PY = sys.executable

ENV = {
    "HF_HUB_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}

SAMPLE_PERIOD_S = 0.2

# Quick mode (CI smoke tests) runs one Ray actor per simulation instead of one per core:
# the scripts' code paths are the same, and the cases can run side by side in < 2 minutes.
QUICK_RUNNER = ["backend.client_resources.num_cpus=2"]
QUICK_CPUS_PER_CLIENT = 2


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **ENV}
    # The repo root first, so `runner` and `benchmarks` import from this checkout even in a
    # temp cwd (an editable install points here as well; this also covers a plain clone).
    # BENCH_RUNNER_ROOT=<dir with runner/ and conf/> measures another copy of the runner
    # (how the "before" figures in BENCHMARKS.md were taken).
    roots = [os.environ["BENCH_RUNNER_ROOT"]] if os.environ.get("BENCH_RUNNER_ROOT") else []
    roots.append(str(ROOT))
    env["PYTHONPATH"] = os.pathsep.join([*roots, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env.update(extra or {})
    return env


# -- one timed process ---------------------------------------------------------------------
@dataclass
class ProcResult:
    args: list[str]
    rc: int
    wall_s: float
    peak_rss_mb: float
    peak_procs: int
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)
    cwd: str = ""
    timed_out: bool = False
    cpu_s: float = math.nan  # user+sys of the process tree (see run_timed)
    t0_epoch: float = math.nan  # time.time() at start, to line up with log timestamps
    peak_pss_mb: float = math.nan  # proportional set size of the tree: shared pages split, not repeated

    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def figures(self) -> dict[str, float]:
        """What every case records of a timed process: wall and CPU time, peak memory."""
        return {
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_pss_mb": self.peak_pss_mb,
        }

    def first_line_at(self, pattern: str) -> float | None:
        rx = re.compile(pattern)
        for t, line in self.lines:
            if rx.search(line):
                return t
        return None

    def check(self) -> ProcResult:
        if self.rc != 0:
            tail = "".join(line for _, line in self.lines[-40:])
            raise RuntimeError(
                f"command failed (rc={self.rc}, timed_out={self.timed_out}): {' '.join(self.args)}\n{tail}"
            )
        return self


def _psutil() -> Any:
    """psutil: installed, or the copy Ray ships in ray/thirdparty_files (no ray import)."""
    try:
        import psutil
    except ImportError:
        import importlib.util

        spec = importlib.util.find_spec("ray")
        if spec is None or not spec.submodule_search_locations:
            raise
        sys.path.append(os.path.join(list(spec.submodule_search_locations)[0], "thirdparty_files"))
        import psutil
    return psutil


def _pss(pid: int) -> int:
    """Proportional set size in bytes (Linux smaps_rollup), 0 where unreadable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree_pss(proc: Any) -> int:
    psutil = _psutil()
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    return sum(_pss(p.pid) for p in procs)


def _tree_rss(proc: Any, cpu_seen: dict[int, float]) -> tuple[int, int]:
    """(sum of RSS, number of processes) of ``proc`` and its descendants; records CPU."""
    psutil = _psutil()

    total, n = 0, 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
            cpu_seen[p.pid] = t.user + t.system
            n += 1
        except psutil.Error:
            pass
    return total, n


def run_timed(
    args: Sequence[str],
    cwd: Path,
    timeout: float = 900,
    env: dict[str, str] | None = None,
    sample_rss: bool = True,
) -> ProcResult:
    """Run ``args`` in ``cwd``; whole-process wall time, peak tree RSS, time-stamped lines."""
    psutil = _psutil()

    lines: list[tuple[float, str]] = []
    peak = [0, 0, 0]  # RSS sum, processes, PSS sum
    cpu_seen: dict[int, float] = {}  # pid -> last seen user+sys seconds
    t0_epoch = time.time()
    t0 = time.monotonic()
    p = subprocess.Popen(
        list(args),
        cwd=cwd,
        env=env or bench_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: a timeout kills all it started
    )

    def read() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append((time.monotonic() - t0, line))

    done = threading.Event()

    def sample() -> None:
        try:
            ps = psutil.Process(p.pid)
        except psutil.Error:
            return
        i = 0
        while not done.is_set():
            rss, n = _tree_rss(ps, cpu_seen)
            peak[0] = max(peak[0], rss)
            peak[1] = max(peak[1], n)
            if i % 5 == 0:  # PSS reads smaps: every 5th sample (1 s) keeps the sampler light
                peak[2] = max(peak[2], _tree_pss(ps))
            i += 1
            done.wait(SAMPLE_PERIOD_S)

    waited: list[Any] = []

    def reap() -> None:  # wait4: exit status plus the CPU time of the whole reaped tree
        waited.append(os.wait4(p.pid, 0))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sampler = threading.Thread(target=sample, daemon=True)
    if sample_rss:
        sampler.start()
    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    reaper.join(timeout)
    timed_out = reaper.is_alive()
    if timed_out:
        _kill_group(p.pid)
        reaper.join()
    wall = time.monotonic() - t0
    _, status, usage = waited[0]
    rc = os.waitstatus_to_exitcode(status)
    p.returncode = rc  # reaped above; keep Popen from waiting again
    done.set()
    _kill_group(p.pid)  # anything it left behind in its group (a crashed run's Ray)
    reader.join(timeout=5)
    if sample_rss:
        sampler.join(timeout=5)
    # CPU of the tree: the last sample of each process seen (a process loses at most its last
    # 0.2 s), or what wait4 reports for the process and the children it reaped, if more.
    cpu = max(sum(cpu_seen.values()), usage.ru_utime + usage.ru_stime)
    return ProcResult(
        list(args), rc, wall, peak[0] / 2**20, peak[1], lines, str(cwd), timed_out, cpu, t0_epoch, peak[2] / 2**20
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Workdir:
    """A fresh temporary cwd for one measured process; removed on exit unless kept."""

    def __init__(self, prefix: str = "bench-", keep: bool = False) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep = keep

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: Any) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def runner_cmd(*overrides: str) -> list[str]:
    return [PY, "-m", "runner", *overrides]


def experiment_overrides(s: dict[str, int]) -> list[str]:
    """The experiment's size (``num_rounds``, ``num_clients``, ``train.local_epochs`` from
    ``s``) plus a plain console: a progress line per round, no config tree."""
    return [
        f"num_rounds={s['num_rounds']}",
        f"num_clients={s['num_clients']}",
        f"train.local_epochs={s['local_epochs']}",
        "progress=log",
        "print_config=false",
    ]


def run_dirs(root: Path) -> list[Path]:
    """Hydra run dirs under ``root`` (those with ``.hydra``), oldest first by path."""
    return sorted(p.parent for p in root.glob("**/.hydra"))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


_LOG_TS = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[([^\]]+)\]\[(\w+)\] - (.*)$")


def read_log(path: Path) -> list[tuple[float, str, str]]:
    """runner.log as (epoch seconds, logger, message)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _LOG_TS.match(line)
        if m:
            ts = _dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append((ts, m.group(2), m.group(4)))
    return out


# -- statistics ----------------------------------------------------------------------------
def median(xs: Iterable[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def summary(xs: Sequence[float]) -> dict[str, Any]:
    xs = [float(x) for x in xs]
    return {
        "median": round(median(xs), 4),
        "min": round(min(xs), 4) if xs else math.nan,
        "max": round(max(xs), 4) if xs else math.nan,
        "n": len(xs),
        "values": [round(x, 4) for x in xs],
    }


def paired(
    arms: dict[str, Callable[[], dict[str, float]]], pairs: int, log: Callable[[str], None] = print
) -> dict[str, list[dict[str, float]]]:
    """Run the arms interleaved ``pairs`` times (order alternates: AB, BA, AB, …).

    Each arm returns a dict of measurements; the result maps arm -> list (one per pair).
    """
    names = list(arms)
    out: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for i in range(pairs):
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            t = time.monotonic()
            m = arms[n]()
            out[n].append(m)
            log(
                f"  pair {i + 1}/{pairs} {n}: "
                + ", ".join(f"{k}={v:.3f}" for k, v in m.items() if isinstance(v, (int, float)))
                + f"  ({time.monotonic() - t:.0f}s)"
            )
    return out


def ratio_figure(num: list[dict[str, float]], den: list[dict[str, float]], key: str) -> dict[str, Any]:
    """Per-pair ratios num/den of ``key`` and their median."""
    ratios = [a[key] / b[key] for a, b in zip(num, den, strict=True)]
    return {"median": round(median(ratios), 4), "pairs": [round(r, 4) for r in ratios]}


# -- machine and results -------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": platform.processor() or platform.machine(),
        "ram_gb": None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gb"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    for mod in ("flwr", "ray", "torch", "numpy", "hydra"):
        try:
            info[f"{mod}_version"] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing library only leaves a field out
            pass
    return info


def new_result(case: str, quick: bool, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "case": case,
        "quick": quick,
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "config": config,
        "figures": {},
        "notes": [],
    }


def figure(
    result: dict[str, Any], key: str, value: float, target: str | None, unit: str, met: bool | None = None, **extra: Any
) -> None:
    """One reported figure: value, its target (text such as "<= 1.05") and whether met."""
    value = float(value)
    if met is None and target is not None:
        met = _meets(value, target)
    result["figures"][key] = {"value": round(value, 4), "target": target, "unit": unit, "met": met, **extra}


def _meets(value: float, target: str) -> bool | None:
    m = re.match(r"^\s*(<=|<|>=|>)\s*([0-9.]+)", target)
    if not m or not math.isfinite(value):
        return None
    op, bound = m.group(1), float(m.group(2))
    return {"<=": value <= bound, "<": value < bound, ">=": value >= bound, ">": value > bound}[op]


def finish(result: dict[str, Any], out: Path | None) -> dict[str, Any]:
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = out or RESULTS_DIR / f"{result['case']}{'-quick' if result['quick'] else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")
    for k, f in result["figures"].items():
        print(f"  {k}: {f['value']} {f['unit']} (target {f['target']}, met={f['met']})")
    return result


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(type(o).__name__)


def case_args(description: str, pairs_default: int) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="tiny settings, one repetition: proves the script works (CI)")
    ap.add_argument(
        "--out", type=Path, default=None, help="results JSON (default: benchmarks/results/<case>[-quick].json)"
    )
    ap.add_argument(
        "--pairs", type=int, default=None, help=f"paired repetitions (default {pairs_default}; 1 with --quick)"
    )
    return ap


def log(msg: str) -> None:
    print(msg, flush=True)


# -- the runner's config, and the runner as it was -----------------------------------------
def composed_config(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The runner's resolved config for ``overrides`` (what ``python -m runner`` would run)."""
    from hydra import compose, initialize_config_dir

    from runner.config import to_container

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return to_container(compose("config", overrides=list(overrides)))


# What the "before" arms replace: the engine, as of the revision given (default: the last
# commit before the engine work of issues 11/14).
BEFORE_REV = "cac80c1"
BEFORE_PATHS = ("runner/engine", "conf/engine")


def before_tree(rev: str = BEFORE_REV, paths: Sequence[str] = BEFORE_PATHS) -> Path:
    """A temp copy of runner/ and conf/ with ``paths`` as they were at ``rev``.

    Run the runner from it with ``runner_env(root)``; remove it with shutil.rmtree.
    """
    root = Path(tempfile.mkdtemp(prefix="bench-before-"))
    shutil.copytree(ROOT / "runner", root / "runner", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "conf", root / "conf")
    for path in paths:
        shutil.rmtree(root / path, ignore_errors=True)
        (root / path).mkdir(parents=True)
        listing = subprocess.run(
            ["git", "ls-tree", "-r", "--name-only", rev, "--", path],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if not listing:
            raise RuntimeError(f"{path} does not exist at {rev}")
        for f in listing:
            text = subprocess.run(
                ["git", "show", f"{rev}:{f}"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            (root / f).write_text(text)
    return root


def runner_env(root: Path | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """bench_env(), with ``root`` (a ``before_tree``) first on PYTHONPATH if given."""
    env = bench_env(extra)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), env["PYTHONPATH"]])
    return env
