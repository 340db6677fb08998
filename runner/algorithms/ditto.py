"""Ditto (Li, Hu, Beirami, Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021), both halves.

The server half :class:`Ditto` is plain FedAvg (``flwr.serverapp.strategy.FedAvg``): the global model
``w`` is trained as in FedAvg. Each sampled client ``k`` also trains its personal model
``v_k`` (kept in its client state, key ``ditto_personal``) on its own data, starting from
the global model ``w^t`` it received, for the local objective

    F_k(v_k) + λ/2 · ‖v_k - w^t‖²        (the paper's Algorithm 1, ``lam`` = λ).

The personal model trains with the task's optimizer and loop for ``personal_epochs``
epochs (null: as many as the global model's local training, the paper's setting; a
straggler's shortened training applies to both). A client's personal model before its
first training round is the global model. Personalized evaluation
(``evaluate_personal_<metric>``) uses ``v_k``; ``evaluate_<metric>`` is the global ``w``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import FedAvg

from runner.algorithms.base import ClientAlgorithm, ClientContext

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Ditto", "DittoClient"]


def _personal(ctx: ClientContext) -> nn.Module | None:
    """A copy of the model with this client's personal weights; None before its first training."""
    import torch

    saved = ctx.state.get("ditto_personal")
    if saved is None:
        return None
    model = copy.deepcopy(ctx.model)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in saved.items()})
    return model


class Ditto(FedAvg):
    """Ditto's server half: FedAvg, unchanged (named so that ``strategy=`` shows the algorithm)."""


class DittoClient(ClientAlgorithm):
    """Ditto's client half: the global model's local training, then the personal model's."""

    state_keys = ("ditto_personal",)
    uses_loss_term = True
    personal = True

    def __init__(self, lam: float = 0.1, personal_epochs: int | None = None) -> None:
        if not lam >= 0:
            raise ValueError(f"Ditto's lam must be >= 0, got {lam}")
        if personal_epochs is not None and int(personal_epochs) < 1:
            raise ValueError(f"Ditto's personal_epochs must be >= 1 or null, got {personal_epochs}")
        self.lam = float(lam)
        self.personal_epochs = None if personal_epochs is None else int(personal_epochs)

    def setup(self, ctx: ClientContext) -> None:
        # v_k starts from w^t the first time; the copy is taken before w trains
        personal = _personal(ctx)
        ctx.scratch["ditto"] = personal if personal is not None else copy.deepcopy(ctx.model)

    def fit(self, ctx: ClientContext) -> dict[str, float]:
        personal = ctx.scratch["ditto"]
        metrics = ctx.train()  # w: FedAvg's local update, from w^t
        saved = ctx.local_epochs
        if self.personal_epochs is not None and saved is None:  # a straggler keeps its shorter training
            ctx.local_epochs = self.personal_epochs
        try:
            personal_metrics = ctx.train(personal, ctx.task.configure_optimizer(personal))
        finally:
            ctx.local_epochs = saved
        ctx.metrics.update({f"personal_{k}": float(v) for k, v in personal_metrics.items()})
        return metrics

    def loss_term(
        self, ctx: ClientContext, model: nn.Module, inputs: torch.Tensor | None, outputs: torch.Tensor | None
    ) -> Any:
        if model is not ctx.scratch.get("ditto") or self.lam == 0:
            return None  # the global model's training is FedAvg's
        w = ctx.global_weights
        prox = sum(((p - w[n].to(p.device)) ** 2).sum() for n, p in model.named_parameters())
        return (self.lam / 2.0) * prox

    def finish(self, ctx: ClientContext) -> None:
        personal = ctx.scratch.pop("ditto")
        ctx.state["ditto_personal"] = {k: v.detach().cpu().numpy().copy() for k, v in personal.state_dict().items()}

    def setup_evaluate(self, ctx: ClientContext) -> None:
        ctx.scratch["ditto"] = _personal(ctx)

    def personal_model(self, ctx: ClientContext) -> nn.Module:
        personal = ctx.scratch.get("ditto")
        return personal if personal is not None else ctx.model  # never trained yet: it would start from w
