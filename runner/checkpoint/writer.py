"""Background checkpoint writer: the round loop hands a checkpoint over and carries on.

At most one save is in flight; a second ``submit`` waits for the first. A failed save is
re-raised at the next ``submit`` or at ``close()``. Saves run on one long-lived worker thread,
so ``submit`` is a queue put and never waits for a new thread to be scheduled (that alone
took tens of ms on a busy machine). The worker is non-daemon, so an interpreter that exits
without ``close()`` still finishes the save in flight; it then notices the main thread has
ended and exits instead of hanging the shutdown.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from runner.checkpoint.blobs import collect_garbage
from runner.checkpoint.formats import FORMATS, TMP_PREFIX, CheckpointError
from runner.checkpoint.policy import CheckpointPolicy
from runner.checkpoint.store import (
    CheckpointData,
    check_sizes,
    read_pointer,
    remove_checkpoint,
    scan,
    write_checkpoint,
    write_pointer,
)

__all__ = ["CheckpointWriter"]

log = logging.getLogger("runner")


class CheckpointWriter:
    """Writes checkpoints into one ``checkpoints/`` dir, updates ``last``/``best`` pointers
    and applies the policy's retention, in that order, after each save is complete."""

    def __init__(
        self,
        ckpt_dir: str | os.PathLike[str],
        fmt: str,
        policy: CheckpointPolicy | None = None,
        protected_rounds: Iterable[int] = (),
    ) -> None:
        if fmt not in FORMATS:
            raise CheckpointError(f"unknown checkpoint format {fmt!r} (expected one of {', '.join(FORMATS)})")
        self.dir = Path(ckpt_dir)
        self.fmt = fmt
        self.policy = policy if policy is not None else CheckpointPolicy()
        self.protected_rounds: set[int] = set(protected_rounds)
        _check_writable(self.dir)
        best = read_pointer(self.dir, "best")
        self._best_round: int | None = best["round"] if best else None
        self._pending_best: int | None = None  # mark_best() for a save still in flight
        self._done: set[int] = set()
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[CheckpointData | None] = queue.SimpleQueue()
        self._idle = threading.Event()  # set while no save is queued or running
        self._idle.set()
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False
        self.blocked_s: list[float] = []  # per submit: how long the caller waited
        self.save_s: list[float] = []  # per save: background wall time
        self.last_manifest: Path | None = None
        self.gc_removed: list[str] = []  # client-state blobs removed by garbage collection
        self._collected = False  # blobs are collected after this writer's first commit too
        self._start_worker()  # now, so that not even the first submit waits for a thread start

    # -- public API ---------------------------------------------------------------------
    def submit(self, data: CheckpointData) -> None:
        """Start saving ``data`` in the background; waits only for a previous save."""
        t0 = time.perf_counter()
        if self._closed:
            raise CheckpointError(f"{self.dir}: checkpoint writer is closed")
        self._join()
        if self._worker is None or not self._worker.is_alive():
            self._start_worker()
        self._idle.clear()
        self._queue.put(data)
        self.blocked_s.append(time.perf_counter() - t0)

    def mark_best(self, rnd: int) -> None:
        """Point ``best.json`` at an already submitted round (a fit-phase checkpoint is saved
        before its round's evaluation says it is the best)."""
        with self._lock:
            self._best_round = rnd  # protected from retention from now on
            if rnd in self._done:
                write_pointer(self.dir, "best", rnd)
            else:
                self._pending_best = rnd

    def wait(self) -> None:
        """Block until the save in flight (if any) is done; re-raise its error."""
        self._join()

    def close(self) -> None:
        """Flush the save in flight, stop the worker and re-raise a save's error. Idempotent."""
        self._closed = True
        self._idle.wait()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = None
        self._join()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # already failing: flush, but let the original exception propagate
            self.close()
        except Exception as err:
            log.error("checkpoint save failed as well: %s", err)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    # -- internals ----------------------------------------------------------------------
    def _join(self) -> None:
        """Wait for the save in flight; re-raise its error (once)."""
        self._idle.wait()
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._work, name=f"ckpt-writer:{self.dir}", daemon=False)
        self._worker.start()

    def _work(self) -> None:
        while True:
            try:
                data = self._queue.get(timeout=0.1)
            except queue.Empty:
                # Never closed and the program is exiting: nothing more can come.
                if not threading.main_thread().is_alive():
                    return
                continue
            if data is None:
                return
            try:
                self._save(data)
            finally:
                self._idle.set()
            if self._error is not None and not threading.main_thread().is_alive():
                log.error("checkpoint save at exit failed: %s", self._error)  # nobody left to raise it to

    def _save(self, data: CheckpointData) -> None:
        t0 = time.perf_counter()
        try:
            manifest = write_checkpoint(self.dir, data, self.fmt)
            problems = check_sizes(manifest)
            if problems:  # should not happen; never advance pointers past a bad save
                raise CheckpointError(f"{manifest}: written checkpoint does not check out: {'; '.join(problems)}")
            with self._lock:
                self._done.add(data.round)
                write_pointer(self.dir, "last", data.round)
                if data.is_best or self._pending_best == data.round:
                    write_pointer(self.dir, "best", data.round)
                    self._best_round = data.round
                    self._pending_best = None
                protected = self._protected(data)
            removed = self._retain(protected)
            if removed or not self._collected:  # after the commit, never before
                self._collect()
            self.last_manifest = manifest
            self.save_s.append(time.perf_counter() - t0)
        except OSError as e:
            self._error = CheckpointError(f"{self.dir}: saving round {data.round} failed: {e.strerror or e}")
            self._error.__cause__ = e
        except BaseException as e:  # re-raised in the caller's thread
            self._error = e

    def _protected(self, data: CheckpointData) -> set[int]:
        protected = set(self.protected_rounds) | {data.round}
        for rnd in (self._best_round, self._pending_best, self.policy.best_round):
            if rnd is not None:
                protected.add(rnd)
        if data.resumed_from:  # resumed from a checkpoint in this very dir: never delete it
            src = Path(data.resumed_from)
            try:
                if src.parent.resolve() == self.dir.resolve():
                    protected.add(int(src.name.split(".")[0].removeprefix("round-")))
            except (OSError, ValueError):
                pass
        return protected

    def _retain(self, protected: set[int]) -> list[int]:
        if self.policy.keep_last is None:
            return []
        existing = [info.round for info in scan(self.dir)]
        removed = []
        for rnd in self.policy.rounds_to_remove(existing, protected):
            try:
                remove_checkpoint(self.dir, rnd)
                removed.append(rnd)
            except OSError as e:  # keeping an extra old checkpoint is no reason to stop a run
                log.warning("could not remove old checkpoint round %d in %s: %s", rnd, self.dir, e)
        return removed

    def _collect(self) -> None:
        """Remove the client-state blobs that no manifest left in the dir references."""
        self._collected = True
        self.gc_removed += collect_garbage(self.dir, [info.manifest for info in scan(self.dir)])


def _check_writable(directory: Path) -> None:
    """Fail at construction, not after the first round, when checkpoints cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{TMP_PREFIX}writable-{secrets.token_hex(4)}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise CheckpointError(f"{directory}: checkpoint directory is not writable ({e.strerror or e})") from None
