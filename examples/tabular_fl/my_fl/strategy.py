"""A strategy of our own: FedAvg with server momentum, and its state for exact resume.

The runner checkpoints any strategy that defines ``state_dict()``/``load_state_dict()``
(arrays and JSON only); nothing else is needed for ``resume=latest`` to continue it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class ServerMomentum(FedAvg):
    """x <- x + v,  v <- beta * v + (mean of client models - x), for the trainable weights."""

    def __init__(self, *args: Any, beta: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.velocity: dict[str, np.ndarray] = {}
        self.updates = 0
        self._x: ArrayRecord | None = None

    transient_attributes = ("_x",)  # the round's global model, set in configure_train

    def state_dict(self) -> dict[str, Any]:
        return {"velocity": self.velocity, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.velocity = dict(state["velocity"])
        self.updates = int(state["updates"])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._x = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        mean, metrics = super().aggregate_train(server_round, replies)
        if mean is None or self._x is None:
            return mean, metrics
        out = {}
        for key, arr in mean.items():
            x, m = self._x[key].numpy(), arr.numpy()
            if x.dtype.kind != "f" or "running_" in key:  # BatchNorm statistics: take the mean as is
                out[key] = Array(m)
                continue
            v = self.beta * self.velocity.get(key, np.zeros_like(x)) + (m - x)
            self.velocity[key] = v
            out[key] = Array(np.asarray(x + v, dtype=x.dtype))
        self.updates += 1
        return ArrayRecord(out), metrics
