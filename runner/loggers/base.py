"""The interface every experiment tracker implements, and small helpers shared by them.

A tracker is a class that a ``logger/`` option names by ``_target_``; its other keys are the
constructor's arguments. ``build_loggers`` instantiates it and sets ``name`` to the option's
key under ``logger``; ``LoggerHub`` then calls the methods below, each inside a guard (an
exception becomes a warning; after repeated failures the logger is switched off), and keeps
the bookkeeping every tracker needs: metric names, steps, de-duplication, params once.

Write your own::

    class MyLogger(Logger):
        def start(self, run, state, history):
            self.out = open(run.output_dir / "my.log", "a")
            return None                      # a new tracker run: the hub logs params + history
        def log_metrics(self, metrics, step):
            print(step, metrics, file=self.out, flush=True)
        def finish(self, status, artifacts):
            self.out.close()

and select it with ``logger=[tensorboard,my]`` from a ``logger/my.yaml`` holding
``my: {_target_: my_pkg.MyLogger}`` in your ``--config-dir``.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

Metrics = dict[str, float]
"""Metric name (``<phase>/<key>`` or ``clients/<phase>/<key>/<partition id>``) -> value."""


@dataclass
class RunInfo:
    """What a tracker needs to know about the run it records."""

    output_dir: Path
    """The run's Hydra output dir (logs and artifacts may go under it)."""
    name: str
    """The job's overrides joined (``strategy=fedadam,seed=1``) or the run dir name."""
    group: str | None
    """The sweep dir of a multirun job; None for a single run."""
    config: dict[str, Any]
    """The resolved run config as a plain nested dict."""


class MissingExtra(ImportError):
    """A tracker's package is not installed (``build_loggers`` turns it into a ConfigError)."""

    def __init__(self, package: str, extra: str, cause: BaseException | None = None) -> None:
        super().__init__(f"needs the {package} package: pip install 'flower-hydra-runner[{extra}]'")
        self.package = package
        self.extra = extra
        self.cause = cause


def require(module: str, package: str, extra: str) -> ModuleType:
    """Import ``module`` or raise MissingExtra naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(package, extra, exc) from exc


class Logger:
    """Base class of a tracker. Override what your tracker supports; the rest are no-ops.

    Attributes set from the config: ``log_clients`` (log per-client metrics) and
    ``log_checkpoint`` (receive the final checkpoint files in ``finish``).
    """

    name: str = "logger"
    log_clients: bool = True
    log_checkpoint: bool = False

    def __init__(self, log_clients: bool = True, log_checkpoint: bool = False) -> None:
        self.log_clients = bool(log_clients)
        self.log_checkpoint = bool(log_checkpoint)

    def start(
        self, run: RunInfo, state: dict[str, Any] | None, history: list[tuple[int, Metrics]]
    ) -> Iterable[tuple[str, int]] | None:
        """Open a new tracker run (``state`` is None) or reopen the one ``state`` names.

        ``history`` holds the (step, metrics) carried over from the checkpoint of a resumed run.
        Return None when a new tracker run was opened: the hub then logs the params and all
        of ``history``. Return the (metric, step) pairs the reopened run already holds: the
        hub logs the rest of ``history`` and never logs one of those pairs again.
        """
        return None

    def log_params(self, params: dict[str, Any]) -> None:
        """The flattened resolved config (``train.lr``: 0.05), once per tracker run."""

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        """Metrics of one step (round); each (name, step) arrives once per tracker run."""

    def state_dict(self) -> dict[str, Any]:
        """JSON-able; saved in every checkpoint manifest and handed back to ``start``."""
        return {}

    def finish(self, status: str, artifacts: list[Path]) -> None:
        """Upload ``artifacts`` and close the tracker run. ``status``: completed, stopped, failed."""


# -- helpers ---------------------------------------------------------------------------------


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value}; lists and empty mappings become JSON-like strings."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        elif isinstance(value, (dict, list, tuple)):
            out[name] = _compact(value)
        else:
            out[name] = value
    return out


def _compact(value: Any) -> str:
    import json

    try:
        return json.dumps(value, default=str, separators=(",", ":"))
    except (TypeError, ValueError):
        return str(value)


def safe_name(text: str, max_len: int = 100) -> str:
    """A file-name-safe, bounded version of ``text`` (job names become directory names)."""
    clean = re.sub(r"[^A-Za-z0-9._=,+@-]+", "_", text).strip("._") or "run"
    if len(clean) > max_len:
        digest = hashlib.sha1(text.encode()).hexdigest()[:8]
        clean = f"{clean[: max_len - 9]}-{digest}"
    return clean


def group_label(group: str | None) -> str | None:
    """The sweep dir as a short label: relative to the working dir when it lies under it."""
    if not group:
        return None
    path = Path(group)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(group)


def artifact_dir(path: Path, output_dir: Path) -> str | None:
    """Where an artifact goes inside the tracker run: its folder relative to the run dir
    (``plots``, ``checkpoints``), None for files at the top of the run dir or outside it."""
    try:
        rel = path.resolve().parent.relative_to(output_dir.resolve())
    except (ValueError, OSError):
        return None
    return None if str(rel) in ("", ".") else rel.as_posix()


def is_checkpoint_file(path: Path) -> bool:
    """Files in a ``checkpoints/`` folder reach only loggers with ``log_checkpoint: true``."""
    return path.parent.name == "checkpoints"
