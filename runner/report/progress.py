"""Per-round progress for the server's round loop.

    progress = RoundProgress(num_rounds=cfg.num_rounds, start_round=first_round)
    for rnd in range(first_round, cfg.num_rounds + 1):
        ...
        progress.update(rnd, {"centralized_accuracy": 0.93, "train_loss": 0.21})
    progress.close()

Interactive terminal: a rich progress bar on stderr (round i/N, key metrics, elapsed,
ETA; the ETA leaves out start-up time once two rounds have been timed), drawn above nothing
else: while it is shown, writes to stdout/stderr, including those of logging handlers that
write to the terminal, are printed above the bar.
Otherwise (a log file, CI, a pytest subprocess): one plain line per round through
``logging.getLogger("runner")`` at INFO, no bar and no ANSI codes.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

LOGGER_NAME = "runner"

#: Shown when present, in this order.
KEY_METRICS: tuple[str, ...] = ("centralized_accuracy", "centralized_loss", "train_loss", "evaluate_personal_accuracy")
#: Shown instead of the centralized ones when those are absent.
FALLBACK_METRICS: tuple[str, ...] = ("evaluate_accuracy", "evaluate_loss")
#: Compact labels for the bar (log lines keep the flat names, which are greppable).
SHORT_NAMES: dict[str, str] = {
    "centralized_accuracy": "acc",
    "centralized_loss": "loss",
    "train_loss": "train_loss",
    "evaluate_accuracy": "fed_acc",
    "evaluate_loss": "fed_loss",
    "evaluate_personal_accuracy": "personal_acc",
}


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    v = float(v)
    if math.isnan(v):
        return "nan"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4f}"


def key_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics worth a glance: centralized accuracy/loss and train loss, falling back
    to federated-eval ones; if none of those exist, up to three others by name."""
    chosen = {k: metrics[k] for k in KEY_METRICS if k in metrics}
    if not any(k.startswith("centralized_") for k in chosen):
        chosen.update({k: metrics[k] for k in FALLBACK_METRICS if k in metrics})
    if not chosen:
        chosen = {k: metrics[k] for k in sorted(metrics)[:3]}
    return chosen


def _default_interactive(stream: IO | None) -> bool:
    stream = stream if stream is not None else sys.stderr
    if os.environ.get("TERM") == "dumb" or os.environ.get("CI"):
        return False
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class RoundProgress:
    """Progress of rounds ``start_round..num_rounds`` (a resumed run starts past 1).

    ``interactive=None`` picks a bar when stderr is a terminal. ``stream`` is where
    the bar is drawn (default stderr); ``logger`` gets the plain lines (default the
    ``runner`` logger). Also a context manager.
    """

    def __init__(
        self,
        num_rounds: int,
        start_round: int = 1,
        interactive: bool | None = None,
        *,
        stream: IO | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.num_rounds = int(num_rounds)
        self.start_round = int(start_round)
        self.interactive = _default_interactive(stream) if interactive is None else bool(interactive)
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self._clock = time.monotonic
        self._t0 = self._clock()
        self._first: tuple[int, float] | None = None  # (round, time) of the first update
        self._closed = False
        self._progress: Any = None
        self._task: Any = None
        self._swapped: list[tuple[logging.StreamHandler, IO]] = []
        if self.interactive:
            try:
                self._start_bar(stream)
            except Exception as e:  # a progress bar is never worth failing a run
                self.logger.debug("progress bar unavailable (%s); using log lines", e)
                self.interactive = False
                self._progress = None

    # -- public ------------------------------------------------------------------------

    def update(self, round: int, metrics: Mapping[str, Any] | None = None) -> str:
        """Report that ``round`` finished with ``metrics`` (flat names). Returns the line."""
        metrics = dict(metrics or {})
        now = self._clock()
        elapsed = now - self._t0
        remaining = max(self.num_rounds - round, 0)
        eta = None
        if self._first is not None and round > self._first[0]:
            # rate from rounds after the first one: start-up (Ray, data) is not a round
            eta = (now - self._first[1]) / (round - self._first[0]) * remaining
        elif round >= self.start_round:
            eta = elapsed / (round - self.start_round + 1) * remaining
        if self._first is None and round >= self.start_round:
            self._first = (round, now)
        if remaining == 0:
            eta = 0.0
        shown = " ".join(f"{k}={_fmt_value(v)}" for k, v in key_metrics(metrics).items())
        line = (
            f"round {round}/{self.num_rounds}"
            + (f" | {shown}" if shown else "")
            + f" | elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}"
        )
        if self._progress is not None and not self._closed:
            completed = max(round - self.start_round + 1, 0)
            short = " ".join(f"{SHORT_NAMES.get(k, k)} {_fmt_value(v)}" for k, v in key_metrics(metrics).items())
            self._progress.update(
                self._task,
                completed=completed,
                description=f"round {round}/{self.num_rounds}",
                metrics=short,
                eta=format_duration(eta),
            )
        else:
            self.logger.info(line)
        return line

    def close(self) -> None:
        """Stop the bar (leaving its last state on screen). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._progress is not None:
            try:
                self._progress.stop()
            finally:
                self._restore_handlers()

    def __enter__(self) -> RoundProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close() must not leave the terminal odd
        try:
            self.close()
        except Exception:
            pass

    # -- interactive bar -------------------------------------------------------------

    def _start_bar(self, stream: IO | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(file=stream, stderr=stream is None)
        total = max(self.num_rounds - self.start_round + 1, 0)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            TextColumn("{task.fields[metrics]}"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=console,
            transient=False,
            redirect_stdout=True,
            redirect_stderr=True,
        )
        self._task = self._progress.add_task(
            f"round {self.start_round - 1}/{self.num_rounds}", total=total, metrics="", eta="?"
        )
        orig = {id(sys.stdout): "stdout", id(sys.stderr): "stderr"}
        self._progress.start()  # swaps sys.stdout / sys.stderr for proxies
        # Logging handlers that captured the real terminal streams would draw through
        # the bar; point them at the proxies while the bar is shown.
        for handler in self._terminal_handlers(orig):
            which = orig[id(handler.stream)]
            old = handler.setStream(getattr(sys, which))
            if old is not None:
                self._swapped.append((handler, old))

    @staticmethod
    def _terminal_handlers(orig: dict[int, str]) -> list[logging.StreamHandler]:
        loggers = [logging.getLogger()] + [
            lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
        ]
        seen, out = set(), []
        for lg in loggers:
            for h in lg.handlers:
                if (
                    isinstance(h, logging.StreamHandler)
                    and not isinstance(h, logging.FileHandler)
                    and id(h) not in seen
                    and id(getattr(h, "stream", None)) in orig
                ):
                    seen.add(id(h))
                    out.append(h)
        return out

    def _restore_handlers(self) -> None:
        for handler, old in reversed(self._swapped):
            try:
                handler.setStream(old)
            except Exception:
                pass
        self._swapped.clear()
