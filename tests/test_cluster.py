"""Joining a running Ray cluster: a head started here, the runner as a user runs it.

The cluster is this test's own: ``ray start --head --block`` on 127.0.0.1 with its own
ports and a short ``--temp-dir`` (Ray's socket paths must stay under the 107-byte
AF_UNIX limit), in a new session, so every process of it (GCS, raylet, agents, the
workers that run the ClientApp actors) shares one process group.

It is stopped by signalling that process group, not with ``ray stop``: ``ray stop``
terminates every Ray process it can find on the machine by name, including other users'
and other test runs' clusters. Afterwards psutil checks that nothing of this cluster is
left (by process group and by the temp dir in the command line).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.helpers import SAMPLED, read_metrics, run_cli, run_dirs

pytestmark = pytest.mark.slow

RUN = ["num_rounds=3", "num_clients=4", "train.local_epochs=1", "progress=log", "print_config=false", *SAMPLED]


def _join(address: str) -> str:
    # ``++``: add the key or override it, whether or not conf/config.yaml declares
    # ``backend.init_args.address`` (``init_args: {}`` is a struct node: a plain override fails)
    return f"++backend.init_args.address={address}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ray_cli() -> str:
    beside = Path(sys.executable).with_name("ray")  # the ray of this environment
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


class RayHead:
    """A one-node Ray cluster owned by this test (started and stopped here)."""

    def __init__(self, temp_dir: Path, num_cpus: int = 2) -> None:
        self.temp_dir = temp_dir
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = temp_dir / "ray-start.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
        cmd = [
            _ray_cli(), "start", "--head", "--block",
            "--node-ip-address", "127.0.0.1",
            "--port", str(self.port),
            "--temp-dir", str(temp_dir),
            "--num-cpus", str(num_cpus),
            "--include-dashboard", "false",
            "--disable-usage-stats",
            # The defaults of these are fixed port numbers: two clusters on one machine collide.
            "--ray-client-server-port", str(_free_port()),
            "--dashboard-port", str(_free_port()),
            "--dashboard-agent-listen-port", str(_free_port()),
        ]  # fmt: skip
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.pgid = self.proc.pid  # a new session: its leader's pid is the group id

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Ray runtime started" in self.log.read_text():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"ray head did not start:\n{self.log.read_text()[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        """Every live process of this cluster: its process group, or its temp dir in the cmdline."""
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid == os.getpid():
                    continue
                mine = os.getpgid(p.pid) == self.pgid or any(str(self.temp_dir) in a for a in p.info["cmdline"] or [])
                if mine and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.Error, ProcessLookupError):
                pass
        return found

    def stop(self, grace: float = 20) -> list[str]:
        """SIGTERM the cluster (as ``ray stop`` does, but only this one), SIGKILL what stays.

        Returns the processes that needed SIGKILL.
        """
        procs = self.processes()
        for p in procs:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace)
        stubborn = []
        for p in alive:
            try:
                stubborn.append(" ".join(p.cmdline())[:200])
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return stubborn


@pytest.fixture(scope="module")
def ray_head() -> Iterator[RayHead]:
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: socket path limit
    head = RayHead(temp_dir)
    try:
        head.wait_ready()
        yield head
    finally:
        stubborn = head.stop()
        left = [" ".join(p.cmdline())[:200] for p in head.processes()]
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {left}"
        assert not stubborn, f"cluster processes ignored SIGTERM: {stubborn}"


def _driver_jobs(head: RayHead) -> set[str]:
    """Ids of the drivers (ray.init connections) the cluster has seen, from its log names."""
    return {p.name.split("_")[0] for p in head.temp_dir.glob("session_*/logs/python-core-driver-*.log")}


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "checkpoints" / "round-0003.npz") as f:
        return dict(f)


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run_dir)]


def test_run_on_a_ray_cluster_equals_a_local_run(tmp_path: Path, ray_head: RayHead):
    on_cluster, local = tmp_path / "cluster", tmp_path / "local"
    on_cluster.mkdir()
    local.mkdir()

    proc = run_cli([*RUN, _join(ray_head.address)], cwd=on_cluster, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_c,) = run_dirs(on_cluster / "outputs")
    summary = json.loads((run_c / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == 3
    assert _driver_jobs(ray_head), "the run connected to the test's cluster, not a local Ray"

    proc = run_cli(RUN, cwd=local, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_l,) = run_dirs(local / "outputs")

    assert _rows(run_c) == _rows(run_l)
    a, b = _weights(run_c), _weights(run_l)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def test_sweep_jobs_reuse_one_cluster_connection(tmp_path: Path, ray_head: RayHead):
    drivers_before = _driver_jobs(ray_head)
    args = ["-m", "seed=0,1", "num_rounds=1", *RUN[1:]]
    proc = run_cli([*args, _join(ray_head.address)], cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = run_dirs(tmp_path / "multirun")
    assert len(runs) == 2
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    (summary,) = tmp_path.glob("multirun/*/*/summary.csv")
    assert summary.read_text().count("completed") == 2
    assert len(_driver_jobs(ray_head) - drivers_before) == 1, "both jobs of the sweep ran over one ray.init connection"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
