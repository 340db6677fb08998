"""Strategies a user might write, for the state-audit tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg


class Forgetful(FedAvg):
    """Keeps state between rounds (a list of losses) but no state_dict(): the audit must name it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_history: list[float] = []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        if metrics is not None:
            self.loss_history.append(float(metrics.get("train_loss", 0.0)))
        return arrays, metrics


class Remembering(Forgetful):
    """The same, with its state in state_dict(): no warning."""

    def state_dict(self) -> dict[str, Any]:
        return {"loss_history": list(self.loss_history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss_history = list(state["loss_history"])
