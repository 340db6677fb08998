"""Sweeps through Hydra's submitit launcher: real submitit jobs on this machine, and the SLURM preset.

``hydra/launcher=submitit_local`` runs each sweep job as its own submitit job: a controller
process and a ``python -m submitit.core._submit`` task, with its own local Ray. The SLURM
preset (conf/hydra/launcher/slurm.yaml) is checked by rendering the sbatch script submitit
would submit (no SLURM needed: a stand-in ``srun`` on PATH lets submitit's executor start).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.helpers import SAMPLED, read_metrics, run_cli, run_dirs

LOCAL = ["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=10"]
TINY = ["num_clients=4", "train.local_epochs=1", "progress=log", "print_config=false", *SAMPLED]


def _left_running(marker: Path) -> list[str]:
    """Processes whose command line names ``marker`` (submitit controllers and tasks do)."""
    left = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if str(marker) in cmd and p.pid != os.getpid() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(cmd[:200])
        except psutil.Error:
            pass
    return left


def _summary_rows(root: Path) -> list[dict[str, str]]:
    (path,) = root.glob("multirun/*/*/summary.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_submitit_local_sweep_completes_with_summary(tmp_path: Path):
    proc = run_cli(["-m", *LOCAL, "strategy=fedavg,fedprox", "num_rounds=2", *TINY], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _summary_rows(tmp_path)
    assert sorted(r["overrides"].split()[0] for r in rows) == ["strategy=fedavg", "strategy=fedprox"]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert [r["rounds_done"] for r in rows] == ["2", "2"]
    jobs = run_dirs(tmp_path / "multirun")
    assert len(jobs) == 2
    pids = set()
    for job in jobs:
        assert (job / "checkpoints" / "round-0002.npz").is_file()
        pids.add(json.loads((job / "hydra_job.json").read_text())["pid"])
    assert len(pids) == 2 and os.getpid() not in pids, "each job ran in its own submitit process"
    (sweep,) = tmp_path.glob("multirun/*/*")
    assert list((sweep / ".submitit").glob("*/*_log.out")), "submitit's own job logs"
    assert not _left_running(tmp_path)


@pytest.mark.slow
def test_submitit_requeue_resumes_in_its_own_job_dir(tmp_path: Path):
    """Preempt a submitit job after round 2 (SIGUSR2, as SLURM's --signal does): submitit
    checkpoints the launcher call and requeues it; the requeued job must continue from its
    own checkpoint with resume=latest and finish the run, with each round recorded once."""
    num_rounds = 20  # enough rounds that the signal lands before the run ends
    cmd = [sys.executable, "-m", "runner", "-m", *LOCAL, "strategy=fedavg", f"num_rounds={num_rounds}", *TINY,
           "resume=latest", "round_timeout=30"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "launcher.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob("multirun/*/*/0/checkpoints/round-0002.json")):
            assert launcher.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "round 2 was never saved"
            time.sleep(0.2)
        tasks = [
            p for p in psutil.Process(launcher.pid).children(recursive=True)
            if "submitit.core._submit" in " ".join(p.cmdline())
        ]  # fmt: skip
        assert len(tasks) == 1
        tasks[0].send_signal(signal.SIGUSR2)  # submitit's preemption/timeout signal
        rc = launcher.wait(timeout=500)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert rc == 0, log.read_text()[-3000:]
    (job,) = run_dirs(tmp_path / "multirun")
    assert "Requeued job" in "".join(p.read_text() for p in job.parent.glob(".submitit/*/*_log.*"))
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == num_rounds
    assert summary["resumed_from"] and Path(summary["resumed_from"]).parent == job / "checkpoints"
    keys = [(r["round"], r["phase"]) for r in read_metrics(job)]
    assert len(keys) == len(set(keys)), "a round recorded twice"
    assert {r for r, _ in keys} == set(range(num_rounds + 1))
    assert all(r.get("num_replies", 1) > 0 for r in read_metrics(job)), "rows from an interrupted round"
    assert [r["status"] for r in _summary_rows(tmp_path)] == ["completed"]
    assert not _left_running(tmp_path)


def _fake_srun(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    srun = bindir / "srun"
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}


def test_slurm_preset_renders_a_requeueable_sbatch_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The preset composes, and submitit turns it into the sbatch script a user's jobs get.

    The parameters go to submitit exactly as hydra-submitit-launcher 1.2's ``launch`` does.
    """
    proc = run_cli(
        ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra", "-p", "hydra.launcher"],
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = yaml.safe_load(proc.stdout.split("\n", 1)[1])  # after the "# @package" line
    assert params["_target_"].endswith("SlurmLauncher")
    assert params["max_num_timeout"] > 0, "submitit requeues timed-out jobs only if this is > 0"

    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    monkeypatch.setenv("PATH", _fake_srun(tmp_path)["PATH"])
    params.pop("_target_")
    params["submitit_folder"] = str(tmp_path / "sweep" / ".submitit" / "%j")
    params["name"] = "runner"
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = executor._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    lines = set(text.splitlines())
    for expected in (
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --time=240",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --open-mode=append",  # a requeued job appends to its logs
    ):
        assert expected in lines, (expected, text)
