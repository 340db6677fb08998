"""``engine=deployment``: a real Flower federation (SuperLink + 3 SuperNodes) started here.

The federation is this module's own (runner.engine.deployment.LocalFederation): a
SuperLink and three SuperNodes on loopback, ``--insecure``, each on free ports with its own
``FLWR_HOME`` and session, SuperNode ``i`` with ``--node-config "partition-id=i
num-partitions=3"``, the SuperLink with ``--disable-runtime-dependency-installation``,
and ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1``. It is started once for the module and
stopped at the end; psutil then checks that none of its processes (SuperExecs, ServerApp
and ClientApp processes included), and no driver, log stream or watchdog of the runs, is
left.

What is checked: ``python -m runner engine=deployment engine.superlink=…`` completes 3
rounds with checkpoints, metrics, plots and summary in its Hydra run dir; a second run
whose ServerApp process (``flwr-serverapp``, found with psutil under the SuperLink) is
SIGKILLed after round 2's checkpoint ends with a one-line error, and ``resume=latest``
finishes it bit for bit equal to the uninterrupted deployment run (weights of round 3 and
metrics rows minus ``elapsed_s``); the simulation engine gives the same bits; preflight
errors are one line. The deployment path is deterministic: the ServerApp's round loop
orders nodes and replies by partition id, samples with seeded ``random`` and each client
process seeds its training from (seed, round, partition) with one torch thread.

The rounds are slow by nature (every Flower message starts a fresh ``flwr-clientapp``
process that imports torch): ~35-45 s per round here, ~6 minutes for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from runner.engine.deployment import (
    DeploymentEngine,
    LocalFederation,
    _write_run_config,
    parse_address,
    runner_project_dir,
    stage_app,
)
from tests.helpers import SAMPLED, read_metrics, run_cli, run_dirs

RUN = ["num_clients=3", "num_rounds=3", "train.local_epochs=1", "progress=log", *SAMPLED]
slow = pytest.mark.slow


def _engine(address: str) -> list[str]:
    return ["engine=deployment", f"engine.superlink={address}"]


def _weights(run_dir: Path) -> dict[str, np.ndarray]:
    with np.load(run_dir / "checkpoints" / "round-0003.npz") as f:
        return dict(f)


def _rows(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run_dir)]


def _assert_same_bits(a_dir: Path, b_dir: Path) -> None:
    a, b = _weights(a_dir), _weights(b_dir)
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert _rows(a_dir) == _rows(b_dir)


def _processes_naming(text: str) -> list[str]:
    """Live processes (not this one, not zombies) whose command line contains ``text``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid != os.getpid() and text in cmd and p.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{p.pid}: {cmd[:160]}")
        except psutil.Error:
            pass
    return found


def _wait_gone(p: psutil.Process, timeout: float) -> None:
    """Until ``p`` ended (Flower's SuperExec leaves its finished children as zombies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.Error:
            return
        time.sleep(0.2)
    raise AssertionError(f"process {p.pid} still running after {timeout}s")


def _runs_processes(root: Path) -> list[str]:
    """Processes of the runs under ``root``: the watchdog names its run dir; the driver's
    ``flwr`` calls (the log stream) carry ``FLWR_HOME=<run dir>/.flwr``."""
    found = set(_processes_naming(str(root)))
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.pid == os.getpid() or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get("FLWR_HOME", "").startswith(str(root)):
                found.add(f"{p.pid}: {' '.join(p.info['cmdline'] or [])[:160]}")
        except psutil.Error:
            pass
    return sorted(found)


@pytest.fixture(scope="module")
def federation() -> Iterator[LocalFederation]:
    base = Path(tempfile.mkdtemp(prefix="fed-", dir="/tmp"))
    fed = LocalFederation(3, base, poll_interval=0.1)
    try:
        fed.start()
        yield fed
    finally:
        stubborn = fed.stop()
        left = [" ".join(p.cmdline())[:160] for p in fed.processes()]
        left += _processes_naming(str(base)) + _processes_naming(f"127.0.0.1:{fed.port}")
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"processes of the test federation still running: {left}"
        assert not stubborn, f"federation processes ignored SIGTERM: {stubborn}"


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    # the runs' drivers, log streams and watchdogs all name their run dir (under tmp_path)
    deadline = time.monotonic() + 15
    while (left := _runs_processes(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of this test's runs still running: {left}"


# --------------------------------------------------------------------------- no federation


def test_parse_address():
    assert parse_address("127.0.0.1:9093") == ("127.0.0.1", 9093)
    assert parse_address("superlink.example.org:443") == ("superlink.example.org", 443)
    assert parse_address("[::1]:9093") == ("::1", 9093)
    for bad in ("127.0.0.1", "9093", "host:0", "host:70000", "", None, "a b:1"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_connection_tls_defaults(tmp_path: Path):
    assert DeploymentEngine("127.0.0.1:9093").connection_table() == {"address": "127.0.0.1:9093", "insecure": True}
    assert DeploymentEngine("localhost:9093").connection_table()["insecure"] is True
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    remote = DeploymentEngine("link.example.org:9093", root_certificates=str(ca), federation="@acct/fed")
    assert remote.connection_table() == {
        "address": "link.example.org:9093",
        "root-certificates": str(ca.resolve()),
        "federation": "@acct/fed",
    }
    assert "insecure" not in DeploymentEngine("10.0.0.5:9093").connection_table()  # TLS, system CA store
    assert DeploymentEngine("10.0.0.5:9093", insecure=True).connection_table()["insecure"] is True


def test_the_fab_holds_runner_and_conf(tmp_path: Path):
    """The staged app builds into a FAB with the package and configs, nothing else."""
    import zipfile
    from io import BytesIO

    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    app = stage_app(runner_project_dir(), tmp_path / "app")
    config, _ = load_and_validate(app / "pyproject.toml")
    assert config["tool"]["flwr"]["app"]["components"]["serverapp"] == "runner.engine.deployment_app:app"
    names = zipfile.ZipFile(BytesIO(build_fab_from_disk(app))).namelist()
    assert "runner/client_app.py" in names and "runner/engine/deployment_app.py" in names
    assert "conf/config.yaml" in names and "conf/engine/deployment.yaml" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", ".venv/", "outputs/"))]
    declared = set(config["tool"]["flwr"]["app"]["config"])
    run_config = tmp_path / "run-config.toml"
    job = type("Job", (), {"name": "a=1", "group": None})()
    _write_run_config(run_config, {"seed": 0, "quote": "a \"b\" 'c' = d"}, tmp_path / "out", tmp_path, job)
    import tomllib

    values = tomllib.loads(run_config.read_text())
    assert set(values) <= declared  # the SuperLink refuses undeclared keys
    assert json.loads(values["runner-config"]) == {"seed": 0, "quote": "a \"b\" 'c' = d"}


def test_ship_puts_user_code_in_the_fab(tmp_path: Path):
    """engine.ship: a user's package travels in the FAB (ServerApp and SuperNodes import it there)."""
    import zipfile
    from io import BytesIO

    from flwr.cli.build import build_fab_from_disk

    pkg = tmp_path / "my_project"
    (pkg / "models").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "net.py").write_text("X = 1\n")
    (pkg / "conf.yaml").write_text("a: 1\n")
    (tmp_path / "helpers.py").write_text("Y = 2\n")
    app = stage_app(runner_project_dir(), tmp_path / "app", [pkg, tmp_path / "helpers.py"])
    names = zipfile.ZipFile(BytesIO(build_fab_from_disk(app))).namelist()
    for name in ("my_project/__init__.py", "my_project/models/net.py", "my_project/conf.yaml", "helpers.py"):
        assert name in names, name
    assert "runner/client_app.py" in names


def test_supernodes_must_hold_distinct_partitions():
    """Two SuperNodes with one partition-id (or one out of range) fail the run at discovery."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, RecordDict

    from runner.engine.deployment_app import CheckedGrid

    def message(node: int, kind: str = "query", content: RecordDict | None = None) -> SimpleNamespace:
        meta = SimpleNamespace(dst_node_id=node, src_node_id=node, message_type=kind)
        return SimpleNamespace(metadata=meta, content=content or RecordDict(), has_error=lambda: False)

    class Grid:  # each node answers the QUERY with its partition-id, as runner.client_app does
        def __init__(self, pids: dict[int, int]) -> None:
            self.pids = pids

        def send_and_receive(self, messages, timeout=None):
            return [
                message(m.metadata.dst_node_id, content=RecordDict({"info": ConfigRecord({"partition-id": p})}))
                for m in messages
                for p in [self.pids[m.metadata.dst_node_id]]
            ]

    def query(pids: dict[int, int]) -> None:
        CheckedGrid(Grid(pids), num_clients=3).send_and_receive([message(n) for n in pids])

    query({11: 2, 12: 0, 13: 1})
    with pytest.raises(RuntimeError, match="both hold partition-id 0"):
        query({11: 0, 12: 0, 13: 1})
    with pytest.raises(RuntimeError, match=r"partition-id 3, outside 0\.\.2"):
        query({11: 0, 12: 3, 13: 1})


def test_preflight_errors_are_one_line(tmp_path: Path):
    proc = run_cli(["engine=deployment", "engine.superlink=nonsense"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: engine.superlink: expected host:port of the SuperLink (flower-superlink --port), "
        "e.g. 127.0.0.1:9093 (got 'nonsense')"
    ]
    from runner.engine.deployment import free_port

    port = free_port()  # nothing listens there
    proc = run_cli(_engine(f"127.0.0.1:{port}"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: engine.superlink: no SuperLink answers at 127.0.0.1:{port}"), line
    proc = run_cli([*_engine("127.0.0.1:9"), "engine.root_certificates=/nonexistent/ca.crt"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: engine.root_certificates: /nonexistent/ca.crt is not a file"


# ------------------------------------------------------------------------------ federation


@slow
def test_too_few_supernodes_is_one_line(federation: LocalFederation, workdir: Path):
    proc = run_cli([*_engine(federation.address), "num_clients=4", "engine.nodes_timeout=0"], cwd=workdir)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: engine.superlink: 3 SuperNode(s) online at {federation.address}, this run needs 4")


def _serverapp_of(federation: LocalFederation) -> psutil.Process | None:
    """The ``flwr-serverapp`` process under the test's SuperLink (its SuperExec's child)."""
    link = psutil.Process(federation.procs[0][1].pid)
    for p in link.children(recursive=True):
        try:
            if any("flwr-serverapp" in a for a in p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                return p
        except psutil.Error:
            pass
    return None


@slow
def test_deployment_run_kill_and_resume_bit_for_bit(federation: LocalFederation, workdir: Path):
    whole, broken = workdir / "whole", workdir / "broken"
    whole.mkdir()
    broken.mkdir()

    # 1. uninterrupted: 3 rounds, everything in the driver's Hydra run dir
    proc = run_cli([*RUN, *_engine(federation.address)], cwd=whole, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_a,) = run_dirs(whole / "outputs")
    summary = json.loads((run_a / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == 3, summary
    for rnd in (1, 2, 3):
        manifest = json.loads((run_a / "checkpoints" / f"round-{rnd:04d}.json").read_text())
        assert manifest["round"] == rnd
    assert (run_a / "plots" / "loss.png").is_file() and (run_a / "plots" / "accuracy.png").is_file()
    assert [r["round"] for r in read_metrics(run_a) if r["phase"] == "centralized"] == [0, 1, 2, 3]
    log_text = (run_a / "runner.log").read_text()
    assert "ServerApp of Flower run" in log_text and "round 3/3" in log_text  # the ServerApp's own lines
    assert "round 3/3" in proc.stdout  # streamed back to the driver's console
    record = json.loads((run_a / "serverapp.json").read_text())
    assert (run_a / ".flwr" / "run-config.toml").is_file() and (run_a / ".flwr" / "config.toml").is_file()
    assert Path(record["cwd"]) == whole  # the ServerApp worked in the user's launch dir

    # 2. the ServerApp process is SIGKILLed once round 2's checkpoint is committed
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "runner", *RUN, *_engine(federation.address)],
        cwd=broken,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = None
    try:
        deadline = time.monotonic() + 480
        while not list(broken.glob("outputs/*/*/checkpoints/round-0002.json")):
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "round 2 never checkpointed"
            time.sleep(0.2)
        server = _serverapp_of(federation)
        assert server is not None, "no flwr-serverapp process under the SuperLink"
        (run_b,) = run_dirs(broken / "outputs")
        assert json.loads((run_b / "serverapp.json").read_text())["pid"] == server.pid
        server.send_signal(signal.SIGKILL)
        killed = server.pid
        out, err = driver.communicate(timeout=240)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert killed is not None
    assert driver.returncode == 1, out[-3000:] + err[-3000:]  # the engine failed during the run (not a setting)
    (line,) = err.strip().splitlines()
    assert line.startswith("error: Flower run ") and f"ServerApp process (pid {killed}) is gone" in line, line
    assert "checkpoints up to round 2" in line and "resume=latest" in line
    killed_summary = json.loads((run_b / "summary.json").read_text())
    assert killed_summary["status"] == "failed" and killed_summary["last_round"] == 2, killed_summary
    assert killed_summary["rounds_done"] == 2 and f"pid {killed}" in killed_summary["error"], killed_summary
    assert any("ServerApp did not finish" in w for w in killed_summary["warnings"]), killed_summary
    assert not (run_b / "checkpoints" / "round-0003.json").exists()

    # 3. resume=latest continues from round 2 and ends where the uninterrupted run ended
    proc = run_cli([*RUN, *_engine(federation.address), "resume=latest"], cwd=broken, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_c = next(d for d in run_dirs(broken / "outputs") if d != run_b)
    summary = json.loads((run_c / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == 3, summary
    assert summary["resumed_from"] == str(run_b / "checkpoints" / "round-0002.json")
    manifest = json.loads((run_c / "checkpoints" / "round-0003.json").read_text())
    assert manifest["resumed_from"] == str(run_b / "checkpoints" / "round-0002.json")
    assert "rounds 2..3" in (run_c / "runner.log").read_text()  # round 2's evaluation, then round 3
    assert not (run_c / "checkpoints" / "round-0001.json").exists()
    _assert_same_bits(run_a, run_c)

    # 4. the simulation engine, same config: the same bits
    sim = workdir / "sim"
    sim.mkdir()
    proc = run_cli(RUN, cwd=sim, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_s,) = run_dirs(sim / "outputs")
    _assert_same_bits(run_a, run_s)


@slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_driver_stops_its_flower_run(federation: LocalFederation, workdir: Path, sig: signal.Signals):
    """SIGTERM (a scheduler's preemption): the driver stops the Flower run and says so in one
    line. SIGKILL: its watchdog stops the run. Either way nothing keeps computing."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "runner", *RUN, *_engine(federation.address), "print_config=false"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(workdir.glob("outputs/*/*/serverapp.json")):
            assert driver.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        server = _serverapp_of(federation)
        assert server is not None
        driver.send_signal(sig)
        _, err = driver.communicate(timeout=120)
        _wait_gone(server, timeout=60)  # `flwr stop` (driver or watchdog) ends the ServerApp
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    (run,) = run_dirs(workdir / "outputs")
    if sig == signal.SIGKILL:
        assert "stopping Flower run" in (run / ".flwr" / "watchdog.log").read_text()
    else:
        assert driver.returncode == 1
        (line,) = err.strip().splitlines()
        assert line.startswith("error: Flower run ") and "stopped: the driver was interrupted (SIGTERM)" in line, line
        assert "stopping Flower run" not in (run / ".flwr" / "watchdog.log").read_text()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
