"""Shared pieces of the logger tests: metrics rows, fixtures, and readers that use each
tracker's own reading API (TensorBoard's EventAccumulator, MlflowClient, W&B's
``wandb leet inspect`` over the offline transaction log). No tests here."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

CONFIG: dict[str, Any] = {
    "seed": 0,
    "num_rounds": 4,
    "num_clients": 4,
    "strategy": {"_target_": "flwr.serverapp.strategy.FedAvg", "fraction_train": 0.5},
    "train": {"lr": 0.05, "local_epochs": 1},
    "fail_clients": [],
    "backend": {"init_args": {}},
    "resume": None,
    "note": "x" * 7000,  # longer than MLflow's param value limit
}


def rows(rnd: int) -> list[dict[str, Any]]:
    """The rows a round writes to metrics.jsonl (round 0: the initial centralized eval)."""
    acc = round(0.3 + 0.1 * rnd + 0.0123, 6)
    central = {"round": rnd, "phase": "centralized", "loss": 2.0 / (rnd + 1), "accuracy": acc, "elapsed_s": 0.5 * rnd}
    if rnd == 0:
        return [central]
    return [
        {"round": rnd, "phase": "train", "loss": 1.5 / rnd, "num_replies": 2, "num_failures": 0, "elapsed_s": 0.1},
        {
            "round": rnd,
            "phase": "evaluate",
            "loss": 1.2 / rnd,
            "accuracy": acc - 0.05,
            "num_replies": 2,
            "num_failures": 0,
            "elapsed_s": 0.2,
        },
        central,
        {"round": rnd, "phase": "privacy", "epsilon": 0.5 * rnd, "delta": 1e-5},
    ]


def expected(rounds: range) -> dict[str, dict[int, float]]:
    """{"<phase>/<key>": {round: value}} as every tracker must show it."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for rnd in rounds:
        for row in rows(rnd):
            for key, value in row.items():
                if key not in ("round", "phase", "elapsed_s"):
                    out[f"{row['phase']}/{key}"][rnd] = float(value)
    return dict(out)


def per_client(rnd: int) -> dict[int, dict[str, float]]:
    return {pid: {"loss": 1.0 / (rnd + pid + 1), "num_examples": 10.0 + pid} for pid in (0, 2)}


def feed(hub: Any, rounds: range, clients: bool = True) -> list[dict[str, Any]]:
    """Log the rounds' rows (and per-client train metrics); returns the rows."""
    out = []
    for rnd in rounds:
        for row in rows(rnd):
            hub.log_row(row)
            out.append(row)
        if clients and rnd > 0:
            hub.log_clients(rnd, "train", per_client(rnd))
    return out


def write_artifacts(run_dir: Path) -> list[Path]:
    """plots/*.png, summary.json and a checkpoint file, as a finished run has them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    fig = plt.figure(figsize=(2, 2))
    plt.plot([0, 1], [1, 0])
    fig.savefig(run_dir / "plots" / "loss.png")
    plt.close(fig)
    (run_dir / "summary.json").write_text(json.dumps({"status": "completed", "rounds_done": 4}))
    (run_dir / "checkpoints" / "round-0004.npz").write_bytes(b"weights")
    return [run_dir / "plots" / "loss.png", run_dir / "summary.json", run_dir / "checkpoints" / "round-0004.npz"]


def assert_once_and_equal(seen: dict[str, list[tuple[int, float]]], want: dict[str, dict[int, float]]) -> None:
    """Every expected metric: each step exactly once, values equal."""
    for key, by_step in want.items():
        assert key in seen, f"{key} missing (have {sorted(seen)[:20]})"
        steps = [s for s, _ in seen[key]]
        dup = [s for s, n in Counter(steps).items() if n > 1]
        assert not dup, f"{key}: steps logged twice: {dup}"
        assert sorted(steps) == sorted(by_step), f"{key}: steps {sorted(steps)} != {sorted(by_step)}"
        for step, value in seen[key]:
            assert math.isclose(value, by_step[step], rel_tol=1e-6), (key, step, value, by_step[step])


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="mlflow_template")
def mlflow_template_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store, migrated once per session (creating one takes seconds)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(name="launch_dir")
def launch_dir_fixture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> Path:
    """tmp_path as the launch dir, holding a ready MLflow store where the default URI points."""
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


# -- readers (each tracker's own API) ---------------------------------------------------------


def tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tb_hparams(log_dir: Path) -> dict[str, Any]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    out: dict[str, Any] = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        for key, value in data.session_start_info.hparams.items():
            out[key] = getattr(value, value.WhichOneof("kind"))
    return out


def mlflow_client(root: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def mlflow_jobs(root: Path, experiment: str = "flower-hydra-runner") -> list[Any]:
    client = mlflow_client(root)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "no MLflow experiment"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("runner.role") != "sweep"]


def mlflow_metrics(root: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    client = mlflow_client(root)
    run = client.get_run(run_id)
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}


def wandb_records(path: Path) -> list[dict[str, Any]]:
    """Records of a .wandb transaction log (or a dir holding one), read by W&B's own CLI."""
    stat = path.stat()
    return _wandb_records(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _wandb_records(path: str, _mtime: int, _size: int) -> list[dict[str, Any]]:
    exe = Path(sys.executable).with_name("wandb")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "wandb"]
    proc = subprocess.run([*cmd, "leet", "inspect", "--json", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def wandb_runs(root: Path) -> list[Path]:
    """The .wandb files under root, oldest session first (by the run record's start time)."""
    files = list(root.glob("**/wandb/offline-run-*/run-*.wandb"))
    starts = {f: next(r["run"]["start_time"] for r in wandb_records(f) if r["type"] == "run") for f in files}
    return sorted(files, key=lambda f: starts[f])


def wandb_history(files: list[Path]) -> tuple[dict[str, list[tuple[int, float]]], list[int], list[dict[str, Any]]]:
    """({metric: [(round, value)]}, every _step in order, the run records) over the sessions."""
    seen: dict[str, list[tuple[int, float]]] = defaultdict(list)
    steps: list[int] = []
    runs: list[dict[str, Any]] = []
    for f in files:
        for rec in wandb_records(f):
            if rec["type"] == "run":
                runs.append(rec["run"])
            if rec["type"] != "history":
                continue
            item = rec["history"]["item"]
            steps.append(int(item["_step"]))
            for key, value in item.items():
                if not key.startswith("_") and key != "round":
                    seen[key].append((int(item["round"]), float(value)))
    return dict(seen), steps, runs
