"""Adaptive FedProx: each client tunes its own proximal weight (both halves, one file)."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import FedAvg

from runner.algorithms import ClientAlgorithm, ClientContext, Payload

START_MU = Payload("start-mu")  # server -> client: mu for a client's first round
CLIENT_MU = Payload("client-mu")  # client -> server: the client's mu after this round


class AdaptiveProxClient(ClientAlgorithm):
    """Loss + mu/2 ||w - w_global||^2; mu doubles when the client's drift grew, else halves."""

    state_keys = ("mu", "drift")  # kept per client between rounds, checkpointed
    down, up = (START_MU,), (CLIENT_MU,)
    uses_loss_term = True

    def setup(self, ctx: ClientContext) -> None:
        ctx.scratch["mu"] = ctx.state.get("mu", float(ctx.payload[START_MU.name]["mu"]))
        ctx.scratch["anchor"] = [p.detach().clone() for p in ctx.model.parameters()]

    def loss_term(self, ctx: ClientContext, model: Any, inputs: Any, outputs: Any) -> Any:
        pairs = zip(model.parameters(), ctx.scratch["anchor"], strict=True)
        return ctx.scratch["mu"] / 2 * sum(((p - g) ** 2).sum() for p, g in pairs)

    def finish(self, ctx: ClientContext) -> None:
        pairs = zip(ctx.model.parameters(), ctx.scratch["anchor"], strict=True)
        drift = float(sum(((p.detach() - g) ** 2).sum() for p, g in pairs))
        grew = drift > ctx.state.get("drift", drift)
        ctx.state.update(mu=ctx.scratch["mu"] * (2.0 if grew else 0.5), drift=drift)
        ctx.reply[CLIENT_MU.name] = {"mu": np.asarray(ctx.state["mu"])}


class AdaptiveProx(FedAvg):
    """FedAvg; new clients start from the mean mu of the clients last round."""

    def __init__(self, mu: float = 0.01, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mu = float(mu)

    def state_dict(self) -> dict[str, Any]:
        return {"mu": self.mu}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mu = float(state["mu"])

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Any:
        messages = super().configure_train(server_round, arrays, config, grid)
        return START_MU.attach(messages, {"mu": np.asarray(self.mu)})

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        mus = [float(p["mu"]) for p in map(CLIENT_MU.take, replies) if p is not None]
        self.mu = float(np.mean(mus)) if mus else self.mu
        return super().aggregate_train(server_round, replies)
