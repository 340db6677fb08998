"""Local training: no federation. The baseline every personalized-FL paper reports (e.g.
FedRep, Ditto and APFL compare against it as "Local" / "Local only").

Each client trains its own model alone, starting from the initial global model, and keeps
it in its state; the server never aggregates, so the global model stays the initial one
(its ``evaluate_<metric>`` and ``centralized_<metric>`` are those of the untrained model).
The personal model is the client's own (the initial model for a client never sampled).

``strategy=local``; how much each client trains is the task's (``train.local_epochs``) per
round it is sampled.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from torch import nn

from runner.algorithms._shared import RemembersSent, load_into, to_numpy
from runner.algorithms.base import ClientAlgorithm, ClientContext

__all__ = ["Local", "LocalClient"]


class Local(RemembersSent):
    """The server half of local training: samples and aggregates metrics as FedAvg, keeps the
    global model unchanged (bit for bit: what it sent)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        return (self._sent if arrays is not None else None), metrics


class LocalClient(ClientAlgorithm):
    """The client half of local training: the client's own model lives in its state."""

    state_keys = ("local_model",)
    personal = True

    def setup(self, ctx: ClientContext) -> None:
        own = ctx.state.get("local_model")
        if own:  # in place: the task's optimizer for ctx.model stays valid
            load_into(ctx.model, own)

    def finish(self, ctx: ClientContext) -> None:
        weights = dict(ctx.model.state_dict())
        ctx.state["local_model"] = to_numpy(weights, weights)
        # nothing is aggregated: send back what the server sent
        ctx.send_weights = {k: v.detach().cpu() for k, v in ctx.global_weights.items()}

    def personal_model(self, ctx: ClientContext) -> nn.Module:
        model = copy.deepcopy(ctx.model)
        own = ctx.state.get("local_model")
        if own:
            load_into(model, own)
        return model
