"""``run(cfg)``: one experiment, from a composed config to a finished run dir.

The Hydra entry point (``runner/__main__.py``) only calls this. In order:

1. resolve and validate the config; the engine checks it can host a client;
2. :func:`prepare`: build the strategy, model, task and data, check that the model fits
   the data and the task (one batch), that ``checkpoint.monitor`` names a metric the run
   produces, and resolve ``resume=`` — every error so far is one line, before any output;
3. print the config tree, then run the ServerApp's round loop on the engine;
4. write ``summary.json`` and the plots, also when the run failed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from omegaconf import DictConfig

from runner.algorithms.compose import check_algorithms, client_algorithms, personal_algorithm
from runner.algorithms.personalization import personal_keys
from runner.build import build
from runner.checkpoint.checkpointer import Checkpointer
from runner.checkpoint.code_digest import changed_modules, code_digest
from runner.checkpoint.fingerprint import fingerprint
from runner.checkpoint.resume import ResumePoint, resolve_resume
from runner.client_state import ClientStateStore
from runner.config import ConfigError, to_container, validate
from runner.server_app import LoopState, RoundLoop, ServerHooks, make_server_app
from runner.state import flat_metrics, round_metric, round_metrics
from runner.stateful import StateAudit, components

log = logging.getLogger("runner")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# summary.json["status"]: completed (every round aggregated), degraded (failed rounds within
# tolerate_failed_rounds), failed, stopped (stop_after_round), interrupted (Ctrl-C, SIGTERM).
STATUSES = ("completed", "degraded", "failed", "stopped", "interrupted")


class RunFailed(RuntimeError):
    """The run ended without learning what it was asked to (more failed rounds than
    ``tolerate_failed_rounds``): exit 1, status failed, after summary.json is written."""


def _to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    # not np.ascontiguousarray: it makes 0-d arrays (BatchNorm counters) 1-d, and a strategy
    # that hands back what it sent (FedBN) then checkpoints weights that no longer fit the model
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    return ArrayRecord({k: Array(a if a.flags.c_contiguous else a.copy(order="C")) for k, a in arrays.items()})


def _apply_telemetry(setting: bool | None) -> None:
    if setting is None:
        return
    import flwr.supercore.telemetry as telemetry

    telemetry.FLWR_TELEMETRY_ENABLED = "1" if setting else "0"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from runner.report._atomic import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, default=str))


@dataclass
class JobInfo:
    """Where this run sits: its dirs, and its name and sweep group for trackers."""

    output_dir: Path
    launch_dir: Path
    name: str = ""
    group: str | None = None


@dataclass
class Prepared:
    """Everything :func:`prepare` checked and built before the first line of output."""

    cfg: dict[str, Any]
    fp: str
    strategy: Any
    reference: dict[str, np.ndarray]
    weights: dict[str, np.ndarray]
    point: ResumePoint | None
    metric_names: list[str]
    clients: ClientStateStore
    loggers: Any = None
    warnings: list[str] | None = None  # found while preparing (skipped checkpoints, edited code)
    code: dict[str, str] | None = None  # code digest of the user modules the config names


# ------------------------------------------------------------------------------ prepare


def _probe(run_cfg: dict[str, Any], model: Any) -> tuple[list[str], list[str]]:
    """Evaluate the initial model on one batch of the server's test split: the model must
    accept the data and its outputs must fit the task. Returns (eval, train) metric names."""
    import torch

    from runner.data import Split, server_test_split
    from runner.runtime import build_task
    from runner.tasks import EvalContext

    task = build_task(run_cfg)
    test = server_test_split(run_cfg)
    batch = Split(test.data, test.idx[: max(1, min(len(test.idx), 32))])
    try:
        with torch.no_grad():
            metrics = task.evaluate(model, batch, EvalContext())
    except Exception as exc:
        shape = [len(batch), *test.data.input_shape]
        raise ConfigError(
            "model",
            f"{run_cfg['model']['_target_']} does not fit a batch of {run_cfg['dataset']['_target_']} "
            f"(input {shape}) with task {run_cfg['task']['_target_']}: {type(exc).__name__}: {_first_line(exc)}",
            show_value=False,
        ) from None
    if not isinstance(metrics, dict) or not metrics:
        raise ConfigError(
            "task", f"{run_cfg['task']['_target_']}.evaluate must return a dict of metrics", show_value=False
        )
    names = sorted(str(k) for k in metrics)
    train = [str(n) for n in getattr(task, "train_metrics", names)]
    return names, train


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


def _metric_names(
    run_cfg: dict[str, Any], eval_names: list[str], train_names: list[str], strategy: Any, personal: bool = False
) -> list[str]:
    """Every metric the run produces; ``personal``: a client algorithm has a personal model
    (``evaluate_personal_<name>`` next to the global model's ``evaluate_<name>``)."""
    names = {f"centralized_{n}" for n in eval_names}
    names |= {f"train_{n}" for n in train_names} | {"train_num_replies", "train_num_failures"}
    if float(run_cfg["strategy"].get("fraction_evaluate", 1.0)) > 0:
        names |= {f"evaluate_{n}" for n in eval_names} | {"evaluate_num_replies", "evaluate_num_failures"}
        if personal:
            names |= {f"evaluate_personal_{n}" for n in eval_names}
    for _, obj in components(strategy):
        if type(obj).__name__.startswith("DifferentialPrivacy"):
            names |= {"privacy_noise_multiplier", "privacy_clipping_norm"}
            if getattr(obj, "accountant", None) is not None:
                names |= {"privacy_epsilon", "privacy_delta", "privacy_num_releases"}
    return sorted(names)


def prepare(run_cfg: dict[str, Any], job: JobInfo) -> Prepared:
    """Build and check everything that can fail before the run starts (one-line errors)."""
    from runner.data import partitions
    from runner.runtime import build_model, state_to_numpy
    from runner.strategies import build_strategy

    fp = fingerprint(run_cfg)
    for note in partitions(run_cfg).notes:  # loads and partitions the data: errors surface here
        log.warning("partitioner: %s", note)
    model = build_model(run_cfg)
    reference = state_to_numpy(model)
    eval_names, train_names = _probe(run_cfg, model)
    strategy = build_strategy(run_cfg)
    algorithms = client_algorithms(run_cfg)  # the client half: built here too, so its errors exit 2
    check_algorithms(algorithms)
    personal = personal_algorithm(algorithms) is not None
    metric_names = _metric_names(run_cfg, eval_names, train_names, strategy, personal)
    _check_targets(run_cfg, metric_names)
    monitor = run_cfg["checkpoint"]["monitor"]
    if monitor is not None and monitor not in metric_names:
        raise ConfigError(
            "checkpoint.monitor",
            f"this run produces no metric {monitor!r}; available: {', '.join(metric_names)}",
            show_value=False,
        )
    for pattern in (run_cfg.get("personalization") or {}).get("layers") or []:
        if not personal_keys(list(reference), [pattern]):
            raise ConfigError(
                "personalization.layers",
                f"{pattern!r} matches no weight of the model (keys: {', '.join(list(reference)[:8])}, …)",
                show_value=False,
            )
    weights = reference
    if run_cfg.get("init_weights"):
        from runner.checkpoint.migrate import load_foreign_weights

        weights = load_foreign_weights(Path(run_cfg["init_weights"]), reference, match=run_cfg["init_weights_match"])
        log.info("warm start from %s (weights only; round 1)", run_cfg["init_weights"])
    notes: list[str] = []
    point = resolve_resume(run_cfg, fp, job.launch_dir, reference, notes)
    code = code_digest(run_cfg)
    if point is not None:
        changed = changed_modules(point.manifest.get("code_digest"), code)
        if changed:
            text = (
                f"resume: the code of {', '.join(changed)} changed since {point.manifest_path} was written "
                "(code digest differs): the resumed run is not promised to be exact"
            )
            log.warning("%s", text)
            notes.append(text)
    # Clients return state only when a client algorithm keeps some (personalization,
    # optimizer state, SCAFFOLD, a user's); the store stays empty otherwise.
    clients = ClientStateStore()
    loggers = _loggers(run_cfg, job)
    return Prepared(run_cfg, fp, strategy, reference, weights, point, metric_names, clients, loggers, notes, code)


def _loggers(run_cfg: dict[str, Any], job: JobInfo) -> Any:
    """The trackers of the ``logger`` node (a missing extra is a one-line error here)."""
    if not run_cfg.get("logger"):
        return None
    from runner.loggers import RunInfo, build_loggers

    info = RunInfo(output_dir=job.output_dir, name=job.name or job.output_dir.name, group=job.group, config=run_cfg)
    return build_loggers(run_cfg["logger"], info)


# ---------------------------------------------------------------------------- experiment


class Experiment:
    """Bookkeeping of one run: metrics file, checkpoints, trackers, progress, summary."""

    def __init__(self, prep: Prepared, job: JobInfo) -> None:
        self.prep = prep
        self.cfg = prep.cfg
        self.out = job.output_dir
        self.job = job
        self.t_start = time.monotonic()
        self.num_rounds = int(self.cfg["num_rounds"])
        self.ckpt = Checkpointer(
            self.cfg["checkpoint"], self.out, fingerprint=prep.fp, config=self.cfg, num_rounds=self.num_rounds
        )
        self.ckpt.code_digest = dict(prep.code or {})
        for name, obj in components(prep.strategy):
            self.ckpt.register(name, obj)
        self.ckpt.register("clients", prep.clients)
        self.loggers = prep.loggers
        if self.loggers is not None:
            self.ckpt.register("loggers", self.loggers)
        self.first_round_s: float | None = None
        self.startup_s: Callable[[], float | None] = lambda: None  # the round loop's, once it ran
        self.progress: Any = None
        self.state: LoopState | None = None

    # -- preparation --------------------------------------------------------------------
    def initial_state(self) -> LoopState:
        prep = self.prep
        point = prep.point
        if point is None:
            return LoopState(arrays=_to_record(prep.weights), warnings=list(prep.warnings or []))
        self.ckpt.resumed_from = str(point.manifest_path)
        manifest = point.manifest
        rnd = int(manifest["round"])
        state = manifest["state"]
        restored = ["weights", "round", "metrics history"]
        skipped = []
        if point.restore_state:
            restored += self.ckpt.restore(state, point.state_arrays)
        else:
            skipped += ["strategy state", "client state", "rng", "best tracker"]
        log.info(
            "resuming from %s (round %d, phase %s): restored %s%s",
            point.manifest_path,
            rnd,
            manifest["phase"],
            ", ".join(restored),
            f"; not restored (config differs): {', '.join(skipped)}" if skipped else "",
        )
        eval_pending = bool(state.get("eval_pending")) and rnd <= self.num_rounds
        history = list(state["history"])
        # Failures of the rounds before the checkpoint, as its metrics rows recorded them
        rows = [r for r in history if r.get("phase") in ("train", "evaluate") and "num_failures" in r]
        return LoopState(
            arrays=_to_record(point.weights),
            start_round=rnd + 1,
            eval_pending_round=rnd if eval_pending else None,
            history=history,
            rounds_done=rnd,
            warnings=list(prep.warnings or []),
            failed_rounds=[int(r["round"]) for r in rows if r["phase"] == "train" and not r.get("num_replies")],
            client_failures=sum(int(r["num_failures"]) for r in rows),
        )

    # -- hooks --------------------------------------------------------------------------
    def on_row(self, row: dict[str, Any]) -> None:
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.loggers is not None:
            self.loggers.log_row(row)

    def hooks(self) -> ServerHooks:
        def after_fit(rnd: int, arrays: ArrayRecord, st: LoopState) -> None:
            self.ckpt.after_fit(rnd, arrays, st.history, round_metrics(st.history, rnd))

        def after_evaluate(rnd: int, arrays: ArrayRecord, st: LoopState) -> None:
            self.ckpt.after_evaluate(rnd, arrays, st.history, round_metrics(st.history, rnd))

        def on_round_end(rnd: int, st: LoopState) -> None:
            if self.first_round_s is None:
                self.first_round_s = time.monotonic() - self.t_start
            if self.progress is not None:
                self.progress.update(rnd, flat_metrics(st.history, rnd))

        def on_clients(rnd: int, phase: str, per_client: dict[int, dict[str, float]]) -> None:
            if self.loggers is not None:
                self.loggers.log_clients(rnd, phase, per_client)

        return ServerHooks(self.on_row, after_fit, after_evaluate, on_round_end, on_clients)

    # -- summary ------------------------------------------------------------------------
    def finish(self, status: str, error: BaseException | None) -> dict[str, Any]:
        """Flush checkpoints, then write summary.json and the plots, also for a failed run."""
        try:
            self.ckpt.close()
        except BaseException as exc:
            status, error = "failed", error or exc
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
            reason = None if error is None else f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
            summary = self.summary(status, reason)
            _write_json(self.out / SUMMARY_FILE, summary)
            plots = _plot(self.out)
            if self.loggers is not None:
                self.loggers.finish(status, [*plots, self.out / SUMMARY_FILE, *self._last_checkpoint_files()])
        return summary

    def _last_checkpoint_files(self) -> list[Path]:
        """The final checkpoint's files (trackers upload them only with log_checkpoint: true)."""
        from runner.checkpoint.store import CheckpointError, file_entries, read_manifest

        last = self.ckpt.pointers().get("last")
        if not last:
            return []
        try:
            manifest = read_manifest(last)
        except CheckpointError:
            return []
        return [Path(last), *(Path(last).parent / e["name"] for _, e in file_entries(manifest))]

    def summary(self, status: str, error: str | None) -> dict[str, Any]:
        st = self.state
        history = st.history if st else []
        best = self.ckpt.policy.state_dict()
        return {
            "status": status,
            "num_rounds": self.num_rounds,
            "rounds_done": st.rounds_done if st else 0,
            "wall_time_s": round(time.monotonic() - self.t_start, 3),
            "time_to_first_round_s": None if self.first_round_s is None else round(self.first_round_s, 3),
            "final": flat_metrics(history),
            "best": {
                "metric": self.cfg["checkpoint"]["monitor"],
                "mode": self.cfg["checkpoint"]["mode"],
                "value": best.get("best_value"),
                "round": best.get("best_round"),
            },
            "resumed_from": self.ckpt.resumed_from,
            "fingerprint": self.prep.fp,
            "checkpoints": self.ckpt.pointers(),
            "warnings": list(st.warnings) if st else list(self.prep.warnings or []),
            "failures": failures_of(st),
            "error": error,
            **self.results(history),
        }

    def results(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        """What a paper reports besides the metrics: times, bytes, rounds to target, the split."""
        from runner.report.results import rounds_to_targets, split_summary, totals

        startup = self.startup_s()
        return {
            "startup_s": None if startup is None else round(startup, 3),
            "rounds_s": max((float(r["elapsed_s"]) for r in history if "elapsed_s" in r), default=None),
            "totals": totals(history),
            "rounds_to_target": rounds_to_targets(history, (self.cfg.get("report") or {}).get("targets") or {}),
            "split": split_summary(self.out),
        }


def failures_of(st: LoopState | None) -> dict[str, Any]:
    """summary.json["failures"]: failed rounds (no aggregate) and failed client replies."""
    rounds = sorted(set(st.failed_rounds)) if st else []
    return {
        "failed_rounds": len(rounds),
        "failed_round_numbers": rounds,
        "client_failures": st.client_failures if st else 0,
        "first_error": st.first_error if st else None,
    }


def _progress(run_cfg: dict[str, Any], start_round: int) -> Any:
    from runner.report.progress import RoundProgress

    mode = run_cfg["progress"]
    if mode == "off":
        return None
    interactive = {"auto": None, "bar": True, "log": False}[mode]
    return RoundProgress(int(run_cfg["num_rounds"]), start_round=start_round, interactive=interactive)


def run(
    cfg: DictConfig,
    output_dir: Path,
    launch_dir: Path,
    name: str = "",
    group: str | None = None,
    last_job: bool = False,
) -> float | None:
    """Run one experiment; returns the best value of ``checkpoint.monitor`` (for sweepers).

    ``last_job``: this process runs no other experiment after this one (``python -m runner``
    without ``-m``), so the engine may release its workers as soon as the rounds end."""
    from runner.logs import tame_flower_logging

    tame_flower_logging()
    job = JobInfo(output_dir, launch_dir, name, group)
    _fill_data_shape(cfg)
    run_cfg = to_container(cfg)
    validate(run_cfg)
    _apply_telemetry(run_cfg["telemetry"])
    _refuse_used_dir(output_dir, run_cfg)
    engine = build(run_cfg["engine"], "engine")
    if last_job and hasattr(engine, "last_run"):
        engine.last_run = True
    engine.preflight(run_cfg)
    prep = _prepare_or_record(run_cfg, job)
    if _already_complete(prep):
        _complete_requeued(prep, job)
        return _monitored_at(prep)
    if run_cfg["print_config"]:
        from runner.report.config_tree import print_config_tree

        print_config_tree(run_cfg, save_to=output_dir / "config_tree.txt")
    launch = getattr(engine, "launch", None)
    if launch is not None:  # the round loop runs in a process the engine starts (deployment)
        result: float | None = launch(run_cfg, job)
        return result

    def drive(loop: RoundLoop) -> None:
        from runner import client_app

        result: dict[str, Any] = {}
        engine.run(make_server_app(loop, result), client_app.app, int(run_cfg["num_clients"]), run_cfg["backend"])
        if "state" not in result:
            raise RuntimeError("the simulation ended without finishing the round loop")

    return execute(prep, job, drive)


def serve(grid: Any, run_cfg: dict[str, Any], job: JobInfo) -> float | None:
    """The round loop on a grid someone else gives us (a deployment's ServerApp process):
    the same preparation, checkpoints, metrics and resume as :func:`run`."""
    from runner.logs import tame_flower_logging

    tame_flower_logging()
    validate(run_cfg)
    _apply_telemetry(run_cfg["telemetry"])
    prep = _prepare_or_record(run_cfg, job)
    if _already_complete(prep):
        return _monitored_at(prep)

    def drive(loop: RoundLoop) -> None:
        loop.run(grid)

    return execute(prep, job, drive)


def _prepare_or_record(run_cfg: dict[str, Any], job: JobInfo) -> Prepared:
    try:
        return prepare(run_cfg, job)
    except BaseException as exc:  # a sweep's summary shows why this job failed
        _write_json(
            job.output_dir / SUMMARY_FILE,
            {
                "status": "failed",
                "rounds_done": 0,
                "warnings": [],
                "failures": failures_of(None),
                "error": f"{type(exc).__name__}: {exc}",
            },
        )
        raise


def _already_complete(prep: Prepared) -> bool:
    if prep.point is None or int(prep.point.manifest["round"]) < int(prep.cfg["num_rounds"]):
        return False
    log.warning(
        "already complete at round %d (num_rounds=%d): nothing to do",
        prep.point.manifest["round"],
        prep.cfg["num_rounds"],
    )
    return True


def _complete_requeued(prep: Prepared, job: JobInfo) -> None:
    """A requeued job whose own last checkpoint is already the final round (it was stopped
    while finishing): its summary and plots say so. Elsewhere nothing is written."""
    assert prep.point is not None
    if prep.point.manifest_path.parent.resolve() != (job.output_dir / "checkpoints").resolve():
        return
    exp = Experiment(prep, job)
    exp.state = exp.initial_state()
    _write_json(job.output_dir / SUMMARY_FILE, exp.summary("completed", None))
    _plot(job.output_dir)


def _monitored_at(prep: Prepared) -> float | None:
    assert prep.point is not None
    rnd = int(prep.point.manifest["round"])
    return round_metric(list(prep.point.manifest["state"]["history"]), rnd, prep.cfg["checkpoint"]["monitor"])


def execute(prep: Prepared, job: JobInfo, drive: Callable[[RoundLoop], None]) -> float | None:
    """Run the round loop (``drive`` runs it on an engine) with all the run's bookkeeping."""
    run_cfg = prep.cfg
    exp = Experiment(prep, job)
    st = exp.initial_state()
    exp.state = st
    log.info(
        "run dir %s | strategy %s | model %s | dataset %s | %d clients | rounds %d..%d | fingerprint %s",
        job.output_dir,
        _short(run_cfg["strategy"]) + (f"+{_short(run_cfg['dp'])}" if run_cfg.get("dp") else ""),
        _short(run_cfg["model"]),
        _short(run_cfg["dataset"]),
        run_cfg["num_clients"],
        st.eval_pending_round or st.start_round,
        exp.num_rounds,
        prep.fp,
    )
    status: str = "failed"
    error: BaseException | None = None
    failure: RunFailed | None = None
    try:
        _write_split(run_cfg, job.output_dir)
        if st.history or (job.output_dir / METRICS_FILE).exists():
            # carried-over history: the metrics file covers rounds 1..N (a requeued job's
            # own file is rewritten from its checkpoint: rows after it are redone)
            with open(job.output_dir / METRICS_FILE, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in st.history)
        if exp.loggers is not None:
            exp.loggers.start(list(st.history))
        exp.ckpt.open()
        exp.progress = _progress(run_cfg, st.eval_pending_round or st.start_round)
        audit = StateAudit([*components(prep.strategy)])
        loop = RoundLoop(run_cfg, prep.strategy, exp.hooks(), st, clients=prep.clients, audit=audit)
        exp.startup_s = lambda: loop.startup_s
        drive(loop)
        status = "stopped" if st.stopped_early else "completed"
        if st.failed is not None:  # no learning, no success
            status, failure = "failed", RunFailed(st.failed)
            error = failure
        elif st.failed_rounds:
            status = "degraded"
            log.warning(
                "degraded: %d failed round(s) (%s), within tolerate_failed_rounds=%s; first error: %s",
                len(st.failed_rounds),
                ", ".join(map(str, st.failed_rounds)),
                run_cfg["tolerate_failed_rounds"],
                st.first_error,
            )
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, SIGTERM, a scheduler's signal
        status, error = "interrupted", exc
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        summary = exp.finish(status, error)
    best = summary["best"]["value"]
    log.info(
        "%s: %d/%d rounds in %.1fs | final %s | best %s=%s (round %s)",
        status,
        st.rounds_done,
        exp.num_rounds,
        summary["wall_time_s"],
        _fmt(summary["final"]),
        run_cfg["checkpoint"]["monitor"],
        best,
        summary["best"]["round"],
    )
    if failure is not None:
        raise failure
    return None if best is None or (isinstance(best, float) and math.isnan(best)) else float(best)


def _fill_data_shape(cfg: DictConfig) -> None:
    """``dataset.input_shape``/``num_classes`` left unset (null or ???): read them from the data
    before anything interpolates them (models do). Loading first also reports a missing file or
    column before any key that depends on it."""
    from omegaconf import OmegaConf

    node = cfg.get("dataset")
    if not isinstance(node, DictConfig) or not any(k in node for k in ("input_shape", "num_classes")):
        return
    unset = [
        k for k in ("input_shape", "num_classes") if k in node and (OmegaConf.is_missing(node, k) or node[k] is None)
    ]
    if not unset:
        return
    for key in map(str, node):
        if key not in unset and OmegaConf.is_missing(node, key):
            raise ConfigError(f"dataset.{key}", "missing mandatory value", show_value=False)
    try:
        data_cfg = OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    except Exception as exc:  # noqa: BLE001 - a bad interpolation: to_container names it
        raise ConfigError("dataset", str(exc).splitlines()[0], show_value=False) from None
    assert isinstance(data_cfg, dict)
    for key in unset:
        data_cfg[key] = None
    from runner.data import load_data

    data = load_data({str(k): v for k, v in data_cfg.items()})
    found = {"input_shape": data.input_shape, "num_classes": data.num_classes}
    for key in unset:
        node[key] = found[key]
    log.info("dataset: %s read from the data", ", ".join(f"{k}={found[k]}" for k in unset))


def _write_split(run_cfg: dict[str, Any], output_dir: Path) -> None:
    """``partitions.json``: the data split, per client (its plot comes with the run's plots)."""
    from runner.report.partitions import write_partitions

    write_partitions(run_cfg, output_dir)


def _check_targets(run_cfg: dict[str, Any], metric_names: list[str]) -> None:
    """``report.targets`` must name metrics the run produces (or their client spread)."""
    from runner.report.comm import CLIENT_SUFFIXES

    known = set(metric_names)
    for name in (run_cfg.get("report") or {}).get("targets") or {}:
        base = next((name[: -len(s)] for s in CLIENT_SUFFIXES if name.endswith(s)), name)
        if base not in known:
            raise ConfigError(
                f"report.targets.{name}",
                f"this run produces no metric {base!r}; available: {', '.join(metric_names)}",
                show_value=False,
            )


def _short(node: dict[str, Any]) -> str:
    return str(node.get("_target_", "?")).rsplit(".", 1)[-1]


def _refuse_used_dir(output_dir: Path, run_cfg: dict[str, Any]) -> None:
    """Two runs must never share a dir: Hydra's default names it by the second it started.

    The exception is a requeued job (SLURM/submitit rerun the same job in the same dir): with
    ``resume=latest|best`` and only checkpoints of this very config there, it continues.
    """
    from runner.checkpoint.store import scan

    manifests = scan(output_dir / "checkpoints")
    if run_cfg.get("resume") in ("latest", "best") and manifests:
        fp = fingerprint(run_cfg)
        if all(m.manifest is not None and m.manifest.get("fingerprint") == fp for m in manifests):
            log.info("continuing a requeued job in its own run dir %s", output_dir)
            return
    if (output_dir / METRICS_FILE).exists() or manifests:
        raise ConfigError(
            "hydra.run.dir",
            f"{output_dir} already holds a run; start again (or set hydra.run.dir) so nothing is overwritten",
            show_value=False,
        )


def _fmt(metrics: dict[str, float]) -> str:
    keys = (
        "centralized_accuracy",
        "centralized_loss",
        "evaluate_accuracy",
        "evaluate_personal_accuracy",
        "train_loss",
        "privacy_epsilon",
    )
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def _plot(output_dir: Path) -> list[Path]:
    try:
        from runner.report.plots import plot_run

        return plot_run(output_dir)
    except Exception as exc:  # a plot must never fail a finished run
        log.warning("could not write plots: %s", exc)
        return []
