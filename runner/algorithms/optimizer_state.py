"""Kept optimizer state (``train.keep_optimizer_state=true``): each client's local
optimizer (SGD momentum buffers, Adam moments, ...) continues where it stopped the last
time the client was sampled, instead of starting fresh every round."""

from __future__ import annotations

from runner.algorithms.base import ClientAlgorithm, ClientContext

__all__ = ["KeepOptimizerState"]


class KeepOptimizerState(ClientAlgorithm):
    """State key ``optimizer``: the task optimizer's ``state_dict()``."""

    state_keys = ("optimizer",)

    def setup(self, ctx: ClientContext) -> None:
        if ctx.optimizer is not None and "optimizer" in ctx.state:
            ctx.optimizer.load_state_dict(ctx.state["optimizer"])

    def finish(self, ctx: ClientContext) -> None:
        if ctx.optimizer is not None:
            ctx.state["optimizer"] = ctx.optimizer.state_dict()
