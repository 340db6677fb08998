"""What connects the ServerApp's thread with the engine's, for one simulation.

``run_simulation`` runs the ServerApp on a thread of its own and Flower's simulation engine
(``vce.start_vce``: actor pool, message pump, workers) on the calling thread. When the
engine stops with an error (no actor fits, Ray fails), Flower re-raises it on the calling
thread but leaves the ServerApp's thread running: the round loop keeps waiting for replies
that never come (``send_and_receive`` until its timeout, node discovery likewise), and the
interpreter cannot exit before that thread ends.

The runner hands the ServerApp a :class:`GuardedGrid` instead of Flower's grid. It uses
only the public ``Grid`` API of the grid it wraps, and:

- raises :class:`EngineError` from every call (and from within ``send_and_receive``'s
  wait) once the engine has stopped with an error, so the round loop ends with that error;
- with the ``reply-events`` fast path, wakes up as soon as the engine stored a reply and
  pulls just those replies, instead of pulling everything every ``pull_interval`` (0.1 s);
  a full pull still runs every ``FULL_PULL_S`` for what only a full pull reports
  (expired messages, vanished nodes); without that fast path it pulls everything every
  ``pull_interval``, as Flower's own ``send_and_receive`` does;
- wakes the message pump when it pushed messages (``one-pass-pump`` fast path).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp

FULL_PULL_S = 1.0  # with reply events: how often every outstanding message is pulled


class EngineError(RuntimeError):
    """Flower's simulation engine stopped with an error; the message is one line."""


def root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if nxt is None:
            break
        exc = nxt
    return exc


def describe(exc: BaseException) -> str:
    root = root_cause(exc)
    text = (str(root).strip().splitlines() or [""])[0]
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


class RunSignals:
    """Events shared by the engine's threads and the ServerApp's grid for one simulation."""

    def __init__(self, reply_events: bool = False, pump_wake: Any = None) -> None:
        self.reply_events = reply_events
        self.pump_wake = pump_wake
        self._cond = threading.Condition()
        self._replied: set[str] = set()
        self._failed = threading.Event()
        self.engine_error: BaseException | None = None
        self.server_started = threading.Event()
        self.server_done = threading.Event()
        self.server_error: BaseException | None = None

    # -- engine side ------------------------------------------------------------------------
    def reply_stored(self, message_ins_id: str) -> None:
        with self._cond:
            self._replied.add(message_ins_id)
            self._cond.notify_all()

    def engine_failed(self, exc: BaseException) -> None:
        self.engine_error = exc
        self._failed.set()
        with self._cond:
            self._cond.notify_all()

    # -- grid side ------------------------------------------------------------------------
    @property
    def failed(self) -> bool:
        return self._failed.is_set()

    def check(self) -> None:
        if self._failed.is_set():
            exc = self.engine_error
            raise EngineError(f"the simulation engine stopped: {describe(exc) if exc else 'unknown error'}")

    def take_replied(self, pending: set[str]) -> set[str]:
        with self._cond:
            hit = self._replied & pending
            self._replied -= hit
            return hit

    def forget(self, ids: Iterable[str]) -> None:
        with self._cond:
            self._replied.difference_update(ids)

    def wait(self, pending: set[str], timeout: float) -> None:
        """Until a pending message got a reply, the engine failed, or ``timeout``."""
        if timeout <= 0:
            return
        with self._cond:
            if self._failed.is_set() or (self.reply_events and not self._replied.isdisjoint(pending)):
                return
            self._cond.wait(timeout)


class GuardedGrid(Grid):
    """The ServerApp's view of Flower's grid; see the module docstring."""

    def __init__(self, grid: Grid, signals: RunSignals) -> None:
        self._grid = grid
        self._signals = signals

    # -- delegated, guarded ---------------------------------------------------------------------
    def set_run(self, run: Any) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Any:
        return self._grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        self._signals.check()
        return self._grid.get_node_ids()

    def get_nodes(self) -> Any:
        self._signals.check()
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self._signals.check()
        ids = self._grid.push_messages(messages)
        if self._signals.pump_wake is not None:
            self._signals.pump_wake.set()
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self._signals.check()
        return self._grid.pull_messages(message_ids)

    def __getattr__(self, name: str) -> Any:  # pull_interval, state, ... of the wrapped grid
        return getattr(self._grid, name)

    # -- send and wait --------------------------------------------------------------------------
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push, then pull until every message has a reply or ``timeout`` (Flower's contract)."""
        signals = self._signals
        pending = set(self.push_messages(messages))
        del messages
        interval = float(getattr(self._grid, "pull_interval", 0.1))
        full_every = max(interval, FULL_PULL_S) if signals.reply_events else interval
        end = None if timeout is None else time.time() + timeout
        next_full = 0.0
        replies: list[Message] = []
        while True:
            signals.check()
            now = time.monotonic()
            if now >= next_full:
                batch, next_full = set(pending), now + full_every
            else:
                batch = signals.take_replied(pending)
            if batch:
                got = list(self._grid.pull_messages(batch))
                done = {m.metadata.reply_to_message_id for m in got}
                replies.extend(got)
                pending -= done
                signals.forget(done)
            if not pending or (end is not None and time.time() >= end):
                break
            wait = next_full - time.monotonic()
            if end is not None:
                wait = min(wait, end - time.time())
            signals.wait(pending, wait)
        return replies


def guarded_server_app(server_app: ServerApp, signals: RunSignals) -> ServerApp:
    """A ServerApp that runs ``server_app`` on a :class:`GuardedGrid`."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Any) -> None:
        signals.server_started.set()
        try:
            server_app(grid=GuardedGrid(grid, signals), context=context)
        except BaseException as exc:
            signals.server_error = exc
            raise
        finally:
            signals.server_done.set()
            if signals.pump_wake is not None:
                signals.pump_wake.stop()  # the pump looks at its stop event without delay

    return app
