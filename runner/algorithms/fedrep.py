"""FedRep: Collins, Hassani, Mokhtari, Shakkottai, "Exploiting Shared Representations for
Personalized Federated Learning", ICML 2021 (arXiv:2102.07078).

The model is a shared body (the representation) and a personal head. Each sampled client
loads its own head, trains the head for ``head_epochs`` with the body frozen, then the body
for ``body_epochs`` with the head frozen, keeps its head and sends back the body; the server
averages the bodies (FedAvg). The personal model is the global body with the client's head.

``strategy=fedrep``; ``strategy.client.head`` are the head's weights (fnmatch patterns,
default ``[head.*]``: the last layer of ``model=mlp|cnn``). The paper's experiments train the
head for many local epochs and the body for one (defaults 10 and 1).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from runner.algorithms._shared import KeepLocal, KeepUnchanged, frozen, matching, non_negative, train_epochs
from runner.algorithms.base import ClientContext
from runner.config import ConfigError

__all__ = ["FedRep", "FedRepClient"]


class FedRep(KeepUnchanged):
    """FedRep's server half: FedAvg over the bodies; the head comes back as sent (never averaged)."""


class FedRepClient(KeepLocal):
    """FedRep's client half: head first (body frozen), then body (head frozen); the head stays here."""

    state_keys = ("fedrep_head",)
    state_key = "fedrep_head"

    def __init__(self, head: Sequence[str] = ("head.*",), head_epochs: int = 10, body_epochs: int = 1) -> None:
        self.head = [str(p) for p in ([head] if isinstance(head, str) else head)]
        if not self.head:
            raise ConfigError("strategy.client.head", "needs at least one pattern of the head's weights", head)
        self.head_epochs = non_negative("strategy.client.head_epochs", head_epochs)
        self.body_epochs = non_negative("strategy.client.body_epochs", body_epochs)
        if self.head_epochs + self.body_epochs == 0:
            raise ConfigError("strategy.client.head_epochs", "head_epochs + body_epochs must be at least 1", 0)

    def local_keys(self, model: nn.Module) -> list[str]:
        keys = matching(model.state_dict(), self.head)
        if not matching((n for n, _ in model.named_parameters()), self.head):
            some = ", ".join(list(model.state_dict())[:8])
            raise ConfigError(
                "strategy.client.head", f"{self.head} matches no parameter of the model (keys: {some}, …)", self.head
            )
        return keys

    def fit(self, ctx: ClientContext) -> dict[str, float]:
        model = ctx.model
        head = set(matching((n for n, _ in model.named_parameters()), self.head))
        self.local_keys(model)  # the error naming strategy.client.head when nothing matches
        body = [n for n, _ in model.named_parameters() if n not in head]
        metrics: dict[str, float] = {}
        # One optimizer for both phases: a frozen parameter has no gradient, so no step and
        # no change to its optimizer state (train.keep_optimizer_state keeps working).
        with frozen(model, body):
            metrics = train_epochs(ctx, None, None, self.head_epochs) or metrics
        with frozen(model, head):
            metrics = train_epochs(ctx, None, None, self.body_epochs) or metrics
        return metrics
