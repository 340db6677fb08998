"""FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

Server half: Flower's ``flwr.serverapp.strategy.FedProx``, which sends ``proximal-mu`` in
every train message's config. Client half (:class:`FedProxClient`): the local objective
gains ``mu/2 * ||w - w_global||^2``, through the task's ``ctx.penalty(model)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner.algorithms.base import ClientAlgorithm, ClientContext

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["FedProxClient"]


class FedProxClient(ClientAlgorithm):
    """The proximal term; ``mu`` comes from the round's config (``proximal-mu``), so the
    server half's value (and any schedule it sends) is the one used."""

    uses_loss_term = True

    def setup(self, ctx: ClientContext) -> None:
        mu = float(str(ctx.config.get("proximal-mu", 0.0)))
        ctx.scratch["fedprox_mu"] = mu
        if mu > 0:  # the weights training starts from (personal layers, if any, loaded)
            ctx.scratch["fedprox_anchor"] = [p.detach().clone() for p in ctx.model.parameters()]

    def loss_term(
        self, ctx: ClientContext, model: nn.Module, inputs: torch.Tensor | None, outputs: torch.Tensor | None
    ) -> Any:
        mu = ctx.scratch["fedprox_mu"]
        if mu <= 0:
            return None
        anchor = ctx.scratch["fedprox_anchor"]
        prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), anchor, strict=True))
        return (mu / 2.0) * prox
