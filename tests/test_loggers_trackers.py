"""TensorBoard, MLflow and W&B through the LoggerHub, read back with each tracker's own API.

The interrupted flow is what the run does across a resume: start, log rounds 0-2, save
``state_dict`` in the checkpoint, stop; a new hub loads that state, starts with the
checkpoint's history, logs rounds 3-4 and finishes. Every metric must show steps 0-4
exactly once, in one tracker run, with the values fed in. The crash variants log rounds
past the checkpoint before dying: the resumed run replays them without duplicates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.loggers import LoggerHub, RunInfo, build_loggers
from tests.test_loggers_support import (  # noqa: F401 - fixtures
    CONFIG,
    assert_once_and_equal,
    expected,
    feed,
    launch_dir_fixture,
    mlflow_jobs,
    mlflow_metrics,
    mlflow_template_fixture,
    rows,
    tb_hparams,
    tb_scalars,
    wandb_history,
    wandb_runs,
    write_artifacts,
)

TB = {"tensorboard": {"_target_": "runner.loggers.tensorboard.TensorBoardLogger"}}
MLFLOW = {"mlflow": {"_target_": "runner.loggers.mlflow.MLflowLogger", "log_checkpoint": True}}
WANDB = {"wandb": {"_target_": "runner.loggers.wandb.WandbLogger", "log_checkpoint": True}}


def hub_for(cfg: dict[str, Any], root: Path, name: str, group: str | None = None, **config: Any) -> LoggerHub:
    out = root / "outputs" / name.replace(",", "_").replace("=", "-")
    out.mkdir(parents=True, exist_ok=True)
    return build_loggers(cfg, RunInfo(output_dir=out, name=name, group=group, config={**CONFIG, **config}))


def interrupted(cfg: dict[str, Any], root: Path, crash_after: int | None = None) -> tuple[LoggerHub, dict[str, Any]]:
    """Rounds 0-2, checkpoint (state + history), [more rounds, crash], resume, rounds 3-4."""
    first = hub_for(cfg, root, "strategy=fedavg,seed=0", num_rounds=4, stop_after_round=2)
    first.start([])
    history = feed(first, range(3))
    state = json.loads(json.dumps(first.state_dict()))  # the checkpoint manifest's copy
    if crash_after is None:
        first.finish("stopped", [])
    else:  # the run goes on past its last checkpoint with other values, then fails
        for rnd in range(3, crash_after + 1):
            for row in rows(rnd):
                first.log_row({**row, **{k: -1.0 for k in row if k not in ("round", "phase")}})
        first.finish("failed", [])
    second = hub_for(cfg, root, "resume=latest", num_rounds=4, resume="latest")
    second.load_state_dict(state)
    second.start(history)
    feed(second, range(3, 5))
    final = json.loads(json.dumps(second.state_dict()))
    second.finish("completed", write_artifacts(second.run.output_dir))
    return second, final


# -- TensorBoard -----------------------------------------------------------------------------


def test_tensorboard_run_and_resume_in_the_same_log_dir(launch_dir: Path):
    hub, state = interrupted(TB, launch_dir)
    log_dir = Path(state["tensorboard"]["log_dir"])
    assert (
        log_dir
        == (launch_dir / "outputs" / "strategy-fedavg_seed-0" / "tensorboard" / "strategy=fedavg,seed=0").resolve()
    )
    assert [p.parent for p in launch_dir.glob("outputs/**/events.out.tfevents.*")] == [log_dir] * 2
    scalars = tb_scalars(log_dir)
    assert_once_and_equal(scalars, expected(range(5)))
    assert [s for s, _ in scalars["clients/train/loss/2"]] == [1, 2, 3, 4]
    hparams = tb_hparams(log_dir)
    assert hparams["strategy._target_"] == "flwr.serverapp.strategy.FedAvg"
    assert hparams["train.lr"] == 0.05 and hparams["num_rounds"] == 4 and hparams["stop_after_round"] == 2


@pytest.mark.parametrize("crash_after", [3, 4])
def test_tensorboard_purges_rounds_logged_after_the_checkpoint(launch_dir: Path, crash_after: int):
    _, state = interrupted(TB, launch_dir, crash_after=crash_after)
    scalars = tb_scalars(Path(state["tensorboard"]["log_dir"]))
    assert_once_and_equal(scalars, expected(range(5)))  # the -1.0 values of the dead run are gone
    assert [s for s, _ in scalars["clients/train/loss/0"]] == [1, 2, 3, 4]


def test_tensorboard_resume_after_a_fit_phase_checkpoint(launch_dir: Path):
    """A phase=fit checkpoint of round 2 precedes round 2's evaluation: the history holds
    round 2's train row only, the resumed run evaluates round 2 first."""
    first = hub_for(TB, launch_dir, "a")
    first.start([])
    history = feed(first, range(2)) + [rows(2)[0]]
    first.log_row(rows(2)[0])
    state = first.state_dict()
    for row in rows(2)[1:]:  # evaluated, but the checkpoint was taken before
        first.log_row(row)
    first.finish("failed", [])
    second = hub_for(TB, launch_dir, "b")
    second.load_state_dict(state)
    second.start(history)
    for row in rows(2)[1:]:
        second.log_row(row)
    feed(second, range(3, 5))
    second.finish("completed", [])
    assert_once_and_equal(tb_scalars(Path(state["tensorboard"]["log_dir"])), expected(range(5)))


def test_tensorboard_sweep_jobs_are_sub_dirs_of_the_sweep(launch_dir: Path):
    sweep = launch_dir / "multirun" / "2026-01-01" / "10-00-00"
    for job, name in enumerate(["strategy=fedavg,seed=0", "strategy=fedadam,seed=0"]):
        out = sweep / str(job)
        out.mkdir(parents=True)
        hub = build_loggers(TB, RunInfo(out, name, str(sweep), dict(CONFIG)))
        hub.start([])
        feed(hub, range(2))
        hub.finish("completed", [])
    dirs = sorted(p.parent.relative_to(sweep).as_posix() for p in sweep.glob("**/events.out.tfevents.*"))
    assert dirs == ["0/tensorboard/strategy=fedavg,seed=0", "1/tensorboard/strategy=fedadam,seed=0"]


# -- MLflow ------------------------------------------------------------------------------------


def test_mlflow_run_and_resume_reopen_the_same_run(launch_dir: Path):
    hub, state = interrupted(MLFLOW, launch_dir)
    entry = state["mlflow"]
    assert entry["tracking_uri"] == f"sqlite:///{(launch_dir / 'mlflow.db').resolve()}"
    (job,) = mlflow_jobs(launch_dir)
    assert job.info.run_id == entry["run_id"] and job.info.status == "FINISHED"
    assert job.info.run_name == "strategy=fedavg,seed=0"
    assert_once_and_equal(mlflow_metrics(launch_dir, job.info.run_id), expected(range(5)))
    params = job.data.params
    assert params["strategy._target_"] == "flwr.serverapp.strategy.FedAvg"
    assert params["train.lr"] == "0.05" and params["num_rounds"] == "4" and params["resume"] == "None"
    assert params["fail_clients"] == "[]" and len(params["note"]) == 6000  # MLflow's value limit
    assert job.data.tags["runner.resumes"] == "1"
    assert job.data.tags["runner.resume.changed"] == "resume: None -> latest"
    assert job.data.tags["runner.status"] == "completed"
    artifacts = {a.path for a in _artifacts(launch_dir, job.info.run_id)}
    assert artifacts == {"plots/loss.png", "summary.json", "checkpoints/round-0004.npz"}
    assert (
        launch_dir / "mlruns" / "flower-hydra-runner" / job.info.run_id / "artifacts" / "plots" / "loss.png"
    ).is_file()


def _artifacts(root: Path, run_id: str, path: str | None = None) -> list[Any]:
    from tests.test_loggers_support import mlflow_client

    client = mlflow_client(root)
    out = []
    for item in client.list_artifacts(run_id, path):
        out.extend(_artifacts(root, run_id, item.path) if item.is_dir else [item])
    return out


def test_mlflow_never_logs_a_step_twice_after_a_crash(launch_dir: Path):
    interrupted(MLFLOW, launch_dir, crash_after=3)
    (job,) = mlflow_jobs(launch_dir)
    seen = mlflow_metrics(launch_dir, job.info.run_id)
    want = expected(range(5))
    # round 3 was logged by the run that died (-1.0); MLflow cannot delete points, so the
    # resumed run keeps it rather than logging step 3 twice
    for key in want:
        want[key][3] = -1.0
    assert_once_and_equal(seen, want)


def test_mlflow_sweep_jobs_nest_under_one_parent_run(launch_dir: Path):
    sweep = launch_dir / "multirun" / "2026-01-01" / "10-00-00"
    names = ["strategy=fedavg,seed=0", "strategy=fedavg,seed=1", "strategy=fedadam,seed=0"]
    for job, name in enumerate(names):
        out = sweep / str(job)
        out.mkdir(parents=True)
        hub = build_loggers(MLFLOW, RunInfo(out, name, str(sweep), dict(CONFIG)))
        hub.start([])
        feed(hub, range(2), clients=False)
        hub.finish("completed", [])
    jobs = mlflow_jobs(launch_dir)
    assert sorted(j.info.run_name for j in jobs) == sorted(names)
    parents = {j.data.tags["mlflow.parentRunId"] for j in jobs}
    assert len(parents) == 1
    from tests.test_loggers_support import mlflow_client

    parent = mlflow_client(launch_dir).get_run(parents.pop())
    assert parent.info.run_name == "multirun/2026-01-01/10-00-00"
    assert {j.data.tags["runner.sweep"] for j in jobs} == {"multirun/2026-01-01/10-00-00"}


def test_mlflow_server_down_is_a_warning(
    launch_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    cfg = {"mlflow": {"_target_": "runner.loggers.mlflow.MLflowLogger", "tracking_uri": "http://127.0.0.1:9"}, **TB}
    hub = hub_for(cfg, launch_dir, "down")
    hub.start([])
    feed(hub, range(2))
    hub.finish("completed", [])
    assert hub.active == [] and hub.names == ["mlflow", "tensorboard"]
    assert any("logger mlflow: could not start" in r.getMessage() for r in caplog.records if r.name == "runner")
    (log_dir,) = {p.parent for p in launch_dir.glob("outputs/**/events.out.tfevents.*")}
    assert_once_and_equal(tb_scalars(log_dir), expected(range(2)))


# -- Weights & Biases ----------------------------------------------------------------------------


def test_wandb_offline_run_and_resume_continue_one_run(launch_dir: Path):
    hub, state = interrupted(WANDB, launch_dir)
    entry = state["wandb"]
    assert entry["mode"] == "offline" and len(entry["dirs"]) == 2
    files = wandb_runs(launch_dir)
    assert len(files) == 2 and {f.name for f in files} == {f"run-{entry['id']}.wandb"}
    seen, steps, runs = wandb_history(files)
    assert_once_and_equal(seen, expected(range(5)))
    assert [s for s, _ in seen["clients/train/loss/2"]] == [1, 2, 3, 4]
    assert steps == sorted(set(steps)), "W&B's _step keeps increasing across the sessions"
    assert {r["run_id"] for r in runs} == {entry["id"]}
    config = runs[0]["config"]["update"]
    assert config["strategy"]["_target_"] == "flwr.serverapp.strategy.FedAvg" and config["train"]["lr"] == 0.05
    assert runs[0]["display_name"] == "strategy=fedavg,seed=0"
    saved = {
        p.relative_to(files[1].parent / "files").as_posix()
        for p in (files[1].parent / "files").rglob("*")
        if p.is_file()
    }
    assert {"plots/loss.png", "summary.json"} <= saved


@pytest.mark.parametrize("crash_after", [3])
def test_wandb_never_logs_a_step_twice_after_a_crash(launch_dir: Path, crash_after: int):
    interrupted(WANDB, launch_dir, crash_after=crash_after)
    seen, steps, _ = wandb_history(wandb_runs(launch_dir))
    want = expected(range(5))
    for key in want:  # kept from the run that died, as in MLflow
        want[key][3] = -1.0
    assert_once_and_equal(seen, want)
    assert steps == sorted(set(steps))


def test_wandb_sweep_jobs_share_a_group(launch_dir: Path):
    sweep = launch_dir / "multirun" / "2026-01-01" / "10-00-00"
    for job, name in enumerate(["strategy=fedavg,seed=0", "strategy=fedadam,seed=0"]):
        out = sweep / str(job)
        out.mkdir(parents=True)
        hub = build_loggers(WANDB, RunInfo(out, name, str(sweep), dict(CONFIG)))
        hub.start([])
        feed(hub, range(1), clients=False)
        hub.finish("completed", [])
    files = wandb_runs(sweep)
    runs = [wandb_history([f])[2][0] for f in files]
    assert len({r["run_id"] for r in runs}) == 2
    assert {r["run_group"] for r in runs} == {"multirun/2026-01-01/10-00-00"}


def test_all_trackers_at_once(launch_dir: Path):
    hub, state = interrupted({**TB, **MLFLOW, **WANDB}, launch_dir)
    assert set(state) == {"tensorboard", "mlflow", "wandb"}
    want = expected(range(5))
    assert_once_and_equal(tb_scalars(Path(state["tensorboard"]["log_dir"])), want)
    assert_once_and_equal(mlflow_metrics(launch_dir, state["mlflow"]["run_id"]), want)
    assert_once_and_equal(wandb_history(wandb_runs(launch_dir))[0], want)
