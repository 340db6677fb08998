"""Issue 12's acceptance list, as a user runs it: ``python -m runner logger=...`` in a
subprocess, then each tracker's own reading API against that run's metrics.jsonl.

Offline: TensorBoard event files, MLflow's default local store (a ready copy of an empty
store is put where the default URI points, since creating one takes seconds), W&B offline
run files read by ``wandb leet inspect``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from runner.loggers import row_metrics
from tests.helpers import FAST, ROOT, read_metrics, run_cli, run_dirs
from tests.test_loggers_support import (  # noqa: F401 - fixtures
    assert_once_and_equal,
    mlflow_client,
    mlflow_jobs,
    mlflow_metrics,
    mlflow_template_fixture,
    tb_hparams,
    tb_scalars,
    wandb_history,
    wandb_runs,
)

pytestmark = pytest.mark.slow

ALL = "logger=[tensorboard,mlflow,wandb]"


def _prepare(launch_dir: Path, template: Path, mp: pytest.MonkeyPatch) -> Path:
    shutil.copy(template, launch_dir / "mlflow.db")
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_MODE", raising=False)  # offline must be the config's default
    return launch_dir


@pytest.fixture
def launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_template: Path) -> Path:
    return _prepare(tmp_path, mlflow_template, monkeypatch)


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> tuple[Path, Path]:
    """One 3-round run with every tracker (one run instead of one per tracker: CPU is scarce)."""
    with pytest.MonkeyPatch.context() as mp:
        launch_dir = _prepare(tmp_path_factory.mktemp("three"), mlflow_template, mp)
        proc = run_cli([ALL, "num_rounds=3", *FAST], cwd=launch_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(launch_dir / "outputs")
    return launch_dir, run


def expected_from(run_dir: Path) -> dict[str, dict[int, float]]:
    """{"<phase>/<key>": {round: value}} from a run's metrics.jsonl."""
    out: dict[str, dict[int, float]] = {}
    for row in read_metrics(run_dir):
        for key, value in row_metrics(row).items():
            out.setdefault(key, {})[int(row["round"])] = value
    return out


def tb_dirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.glob("**/tensorboard/**/events.out.tfevents.*")})


def seen_by(tracker: str, launch_dir: Path, root: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Any]]:
    """(metrics, params) of the one tracker run under ``root`` (a run dir or outputs/)."""
    if tracker == "tensorboard":
        (log_dir,) = tb_dirs(root)
        return tb_scalars(log_dir), tb_hparams(log_dir)
    if tracker == "mlflow":
        (job,) = mlflow_jobs(launch_dir)
        return mlflow_metrics(launch_dir, job.info.run_id), dict(job.data.params)
    files = wandb_runs(root)
    seen, steps, runs = wandb_history(files)
    assert len({r["run_id"] for r in runs}) == 1, "one W&B run"
    assert steps == sorted(set(steps))
    return seen, _flat(runs[0]["config"]["update"])


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_three_rounds_match_metrics_jsonl(three_rounds: tuple[Path, Path], tracker: str):
    launch_dir, run = three_rounds
    want = expected_from(run)
    assert sorted(want["centralized/accuracy"]) == [0, 1, 2, 3]
    seen, params = seen_by(tracker, launch_dir, run)
    assert_once_and_equal(seen, want)
    assert any(k.startswith("clients/") for k in seen), "per-client metrics, namespaced"
    for key, value in {"num_rounds": 3, "num_clients": 4, "train.local_epochs": 1, "seed": 0}.items():
        assert float(params[key]) == value, (key, params.get(key))  # TensorBoard hparams are floats
    assert params["strategy._target_"] == "flwr.serverapp.strategy.FedAvg"


def test_stop_and_resume_continue_one_tracker_run(launch: Path, tmp_path_factory: pytest.TempPathFactory):
    first = run_cli([ALL, "num_rounds=4", "stop_after_round=2", *FAST], cwd=launch)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli([ALL, "resume=latest", "num_rounds=4", *FAST], cwd=launch)
    assert second.returncode == 0, second.stderr[-3000:]
    straight = tmp_path_factory.mktemp("uninterrupted")
    ref = run_cli(["num_rounds=4", *FAST], cwd=straight)
    assert ref.returncode == 0, ref.stderr[-3000:]
    (ref_run,) = run_dirs(straight / "outputs")
    want = expected_from(ref_run)
    assert sorted(want["centralized/accuracy"]) == [0, 1, 2, 3, 4]
    runs = run_dirs(launch / "outputs")
    assert len(runs) == 2
    assert expected_from(runs[1]) == want, "the resumed run equals the uninterrupted one"
    outputs = launch / "outputs"
    assert len(tb_dirs(outputs)) == 1, "TensorBoard continues the first run's log dir"
    assert len(mlflow_jobs(launch)) == 1, "one MLflow run"
    assert len(wandb_runs(outputs)) == 2, "one W&B offline dir per session, of one run id"
    for tracker in ("tensorboard", "mlflow", "wandb"):
        seen, _ = seen_by(tracker, launch, outputs)
        assert_once_and_equal(seen, want)
    (job,) = mlflow_jobs(launch)
    assert job.info.status == "FINISHED" and job.data.tags["runner.resumes"] == "1"


def test_sweep_of_four_jobs_is_one_group_per_tracker(launch: Path):
    proc = run_cli(["-m", "strategy=fedavg,fedadam", "seed=0,1", ALL, "num_rounds=1", *FAST], cwd=launch, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = {r.parent for r in run_dirs(launch / "multirun")}
    assert len(run_dirs(sweep)) == 4
    assert len(tb_dirs(sweep)) == 4, "one TensorBoard run per job, under the sweep dir"
    jobs = mlflow_jobs(launch)
    assert len(jobs) == 4 and len({j.data.tags.get("mlflow.parentRunId") for j in jobs}) == 1
    names = {j.info.run_name for j in jobs}
    assert len(names) == 4 and all("strategy=" in n and "seed=" in n for n in names), names
    runs = [wandb_history([f])[2][0] for f in wandb_runs(sweep)]
    assert len({r["run_id"] for r in runs}) == 4
    (group,) = {r["run_group"] for r in runs}
    assert group and sweep.name in group


def test_missing_extra_is_one_line(launch: Path):
    fake = launch / "fake"
    (fake / "mlflow").mkdir(parents=True)
    (fake / "mlflow" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mlflow'\", name='mlflow')\n"
    )
    path = os.pathsep.join(p for p in (str(fake), os.environ.get("PYTHONPATH", "")) if p)
    proc = run_cli(["logger=mlflow", "num_rounds=1", *FAST], cwd=launch, env={"PYTHONPATH": path})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: logger.mlflow: needs the mlflow package: pip install 'flower-hydra-runner[mlflow]'"
    )


def test_a_tracker_that_raises_is_a_warning_and_the_run_completes(launch: Path):
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    proc = run_cli(
        [
            "logger=[tensorboard,mlflow]",
            "logger.mlflow.tracking_uri=http://127.0.0.1:9",  # a tracking server that is down
            "+logger.boom._target_=tests.test_loggers.Boom",  # a backend that fails while logging
            "num_rounds=3",
            *FAST,
        ],
        cwd=launch,
        env={"PYTHONPATH": path, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(launch / "outputs")
    log_text = (run / "runner.log").read_text()
    assert "logger mlflow: could not start" in log_text
    assert "logger boom: logging step" in log_text and "No space left on device" in log_text
    assert "logger boom: switched off" in log_text
    assert (run / "checkpoints" / "round-0003.json").is_file(), "no checkpoint lost"
    assert '"status": "completed"' in (run / "summary.json").read_text()
    seen, _ = seen_by("tensorboard", launch, run)
    assert_once_and_equal(seen, expected_from(run))
