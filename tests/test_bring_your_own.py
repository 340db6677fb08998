"""Bring your own model, data, partitioner and task (issue 9), run as a user runs them.

The example project (examples/tabular_fl) is copied to a temp dir outside this repository
and its README's commands run verbatim with ``python -m runner`` in subprocesses.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, read_metrics, run_cli, run_dirs

EXAMPLE = ROOT / "examples" / "tabular_fl"


def readme_commands() -> list[list[str]]:
    """The ``python -m runner`` lines of the example README's first bash block."""
    text = (EXAMPLE / "README.md").read_text()
    block = text[text.index("```bash") + len("```bash") : text.index("```", text.index("```bash") + 7)]
    return [shlex.split(line)[3:] for line in block.strip().splitlines() if line.startswith("python -m runner")]


def _copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("outputs", "multirun", "__pycache__"))
    return dest


def _weights(run: Path, rnd: int) -> dict[str, np.ndarray]:
    return dict(np.load(run / "checkpoints" / f"round-{rnd:04d}.npz"))


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run)]


@pytest.fixture(scope="module")
def example_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference run, killed + resumed run, and the mixed sweep of the README."""
    train, resume, sweep = readme_commands()
    assert "resume=latest" in resume and "-m" in sweep
    a = _copy_example(tmp_path_factory.mktemp("user") / "my_project")
    proc = run_cli(train, cwd=a, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (reference,) = run_dirs(a / "outputs")

    b = _copy_example(tmp_path_factory.mktemp("user") / "my_project")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    killed = subprocess.Popen(
        [sys.executable, "-m", "runner", *train],
        cwd=b,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list(b.glob("outputs/*/*/checkpoints/round-0002.json")):
            assert killed.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    (crashed,) = run_dirs(b / "outputs")
    time.sleep(1.1)  # a new Hydra run dir
    proc = run_cli(resume, cwd=b, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = next(r for r in run_dirs(b / "outputs") if r != crashed)

    proc = run_cli(sweep, cwd=b, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep_dir,) = {r.parent for r in run_dirs(b / "multirun")}
    return {"reference": reference, "crashed": crashed, "resumed": resumed, "sweep": sweep_dir, "project": a}


def test_example_trains_with_its_own_model_data_and_task(example_runs: dict[str, Path]):
    run = example_runs["reference"]
    config = json.loads((run / "checkpoints" / "round-0005.json").read_text())["config"]
    assert config["model"]["_target_"] == "my_fl.model.TabularNet"
    assert config["dataset"]["_target_"] == "my_fl.data.breast_cancer"
    assert config["task"]["_target_"] == "my_fl.task.WeightedBinary"
    assert config["partitioner"]["_target_"] == "flwr_datasets.partitioner.ShardPartitioner"
    rows = read_metrics(run)
    final = [r for r in rows if r["round"] == 5 and r["phase"] == "centralized"][0]
    assert {"loss", "accuracy", "f1", "recall"} <= set(final) and final["accuracy"] > 0.8
    # the task's own metric drives best.json and has its own plot
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    f1 = {r["round"]: r["f1"] for r in rows if r["phase"] == "centralized" and r["round"] >= 1}
    assert best["round"] == min(r for r in f1 if f1[r] == max(f1.values()))
    assert (run / "plots" / "f1.png").stat().st_size > 10_000
    # nothing of the example was written into the runner's repository
    assert not (EXAMPLE / "outputs").exists()


def test_example_resumes_bit_for_bit_after_sigkill(example_runs: dict[str, Path]):
    ref, crashed, resumed = example_runs["reference"], example_runs["crashed"], example_runs["resumed"]
    assert not (crashed / "checkpoints" / "round-0005.json").exists()
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["resumed_from"].startswith(str(crashed)) and summary["status"] == "completed"
    a, b = _weights(ref, 5), _weights(resumed, 5)
    assert a.keys() == b.keys() and "inp.1.num_batches_tracked" in a
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert _rows(resumed) == _rows(ref)
    # the user strategy's own state_dict() went into every checkpoint
    state = dict(np.load(resumed / "checkpoints" / "round-0005.state.npz"))
    ref_state = dict(np.load(ref / "checkpoints" / "round-0005.state.npz"))
    assert any(k.startswith("strategy/velocity/") for k in state)
    assert state.keys() == ref_state.keys() and all(np.array_equal(state[k], ref_state[k]) for k in state)


def test_sweep_mixing_a_builtin_and_a_user_model_writes_one_summary(example_runs: dict[str, Path]):
    with open(example_runs["sweep"] / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    models = sorted(o for r in rows for o in r["overrides"].split() if o.startswith("model="))
    assert models == ["model=mlp", "model=mlp", "model=my_net", "model=my_net"]
    assert all(r["status"] == "completed" for r in rows)
    assert all(r["final_centralized_f1"] for r in rows)  # the task's metric is a summary column


def test_hf_dataset_from_a_local_parquet_with_natural_id_partitions(tmp_path: Path):
    """dataset=hf reads a parquet file written here, offline; natural_id uses its id column."""
    import datasets

    rng = np.random.default_rng(0)
    n = 600
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    table = datasets.Dataset.from_dict(
        {"f0": x[:, 0], "f1": x[:, 1], "f2": x[:, 2], "label": y, "hospital": np.arange(n) % 4}
    )
    table.to_parquet(str(tmp_path / "train.parquet"))
    proc = run_cli(
        [
            "dataset=hf",
            "dataset.path=parquet",
            f"dataset.data_files={tmp_path / 'train.parquet'}",
            "dataset.features=[f0,f1,f2]",
            "dataset.columns=[hospital]",
            "dataset.num_classes=2",
            "dataset.input_shape=[3]",
            "partitioner=natural_id",
            "partitioner.partition_by=hospital",
            "num_clients=4",
            "num_rounds=2",
            "train.local_epochs=1",
            "progress=log",
        ],
        cwd=tmp_path,
        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    final = [r for r in read_metrics(run) if r["phase"] == "centralized"][-1]
    assert final["round"] == 2 and final["accuracy"] > 0.8


def test_resume_from_a_manifest_naming_os_system_runs_nothing(example_runs: dict[str, Path], tmp_path: Path):
    """A manifest whose config names os.system: resume takes the model from the user's own
    config, load_model refuses; nothing is run."""
    src = example_runs["reference"] / "checkpoints"
    evil = tmp_path / "evil" / "checkpoints"
    evil.mkdir(parents=True)
    for f in src.glob("round-0005*"):
        shutil.copy(f, evil / f.name)
    marker = tmp_path / "pwned"
    manifest = json.loads((evil / "round-0005.json").read_text())
    payload = {"_target_": "os.system", "_args_": [f"touch {marker}"]}
    manifest["config"]["model"] = payload
    manifest["config"]["dataset"] = payload
    (evil / "round-0005.json").write_text(json.dumps(manifest))
    project = example_runs["project"]
    train = readme_commands()[0]
    proc = run_cli([*train, "num_rounds=6", f"resume={evil / 'round-0005.json'}"], cwd=project, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists()
    check = subprocess.run(
        [sys.executable, "-c", f"from runner.checkpoint.loading import load_model; load_model({str(evil)!r})"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode != 0 and "refusing to import code named by the checkpoint" in check.stderr
    assert "os.system" in check.stderr and not marker.exists()


@pytest.mark.parametrize(
    "args, key, needle",
    [
        (["model._target_=no_such_pkg.Net"], "model._target_", "cannot import 'no_such_pkg.Net'"),
        (
            ["model=cnn", "dataset._target_=tests.fixture_data.digits_with_writers", "model.input_shape=[64]"],
            "model",
            "CNN needs image input",
        ),
        (["model.num_classes=5"], "model", "the model returns 5 class scores but labels go up to 9"),
        (["+task.bogus=1"], "task", "unexpected keyword argument 'bogus'"),
    ],
)
def test_a_model_or_task_that_does_not_fit_is_one_line(tmp_path: Path, args: list[str], key: str, needle: str):
    proc = run_cli([*args, "num_rounds=1"], cwd=tmp_path, timeout=180, env={"PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}:"), proc.stderr
    assert needle in lines[0] and "Traceback" not in proc.stderr + proc.stdout
    assert not list(tmp_path.glob("outputs/*/*/checkpoints/*"))
