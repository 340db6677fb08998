"""APFL: Deng, Kamani, Mahdavi, "Adaptive Personalized Federated Learning", 2020
(arXiv:2003.13461).

Each client keeps a personal model ``v`` and a mixing weight ``alpha`` (its state); its
personalized model is the mixture of parameters ``alpha * v + (1 - alpha) * w`` with the
global model ``w``. Per round a sampled client

1. trains ``w`` as in FedAvg (the task's loop; this ``w`` goes back to the server);
2. trains ``v`` through the mixture with ``w`` held at the global model it received: the
   gradient reaching ``v`` is ``alpha * grad f(mixture)``, the paper's ``grad_v f(v_bar)``;
   with ``adaptive_alpha`` the same loop also steps ``alpha`` by
   ``<v - w, grad f(mixture)>``, the paper's alpha update, projected onto [0, 1].

The paper interleaves the two updates step by step on the same batch; a task's loop trains
one model per pass, so here they are two passes of the same loop (same data and optimizer
settings). ``v`` is mixed, in training, with the same global model it is mixed with when
evaluated (the one the client received); mixing it with the locally trained ``w`` instead
drives ``alpha`` to 0 in the first round on non-IID data (the trained ``w`` beats a fresh
``v``), after which ``v`` gets no gradient and APFL is FedAvg. ``v`` starts as the global
model the client first receives. The personal model evaluated is the mixture with the
current global model.

``strategy=apfl``; ``strategy.client.alpha`` (initial mixing weight, default 0.5, as FL-bench)
and ``strategy.client.adaptive_alpha`` (default true).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import FedAvg
from torch import nn
from torch.func import functional_call

from runner.algorithms._shared import to_numpy
from runner.algorithms.base import ClientAlgorithm, ClientContext
from runner.config import ConfigError

__all__ = ["APFL", "APFLClient"]


class APFL(FedAvg):
    """APFL's server half: FedAvg of the clients' ``w`` (the personal ``v`` never leaves a client)."""


class _Mixture(nn.Module):
    """``alpha * v + (1 - alpha) * w`` as a module: ``v`` (and ``alpha`` when learned) train,
    ``w`` is fixed. Buffers (BatchNorm statistics) are ``v``'s."""

    def __init__(self, template: nn.Module, v: dict[str, Any], w: dict[str, torch.Tensor], alpha: float, learn: bool):
        super().__init__()
        self.v = copy.deepcopy(template)
        device = next(iter(self.v.state_dict().values())).device
        self.v.load_state_dict({k: torch.as_tensor(np.asarray(a)).to(device) for k, a in v.items()})
        self.w = {n: w[n].detach().to(device) for n, _ in self.v.named_parameters()}
        value = torch.tensor(float(alpha), dtype=torch.float32, device=device)
        self.alpha: torch.Tensor
        if learn:
            self.alpha = nn.Parameter(value)
        else:
            self.register_buffer("alpha", value)

    def mixed(self) -> dict[str, torch.Tensor]:
        a = self.alpha
        return {n: a * p + (1 - a) * self.w[n] for n, p in self.v.named_parameters()}

    def forward(self, x: torch.Tensor) -> Any:
        if isinstance(self.alpha, nn.Parameter):
            with torch.no_grad():  # projected onto [0, 1] before each use (the paper's constraint)
                self.alpha.clamp_(0.0, 1.0)
        return functional_call(self.v, self.mixed(), (x,))


class APFLClient(ClientAlgorithm):
    """APFL's client half: local ``w`` (sent), personal ``v`` and ``alpha`` (kept)."""

    state_keys = ("apfl_v", "apfl_alpha")
    personal = True

    def __init__(self, alpha: float = 0.5, adaptive_alpha: bool = True) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= alpha <= 1.0):
            raise ConfigError("strategy.client.alpha", "expected a number in [0, 1]", alpha)
        if not isinstance(adaptive_alpha, bool):
            raise ConfigError("strategy.client.adaptive_alpha", "expected true or false", adaptive_alpha)
        self.alpha = float(alpha)
        self.adaptive_alpha = adaptive_alpha

    def _alpha(self, ctx: ClientContext) -> float:
        return float(ctx.state.get("apfl_alpha", self.alpha))

    def fit(self, ctx: ClientContext) -> dict[str, float]:
        v = ctx.state.get("apfl_v") or to_numpy(ctx.global_weights, ctx.global_weights)
        metrics = ctx.train()  # w, as FedAvg
        w = {n: t.detach().clone() for n, t in ctx.global_weights.items()}
        mixture = _Mixture(ctx.model, v, w, self._alpha(ctx), self.adaptive_alpha)
        personal = ctx.train(mixture, ctx.task.configure_optimizer(mixture))
        alpha = min(max(float(mixture.alpha.detach()), 0.0), 1.0)
        ctx.state["apfl_v"] = to_numpy(dict(mixture.v.state_dict()), mixture.v.state_dict())
        ctx.state["apfl_alpha"] = alpha
        ctx.metrics["apfl_alpha"] = alpha
        ctx.metrics.update({f"personal_{k}": float(v) for k, v in personal.items() if math.isfinite(float(v))})
        return metrics

    def personal_model(self, ctx: ClientContext) -> nn.Module:
        """The mixture of this client's ``v`` with the current global model, as a plain model
        (the global model itself for a client that never trained)."""
        model = copy.deepcopy(ctx.model)
        v = ctx.state.get("apfl_v")
        if not v:
            return model
        w = {n: p.detach().clone() for n, p in model.named_parameters()}
        mixture = _Mixture(model, v, w, self._alpha(ctx), learn=False)
        with torch.no_grad():
            weights = {**{k: t.detach() for k, t in mixture.v.state_dict().items()}, **mixture.mixed()}
            model.load_state_dict(weights)
        return model
