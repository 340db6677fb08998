"""FedPer (Arivazhagan et al., "Federated Learning with Personalization Layers", 2019):
the weights matching ``personalization.layers`` (e.g. ``[head.*]``) stay on each client
and are never aggregated.

Each client trains with its own copy of those layers (state key ``personal``) and sends
the server back the global values it received for them, so aggregation leaves them as they
were. Personalized evaluation (``evaluate_personal_<metric>``) uses the global model with
the client's personal layers; ``evaluate_<metric>`` is the global model alone.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
from torch import nn

from runner.algorithms.base import ClientAlgorithm, ClientContext

__all__ = ["FedPer", "personal_keys"]


def personal_keys(keys: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The weight names matching any of the (fnmatch) patterns, in the given order."""
    patterns = list(patterns)
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns)]


class FedPer(ClientAlgorithm):
    """Personal layers by name pattern; state key ``personal`` (their values)."""

    state_keys = ("personal",)
    personal = True

    def __init__(self, layers: Iterable[str]) -> None:
        self.layers = [str(p) for p in layers]

    def _load(self, ctx: ClientContext, model: nn.Module) -> None:
        if "personal" in ctx.state:
            personal = {k: torch.from_numpy(v) for k, v in ctx.state["personal"].items()}
            model.load_state_dict(personal, strict=False)

    def setup(self, ctx: ClientContext) -> None:
        self._load(ctx, ctx.model)

    def finish(self, ctx: ClientContext) -> None:
        assert ctx.send_weights is not None
        keys = personal_keys(list(ctx.send_weights), self.layers)
        ctx.state["personal"] = {k: ctx.send_weights[k].numpy().copy() for k in keys}
        for k in keys:  # personal layers stay here: the server gets back what it sent
            ctx.send_weights[k] = ctx.global_weights[k]

    def setup_evaluate(self, ctx: ClientContext) -> None:
        self._load(ctx, ctx.model)

    def personal_model(self, ctx: ClientContext) -> nn.Module:
        return ctx.model
