"""Client state: what a client keeps between rounds, for every client, sampled or not.

The state lives on the server, in a :class:`ClientStateStore`, and travels with the
messages: a sampled client receives its state with the train (and evaluate) message and
returns the new state with its reply. That way one checkpoint commits the global model, the
strategy, the accountant and every client's state of the same round (so ``resume=best`` or
any older round is consistent, and ``keep_last`` retention covers client state too), and it
works the same in simulation and deployment, also when a node restarts. The cost is that a
client's state crosses the network each round it is sampled (see README).

What a client keeps is its client algorithms' ``ctx.state`` (:mod:`runner.algorithms`),
one key per piece, owned by the algorithm that declares it in ``state_keys``; the
built-ins' keys:

* ``personal``: ``personalization.layers`` (FedPer), parameters that are never aggregated;
* ``optimizer``: ``train.keep_optimizer_state``, the local optimizer's ``state_dict()``;
* ``scaffold_ci``: SCAFFOLD's client control variate (``strategy=scaffold``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from runner.stateful import pack, unpack

__all__ = ["CLIENT_STATE_KEY", "ClientStateStore", "from_record", "to_record"]

CLIENT_STATE_KEY = "runner.client-state"
_JSON = "__json__"


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


class ClientStateStore:
    """Every client's state by partition id (server side; checkpointed)."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, Any]] = {}

    def get(self, pid: int) -> dict[str, Any] | None:
        return self.states.get(pid)

    def put(self, pid: int, state: dict[str, Any]) -> None:
        self.states[pid] = state

    def __len__(self) -> int:
        return len(self.states)

    def state_dict(self) -> dict[str, Any]:
        return {str(pid): self.states[pid] for pid in sorted(self.states)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.states = {int(pid): dict(s) for pid, s in state.items()}
