"""MLflow: the flattened config as params, metrics per round, plots and summary as artifacts.

Where: ``tracking_uri`` when set, else ``$MLFLOW_TRACKING_URI``, else a local SQLite store
``sqlite:///<launch dir>/mlflow.db`` with artifacts in ``<launch dir>/mlruns/<experiment>``
-- MLflow's own default store, so ``mlflow ui`` (or ``mlflow server``) started in the launch
dir shows the runs. (MLflow 3 keeps the plain ``./mlruns`` file store in maintenance mode; give
``tracking_uri: file:./mlruns`` plus ``MLFLOW_ALLOW_FILE_STORE=true`` if you want it.)

Sweeps: every job is its own run, nested under one parent run per sweep (tag
``runner.sweep`` = the sweep dir). Resume: the run id lives in the checkpoint manifest; the
resumed run reopens that run, logs only the (metric, step) pairs it does not hold yet, adds
params that are new and records changed ones (``num_rounds`` 3 -> 4) in the tag
``runner.resume.changed``, since MLflow params cannot change.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.loggers.base import Logger, Metrics, RunInfo, artifact_dir, group_label, require, safe_name

log = logging.getLogger("runner")

MAX_KEY = 250  # MLflow's limits (mlflow.utils.validation)
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000

STATUS = {"completed": "FINISHED", "failed": "FAILED"}  # anything else (stopped) -> KILLED


def sanitize(key: str) -> str:
    """MLflow names allow alphanumerics, _ - . space : / (and at most 250 characters)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", key)[:MAX_KEY]


def _launch_dir() -> Path:
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except Exception as exc:  # noqa: BLE001 - outside Hydra: the working dir is the launch dir
        log.debug("no Hydra runtime cwd (%s); using the working dir", exc)
    return Path.cwd()


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(_launch_dir() / 'mlflow.db').resolve()}"


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        return Path(path) if path and path != ":memory:" else None
    return None


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    """Parallel sweep jobs create the store, experiment and parent run once, not twice."""
    if path is None or not path.parent.is_dir():
        yield
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MLflowLogger(Logger):
    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str = "flower-hydra-runner",
        run_name: str | None = None,
        tags: dict[str, Any] | None = None,
        parent_run_per_sweep: bool = True,
        log_clients: bool = True,
        log_checkpoint: bool = False,
    ) -> None:
        super().__init__(log_clients, log_checkpoint)
        require("mlflow", "mlflow", "mlflow")
        self.tracking_uri = tracking_uri
        self.experiment_name = str(experiment_name)
        self.run_name = run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.parent_run_per_sweep = bool(parent_run_per_sweep)
        self.client: Any = None
        self.uri: str | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.output_dir: Path | None = None
        self._present: set[tuple[str, int]] = set()

    # -- start --------------------------------------------------------------------------
    def start(
        self, run: RunInfo, state: dict[str, Any] | None, history: list[tuple[int, Metrics]]
    ) -> Iterable[tuple[str, int]] | None:
        from mlflow import MlflowClient

        self.output_dir = run.output_dir
        if state and state.get("run_id"):
            present = self._reopen(run, state)
            if present is not None:
                return present
        self.uri = self.tracking_uri or default_tracking_uri()
        if self.uri.startswith(("http://", "https://")):  # a server that is down must not stall rounds for minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        db = _sqlite_path(self.uri)
        lock = Path(f"{db}.lock") if db else (Path(run.group) / ".mlflow.lock" if run.group else None)
        with _file_lock(lock):
            if db is not None and not db.exists():
                log.info("mlflow: creating the tracking store %s (first use takes a few seconds)", db)
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment()
            tags = self._run_tags(run)
            if run.group and self.parent_run_per_sweep:
                tags["mlflow.parentRunId"] = self._parent(run.group)
        name = str(self.run_name or run.name or run.output_dir.name)[:MAX_KEY]
        created = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.run_id = created.info.run_id
        log.info("mlflow: run %s (%s) in experiment %r at %s", self.run_id, name, self.experiment_name, self.uri)
        return None

    def _reopen(self, run: RunInfo, state: dict[str, Any]) -> set[tuple[str, int]] | None:
        from mlflow import MlflowClient

        uri = str(state.get("tracking_uri") or self.tracking_uri or default_tracking_uri())
        run_id = str(state["run_id"])
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_run(run_id)
            if found.info.lifecycle_stage == "deleted":
                raise LookupError("the run was deleted")
        except Exception as exc:  # noqa: BLE001 - say why, then start a new run
            log.warning(
                "mlflow: cannot reopen run %s at %s (%s); starting a new run",
                run_id,
                uri,
                str(exc).splitlines()[0][:200],
            )
            return None
        self.client, self.uri, self.run_id = client, uri, run_id
        self.experiment_id = found.info.experiment_id
        client.update_run(run_id, status="RUNNING")
        present = {(key, int(m.step)) for key in found.data.metrics for m in client.get_metric_history(run_id, key)}
        self._present = set(present)
        # Params cannot change: add new ones, record changed ones in a tag.
        params = _params(run.config)
        old = found.data.params
        self._log_params({k: v for k, v in params.items() if k not in old})
        changed = [f"{k}: {old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v]
        resumes = int(found.data.tags.get("runner.resumes", "0") or 0) + 1
        tags = {"runner.resumes": str(resumes), "runner.output_dir": str(run.output_dir)}
        if changed:
            tags["runner.resume.changed"] = "; ".join(changed)[:MAX_TAG_VALUE]
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        log.info("mlflow: reopened run %s at %s (it holds %d metric points)", run_id, uri, len(present))
        return present

    def _experiment(self) -> str:
        client = self.client
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is None:
            location = None
            if self.tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI"):
                location = (_launch_dir() / "mlruns" / safe_name(self.experiment_name)).resolve().as_uri()
            try:
                return str(client.create_experiment(self.experiment_name, artifact_location=location))
            except Exception:  # created meanwhile by a parallel job?
                exp = client.get_experiment_by_name(self.experiment_name)
                if exp is None:
                    raise
        if exp.lifecycle_stage == "deleted":
            log.info("mlflow: restoring the deleted experiment %r", self.experiment_name)
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)

    def _parent(self, group: str) -> str:
        """One parent run per sweep dir, found by tag (so every job of the sweep finds it)."""
        sweep_id = hashlib.sha1(str(Path(group).resolve()).encode()).hexdigest()[:16]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`runner.sweep_id` = '{sweep_id}' and tags.`runner.role` = 'sweep'",
            max_results=1,
        )
        if found:
            return str(found[0].info.run_id)
        label = group_label(group) or group
        parent = self.client.create_run(
            self.experiment_id,
            run_name=label[:MAX_KEY],
            tags={"runner.sweep_id": sweep_id, "runner.role": "sweep", "runner.sweep": label[:MAX_TAG_VALUE]},
        )
        self.client.set_terminated(parent.info.run_id, "FINISHED")  # a folder for the jobs, not a job
        return str(parent.info.run_id)

    def _run_tags(self, run: RunInfo) -> dict[str, str]:
        tags: dict[str, str] = {}
        try:  # what mlflow.start_run would add: user, source, git commit
            from mlflow.tracking.context.registry import resolve_tags

            tags.update({k: str(v) for k, v in resolve_tags().items()})
        except Exception as exc:  # noqa: BLE001 - optional context only
            log.debug("mlflow: no context tags (%s)", exc)
        tags.update({"runner.output_dir": str(run.output_dir), "runner.role": "job"})
        if run.group:
            tags["runner.sweep"] = (group_label(run.group) or run.group)[:MAX_TAG_VALUE]
        tags.update(self.tags)
        return tags

    # -- logging ------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        self._log_params({sanitize(k): _value(v) for k, v in params.items()})

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        todo = {}
        for key, value in metrics.items():
            name = sanitize(key)
            if (name, step) not in self._present:
                todo[name] = value
        items = [Metric(k, v, now, step) for k, v in todo.items()]
        for i in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + METRICS_PER_BATCH])
        self._present.update((k, step) for k in todo)

    def state_dict(self) -> dict[str, Any]:
        if self.run_id is None:
            return {}
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.uri}

    def finish(self, status: str, artifacts: list[Path]) -> None:
        error: Exception | None = None
        for path in artifacts:
            try:
                sub = artifact_dir(path, self.output_dir) if self.output_dir else None
                self.client.log_artifact(self.run_id, str(path), artifact_path=sub)
            except Exception as exc:  # noqa: BLE001 - upload the others, end the run, then report
                error = error or exc
        self.client.set_tag(self.run_id, "runner.status", status)
        self.client.set_terminated(self.run_id, STATUS.get(status, "KILLED"))
        if error is not None:
            raise error


def _value(value: Any) -> str:
    return str(value)[:MAX_PARAM_VALUE]


def _params(config: dict[str, Any]) -> dict[str, str]:
    from runner.loggers.base import flatten

    return {sanitize(k): _value(v) for k, v in flatten(config).items()}
