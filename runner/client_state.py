"""Client state: what a client keeps between rounds, for every client, sampled or not.

The state lives on the server, in a :class:`ClientStateStore`, and travels with the
messages: a sampled client receives its state with the train (and evaluate) message and
returns the new state with its reply. That way one checkpoint commits the global model, the
strategy, the accountant and every client's state of the same round (so ``resume=best`` or
any older round is consistent, and ``keep_last`` retention covers client state too), and it
works the same in simulation and deployment, also when a node restarts. The cost is that a
client's state crosses the network each round it is sampled (see README).

The store keeps states on disk, not in memory: a state is written once, when it changes,
as a content-addressed blob of the checkpoint dir (``checkpoints/blobs/<digest>.<ext>``,
see :mod:`runner.checkpoint.blobs`), and each checkpoint's manifest references the blobs
of every client. In memory are only the states changed since they were last written and
a bounded cache of states read back (the clients a round samples).


What a client keeps is its client algorithms' ``ctx.state`` (:mod:`runner.algorithms`),
one key per piece, owned by the algorithm that declares it in ``state_keys``; the
built-ins' keys:

* ``personal``: ``personalization.layers`` (FedPer), parameters that are never aggregated;
* ``optimizer``: ``train.keep_optimizer_state``, the local optimizer's ``state_dict()``;
* ``scaffold_ci``: SCAFFOLD's client control variate (``strategy=scaffold``).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from runner.stateful import pack, unpack

__all__ = [
    "BLOBS_TAG",
    "CLIENT_STATE_KEY",
    "ClientRecord",
    "ClientStateStore",
    "from_record",
    "to_record",
]

CLIENT_STATE_KEY = "runner.client-state"
_JSON = "__json__"
# A checkpoint's ``clients`` component in layout 3: ``{BLOBS_TAG: {pid: blob name}}`` on disk,
# ``{BLOBS_TAG: {pid: {"blob", "path", "sha256", "size", "format"}}}`` once resolved.
BLOBS_TAG = "__blobs__"
DEFAULT_CACHE = 64  # states read back from disk kept in memory (least recently used goes)


def to_record(state: Mapping[str, Any]) -> ArrayRecord:
    """A client's state as one ArrayRecord: its arrays plus the JSON skeleton as bytes."""
    skeleton, arrays = pack(dict(state))
    record = {k: Array(v) for k, v in arrays.items()}
    record[_JSON] = Array(np.frombuffer(json.dumps(skeleton).encode(), dtype=np.uint8).copy())
    return ArrayRecord(record)


def from_record(record: ArrayRecord) -> dict[str, Any]:
    arrays = {k: v.numpy() for k, v in record.items() if k != _JSON}
    skeleton = json.loads(record[_JSON].numpy().tobytes().decode())
    state = unpack(skeleton, arrays)
    return state if isinstance(state, dict) else {}


@dataclass
class ClientRecord:
    """Where one client's current state is: in memory (``state``, changed since it was last
    written), on disk (``blob`` + ``entry``: a blob file whose sha256 and size are known), or
    both for a moment. The checkpoint writer fills ``blob``/``entry`` on its thread, then
    drops ``state``; a ``put`` replaces the whole record, so an older one is never changed
    under a newer state."""

    state: dict[str, Any] | None = None
    blob: str | None = None  # file name: <content digest>.<ext>
    entry: dict[str, Any] | None = None  # {"path", "sha256", "size", "format", "arrays"}


class ClientStateStore:
    """Every client's state by partition id (server side; checkpointed as blobs).

    ``get``/``put`` are what the round loop uses. States changed since they were last
    written stay in memory until the next checkpoint writes them; states read back from
    disk go through a cache of ``cache_size`` entries. ``state_dict()`` /
    ``load_state_dict()`` still give and take every state at once (a whole-store copy,
    and how checkpoints of the older layout resume); checkpoints use :meth:`records` and
    :meth:`load_blob_refs` instead, which never hold more than the cache in memory.
    """

    def __init__(self, cache_size: int = DEFAULT_CACHE) -> None:
        self._records: dict[int, ClientRecord] = {}
        self._cache: OrderedDict[int, tuple[ClientRecord, dict[str, Any]]] = OrderedDict()
        self.cache_size = max(0, int(cache_size))
        self._lock = threading.Lock()  # the round loop reads while the writer thread fills records
        self.reads = 0  # blobs read back from disk (benchmarks, tests)

    def get(self, pid: int) -> dict[str, Any] | None:
        rec = self._records.get(pid)
        if rec is None:
            return None
        state = rec.state  # read once: the writer may drop it right after
        if state is not None:
            return state
        with self._lock:
            cached = self._cache.get(pid)
            if cached is not None and cached[0] is rec:
                self._cache.move_to_end(pid)
                return cached[1]
        assert rec.entry is not None  # a record without state has been written
        state = read_blob(rec.entry)
        self.reads += 1
        with self._lock:
            if self.cache_size:
                self._cache[pid] = (rec, state)
                self._cache.move_to_end(pid)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return state

    def put(self, pid: int, state: dict[str, Any]) -> None:
        with self._lock:
            self._records[pid] = ClientRecord(state=state)
            self._cache.pop(pid, None)

    def __len__(self) -> int:
        return len(self._records)

    def pids(self) -> list[int]:
        return sorted(self._records)

    def in_memory(self) -> int:
        """States held in memory right now (changed and not yet written, plus the cache)."""
        return sum(1 for r in list(self._records.values()) if r.state is not None) + len(self._cache)

    # -- checkpoints ----------------------------------------------------------------------
    def records(self) -> dict[int, ClientRecord]:
        """A snapshot of where every client's state is (what a checkpoint references)."""
        with self._lock:
            return dict(sorted(self._records.items()))

    def load_blob_refs(self, refs: Mapping[str, Mapping[str, Any]]) -> None:
        """Restore from a checkpoint's resolved blob references; nothing is read yet."""
        records = {}
        for pid, ref in refs.items():
            entry = {k: ref[k] for k in ("path", "sha256", "size", "format", "arrays") if k in ref}
            records[int(pid)] = ClientRecord(blob=str(ref["blob"]), entry=entry)
        with self._lock:
            self._records = records
            self._cache.clear()

    def state_dict(self) -> dict[str, Any]:
        """Every state (reads them all from disk): for a whole-store copy, not for checkpoints."""
        return {str(pid): self.get(pid) for pid in self.pids()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if BLOBS_TAG in state:  # a layout-3 checkpoint: blob references, resolved to paths
            self.load_blob_refs(state[BLOBS_TAG])
            return
        with self._lock:  # the older layout: every state in memory until the next save writes it
            self._records = {int(pid): ClientRecord(state=dict(s)) for pid, s in state.items()}
            self._cache.clear()


def read_blob(entry: Mapping[str, Any]) -> dict[str, Any]:
    from runner.checkpoint.blobs import read_state_blob

    return read_state_blob(Path(entry["path"]), entry)
