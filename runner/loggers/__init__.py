"""Experiment tracking: TensorBoard, MLflow, Weights & Biases (and any user ``_target_``).

The run builds one ``LoggerHub`` from the ``logger`` config node and feeds it what it writes
anyway: each ``metrics.jsonl`` row, per-client metrics, the artifacts at the end. The hub
turns rows into metric names (``<phase>/<key>``, step = round), logs the params once per
tracker run, never logs a (metric, step) pair twice, keeps each tracker's run id in the
checkpoint manifest (``state_dict``) so that a resumed run continues the same tracker run,
and turns every tracker exception into a warning: a tracker never stops training or a
checkpoint. A hub without loggers imports nothing and costs nothing.
"""

from __future__ import annotations

import logging
import numbers
import random
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.loggers.base import Logger, Metrics, MissingExtra, RunInfo, flatten, is_checkpoint_file

__all__ = ["MAX_FAILURES", "Logger", "LoggerHub", "RunInfo", "build_loggers", "row_metrics"]

log = logging.getLogger("runner")

MAX_FAILURES = 3
"""Consecutive failures after which a logger is switched off for the rest of the run."""

NOT_METRICS = frozenset({"round", "phase", "elapsed_s"})


def row_metrics(row: Mapping[str, Any]) -> Metrics:
    """One metrics.jsonl row -> {"<phase>/<key>": value} for every numeric key but round/elapsed_s."""
    phase = str(row.get("phase", "metrics"))
    return {
        f"{phase}/{key}": float(value) for key, value in row.items() if key not in NOT_METRICS and _is_number(value)
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@contextmanager
def _rng_untouched() -> Iterator[None]:
    """Trackers must not move the global RNGs the runner's exact resume relies on."""
    py = random.getstate()
    np_mod = sys.modules.get("numpy")
    torch_mod = sys.modules.get("torch")
    np_state = np_mod.random.get_state() if np_mod is not None else None
    torch_state = torch_mod.get_rng_state() if torch_mod is not None else None
    try:
        yield
    finally:
        random.setstate(py)
        if np_mod is not None and np_state is not None:
            np_mod.random.set_state(np_state)
        if torch_mod is not None and torch_state is not None:
            torch_mod.set_rng_state(torch_state)


class _Slot:
    """One logger and the hub's bookkeeping for it."""

    def __init__(self, logger: Logger) -> None:
        self.logger = logger
        self.name = logger.name
        self.active = False
        self.failures = 0
        self.seen: dict[str, set[int]] = {}
        self.state: dict[str, Any] | None = None  # last known state_dict (loaded or captured)

    def fresh(self, key: str, step: int) -> bool:
        steps = self.seen.setdefault(key, set())
        if step in steps:
            return False
        steps.add(step)
        return True


class LoggerHub:
    """All trackers of one run behind one guarded interface (see the module docstring)."""

    def __init__(self, loggers: list[Logger], run: RunInfo) -> None:
        self.run = run
        self._slots = [_Slot(lg) for lg in loggers]
        self._lock = threading.RLock()
        self._started = False

    # -- introspection ----------------------------------------------------------------------
    def __bool__(self) -> bool:
        return bool(self._slots)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._slots]

    @property
    def active(self) -> list[str]:
        return [s.name for s in self._slots if s.active]

    def logger(self, name: str) -> Logger:
        return next(s.logger for s in self._slots if s.name == name)

    # -- the interface the run calls -------------------------------------------------------
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Tracker run ids from a checkpoint manifest; call before ``start`` when resuming."""
        if not self._slots or not state:
            return
        with self._lock:
            for slot in self._slots:
                entry = state.get(slot.name)
                slot.state = dict(entry) if isinstance(entry, dict) and entry else None
            unknown = sorted(set(state) - set(self.names))
            if unknown:
                log.info("checkpoint names tracker runs of loggers not selected now: %s", ", ".join(unknown))

    def start(self, history: list[dict[str, Any]]) -> None:
        """Open (or reopen) every tracker run; log params once and what ``history`` lacks there."""
        if not self._slots:
            return
        with self._lock:
            self._started = True
            steps = [(int(row["round"]), row_metrics(row)) for row in history if "round" in row]
            params: dict[str, Any] | None = None
            for slot in self._slots:
                ok, present = self._call(slot, "start", slot.logger.start, self.run, slot.state, steps, fatal=True)
                if not ok:
                    continue
                slot.active = True
                if present is None:
                    if params is None:
                        params = flatten(self.run.config)
                    self._call(slot, "log_params", slot.logger.log_params, params)
                else:
                    for key, step in present:
                        slot.seen.setdefault(str(key), set()).add(int(step))
                for step, metrics in steps:
                    self._log(slot, metrics, step)
                self._capture(slot)

    def log_row(self, row: dict[str, Any]) -> None:
        """One metrics.jsonl row: every numeric key but round/phase/elapsed_s, step = round."""
        if not self._slots or "round" not in row:
            return
        metrics = row_metrics(row)
        if not metrics:
            return
        step = int(row["round"])
        with self._lock:
            for slot in self._slots:
                self._log(slot, metrics, step)

    def log_clients(self, rnd: int, phase: str, per_client: dict[int, dict[str, float]]) -> None:
        """Per-client metrics of one round as ``clients/<phase>/<metric>/<partition id>``."""
        if not self._slots or not any(s.logger.log_clients for s in self._slots):
            return
        metrics = {
            f"clients/{phase}/{key}/{pid}": float(value)
            for pid, values in sorted(per_client.items())
            for key, value in values.items()
            if _is_number(value)
        }
        if not metrics:
            return
        with self._lock:
            for slot in self._slots:
                if slot.logger.log_clients:
                    self._log(slot, metrics, int(rnd))

    def state_dict(self) -> dict[str, Any]:
        """{logger name: its state} for the checkpoint manifest (JSON-able, never raises)."""
        if not self._slots:
            return {}
        with self._lock:
            out: dict[str, Any] = {}
            for slot in self._slots:
                if slot.active:
                    self._capture(slot)
                if slot.state:
                    out[slot.name] = slot.state
            return out

    def finish(self, status: str, artifacts: list[Path]) -> None:
        """Upload artifacts and close every tracker run (checkpoint files only where
        ``log_checkpoint`` is on)."""
        if not self._slots:
            return
        with self._lock:
            for slot in self._slots:
                if not slot.active:
                    continue
                files = [Path(p) for p in artifacts if Path(p).is_file()]
                if not slot.logger.log_checkpoint:
                    files = [p for p in files if not is_checkpoint_file(p)]
                self._capture(slot)
                self._call(slot, "finish", slot.logger.finish, status, files, fatal=True)
                slot.active = False

    # -- internals --------------------------------------------------------------------------
    def _log(self, slot: _Slot, metrics: Metrics, step: int) -> None:
        if not slot.active:
            return
        todo = {k: v for k, v in metrics.items() if slot.fresh(k, step)}
        if todo:
            self._call(slot, f"logging step {step}", slot.logger.log_metrics, todo, step)

    def _capture(self, slot: _Slot) -> None:
        ok, state = self._call(slot, "state_dict", slot.logger.state_dict, quiet=True)
        if ok and isinstance(state, dict):
            slot.state = _jsonable(state) or slot.state

    def _call(
        self, slot: _Slot, what: str, fn: Callable[..., Any], *args: Any, fatal: bool = False, quiet: bool = False
    ) -> tuple[bool, Any]:
        try:
            with _rng_untouched():
                result = fn(*args)
        except Exception as exc:  # noqa: BLE001 - a tracker must never stop training or a checkpoint
            slot.failures += 1
            message = (str(exc).strip().splitlines() or [""])[0][:300]
            if what == "start":
                log.warning(
                    "logger %s: could not start (%s: %s); the run goes on without it",
                    slot.name,
                    type(exc).__name__,
                    message,
                )
            elif not quiet or slot.failures == 1:
                log.warning(
                    "logger %s: %s failed (%s: %s); the run goes on", slot.name, what, type(exc).__name__, message
                )
            if slot.active and (fatal or slot.failures >= MAX_FAILURES):
                slot.active = False
                if what != "finish":
                    log.warning(
                        "logger %s: switched off for the rest of this run after %d failures in a row",
                        slot.name,
                        slot.failures,
                    )
            return False, None
        slot.failures = 0
        return True, result


def _jsonable(state: dict[str, Any]) -> dict[str, Any]:
    import json

    try:
        return dict(json.loads(json.dumps(state, default=str)))
    except (TypeError, ValueError):
        return {}


def build_loggers(logger_cfg: Any, run: RunInfo) -> LoggerHub:
    """Instantiate every logger of the ``logger`` node (None or empty: a hub that does nothing).

    Raises ConfigError (``logger.<name>: ...``) for a node that is not a ``_target_`` mapping,
    a class that cannot be built, or a tracker whose package is not installed.
    """
    from runner.config import ConfigError

    if logger_cfg is None:
        return LoggerHub([], run)
    if not isinstance(logger_cfg, Mapping):
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(logger_cfg, DictConfig):
                logger_cfg = OmegaConf.to_container(logger_cfg, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a dependency
            pass
    if not isinstance(logger_cfg, Mapping):
        raise ConfigError("logger", "expected a mapping of logger name -> {_target_: ...}", logger_cfg)
    if "_target_" in logger_cfg:
        raise ConfigError(
            "logger",
            "put each logger under its own key (logger.<name>._target_), so several can be combined",
            show_value=False,
        )
    loggers: list[Logger] = []
    for name, node in logger_cfg.items():
        if node is None:
            continue  # logger.<name>=null switches one selected logger off
        key = f"logger.{name}"
        if not isinstance(node, Mapping) or "_target_" not in node:
            raise ConfigError(key, "expected a mapping with a _target_ (the logger class)", show_value=False)
        loggers.append(_instantiate(key, str(name), dict(node), ConfigError))
    return LoggerHub(loggers, run)


def _instantiate(key: str, name: str, node: dict[str, Any], error: type[Exception]) -> Logger:
    from hydra.utils import instantiate

    try:
        obj = instantiate(node, _convert_="all")
    except Exception as exc:  # noqa: BLE001 - any failure to build is a config error
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, MissingExtra):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, MissingExtra):
            raise error(key, str(cause), show_value=False) from None  # type: ignore[call-arg]
        root: BaseException = exc
        while root.__cause__ is not None:
            root = root.__cause__
        detail = (str(root).strip().splitlines() or [type(root).__name__])[-1]
        raise error(key, f"cannot build {node['_target_']}: {detail}", show_value=False) from None  # type: ignore[call-arg]
    missing = [m for m in ("start", "log_metrics", "state_dict", "finish") if not callable(getattr(obj, m, None))]
    if missing:
        raise error(
            key,
            f"{node['_target_']} is not a logger (no {', '.join(missing)}); subclass runner.loggers.Logger",
            show_value=False,
        )  # type: ignore[call-arg]
    try:
        obj.name = name
    except AttributeError:
        pass
    for attr, default in (("log_clients", True), ("log_checkpoint", False), ("log_params", None)):
        if not hasattr(obj, attr):
            setattr(obj, attr, default if default is not None else (lambda params: None))
    return obj
