"""The engine through ``python -m runner``, as a user runs it (subprocesses, ~1.5-2 min on 2 cores).

- Results do not depend on the fast paths: one fixed-seed config with ``engine.fast_paths``
  true and false gives bit-identical checkpoint weights and metric rows (``elapsed_s``
  aside). The two runs go side by side.
- Settings that cannot host a client (64 CPUs, a GPU, ``device=cuda`` on this CPU machine)
  are one ``error:`` line and exit 2 before anything starts.
- A setting that passes preflight but breaks Flower's engine (an actor option Ray rejects)
  ends the run at once with the engine's error: no wait for ``round_timeout``.
- Leftover processes: the driver of a running job is SIGKILLed; within ``REAP_WAIT_S``
  no process of that run (Ray's GCS, raylet, dashboard, agents, actors, the watchdog) is
  left. Without the runner's watchdog Ray's agents stay about a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers import FAST, read_metrics, run_dirs

pytestmark = pytest.mark.slow

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
}
SMALL = [*FAST, "num_rounds=3", "print_config=false"]
REAP_WAIT_S = 15.0


def start(args: list[str], cwd: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


def rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run_dir)]


def weights(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "checkpoints" / "round-0003.npz") as f:
        return dict(f)


def test_fast_paths_do_not_change_results(tmp_path: Path):
    dirs = {mode: tmp_path / mode for mode in ("fast", "flower")}
    procs = {}
    for mode, d in dirs.items():
        d.mkdir()
        procs[mode] = start([*SMALL, f"engine.fast_paths={'true' if mode == 'fast' else 'false'}"], d)
    for mode, p in procs.items():
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, f"{mode}: {err[-3000:]}"
        if mode == "fast":
            assert "fast path" not in err, "a fast path fell back on the installed Flower"
    (fast,) = run_dirs(dirs["fast"] / "outputs")
    (flower,) = run_dirs(dirs["flower"] / "outputs")
    assert rows(fast) == rows(flower)
    assert len(rows(fast)) == 1 + 3 * 3  # round 0 + (train, evaluate, centralized) x 3
    a, b = weights(fast), weights(flower)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: the cases below would run")
def test_what_cannot_host_a_client_is_one_line(tmp_path: Path):
    cases = {
        "backend.client_resources.num_cpus=64": (
            "error: backend.client_resources.num_cpus: 64 CPUs per client, but this Ray instance offers"
        ),
        "backend.client_resources.num_gpus=1": (
            "error: backend.client_resources.num_gpus: 1 GPU per client, but this machine has no GPU"
        ),
        "device=cuda": "error: device: cuda, but this process sees no CUDA GPU",
    }
    t = time.monotonic()
    procs = {}
    for i, override in enumerate(cases):
        d = tmp_path / str(i)
        d.mkdir()
        procs[override] = start([*SMALL, override], d)
    for override, p in procs.items():
        out, err = p.communicate(timeout=120)
        lines = [line for line in (out + err).splitlines() if line.strip()]
        assert p.returncode == 2, (override, out[-2000:], err[-2000:])
        assert "Traceback" not in out + err, override
        assert len(lines) <= 3, (override, lines)
        assert any(line.startswith(cases[override]) for line in lines), (override, lines)
    assert time.monotonic() - t < 60


def test_engine_failure_ends_the_run_at_once(tmp_path: Path):
    t = time.monotonic()
    p = start([*SMALL, "+backend.client_resources.bogus=1", "round_timeout=600"], tmp_path)
    _, err = p.communicate(timeout=120)
    assert time.monotonic() - t < 90, "the run waited for round_timeout"
    assert p.returncode == 1  # the engine failed during the run: not a setting error (2)
    assert "the simulation engine stopped: ValueError: Invalid option keyword bogus" in err, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: ")
    assert "An exception occurred" not in err and "Simulation Runtime crashed" not in err.split("Traceback")[0]
    (run,) = run_dirs(tmp_path / "outputs")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "simulation engine stopped" in summary["error"]


def _run_processes(driver: psutil.Process) -> dict[int, psutil.Process]:
    """The driver's descendants and every process in its session (Ray keeps the session)."""
    found = {c.pid: c for c in driver.children(recursive=True)}
    for p in psutil.process_iter():
        try:
            if p.pid != driver.pid and os.getsid(p.pid) == driver.pid:
                found.setdefault(p.pid, p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass
    return found


def test_nothing_outlives_a_killed_driver(tmp_path: Path):
    p = subprocess.Popen(
        [sys.executable, "-m", "runner", *FAST, "num_rounds=50", "print_config=false"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert p.stdout is not None
    seen_round = False
    for line in p.stdout:  # the run's own progress lines; it has 50 rounds to go
        if "round 1/" in line:
            seen_round = True
            break
    assert seen_round, "round 1 never came"
    time.sleep(1.0)  # the watchdog notes the actors' processes every 2 s; they exist by now
    procs = _run_processes(psutil.Process(p.pid))
    names = sorted({q.name() for q in procs.values() if q.is_running()})
    assert any("raylet" in n for n in names), names
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = time.monotonic()
    left: list[psutil.Process] = []
    while time.monotonic() - killed_at < REAP_WAIT_S:
        left = [q for q in procs.values() if q.is_running() and q.status() != psutil.STATUS_ZOMBIE]
        if not left:
            break
        time.sleep(0.25)
    leftovers = [f"{q.pid} {q.name()}" for q in left]
    for q in left:  # never leak them into the rest of the test session
        try:
            q.kill()
        except psutil.Error:
            pass
    assert not leftovers, f"still running {REAP_WAIT_S}s after the driver was killed: {leftovers}"
