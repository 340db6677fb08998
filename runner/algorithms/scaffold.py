"""SCAFFOLD (Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020), option II, both halves.

* Server half :class:`Scaffold` (FedAvg plus the server control variate ``c``): ``c``
  travels to the sampled clients with the train message (:data:`C`); the server moves ``c``
  by ``|S|/N`` times the mean of the returned changes (:data:`DC`). ``global_lr`` scales the
  server's model step. Its state (``c``) is checkpointed by ``state_dict``.
* Client half :class:`ScaffoldClient`: corrects every gradient by ``c - c_i`` and returns
  ``Δc_i``; ``c_i`` is the client's state (key ``scaffold_ci``), so it is checkpointed and
  resumed with the run. The variate update assumes plain SGD (``strategy=scaffold`` sets
  ``train.momentum=0``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.algorithms._shared import RemembersSent
from runner.algorithms.base import ClientAlgorithm, ClientContext, Payload

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from torch import nn

__all__ = ["C", "DC", "Scaffold", "ScaffoldClient"]

C = Payload("scaffold-c")  # server -> client: the server control variate
DC = Payload("scaffold-dc")  # client -> server: the change of the client's control variate


class Scaffold(RemembersSent):
    """SCAFFOLD's server half: FedAvg plus the server control variate (module docstring)."""

    def __init__(self, *args: Any, global_lr: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.global_lr = float(global_lr)
        self.c: dict[str, np.ndarray] | None = None
        self.num_nodes = 0

    def state_dict(self) -> dict[str, Any]:
        return {"c": self.c, "num_nodes": self.num_nodes}

    def load_state_dict(self, state: Any) -> None:
        self.c = state["c"]
        self.num_nodes = int(state.get("num_nodes", 0))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.c is None:
            self.c = {k: np.zeros_like(v.numpy()) for k, v in arrays.items()}
        self.num_nodes = len(list(grid.get_node_ids()))
        return C.attach(super().configure_train(server_round, arrays, config, grid), self.c)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from flwr.app import Array, ArrayRecord

        replies = list(replies)
        deltas = [d for d in (DC.take(msg) for msg in replies) if d is not None]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.global_lr != 1.0 and self._sent is not None:
            current = self._sent
            arrays = ArrayRecord(
                {
                    k: Array(np.asarray(current[k].numpy() + self.global_lr * (v.numpy() - current[k].numpy())))
                    for k, v in arrays.items()
                }
            )
        if deltas and self.c is not None:
            share = len(deltas) / max(self.num_nodes, len(deltas))
            for k in deltas[0]:
                mean = np.mean([d[k] for d in deltas], axis=0)
                self.c[k] = (self.c[k] + share * mean).astype(self.c[k].dtype)
        return arrays, metrics


class ScaffoldClient(ClientAlgorithm):
    """SCAFFOLD's client half: gradient correction ``c - c_i``, then
    ``c_i+ = c_i - c + (x - y_i) / (K * lr)`` with K the optimizer steps taken."""

    state_keys = ("scaffold_ci",)
    down = (C,)
    up = (DC,)
    uses_step_hook = True

    def setup(self, ctx: ClientContext) -> None:
        import torch

        c = ctx.payload[C.name]
        names = [n for n, _ in ctx.model.named_parameters()]
        cs = {n: torch.from_numpy(c[n]).to(ctx.device) for n in names}
        ci_state = ctx.state.get("scaffold_ci") or {}
        ci = {
            n: torch.from_numpy(ci_state[n]).to(ctx.device) if n in ci_state else torch.zeros_like(cs[n]) for n in names
        }
        ctx.scratch["scaffold"] = {
            "names": names,
            "c": cs,
            "ci": ci,
            "x": {n: p.detach().clone() for n, p in ctx.model.named_parameters()},
            "correction": {n: cs[n] - ci[n] for n in names},
        }

    def after_backward(self, ctx: ClientContext, model: nn.Module) -> None:
        correction = ctx.scratch["scaffold"]["correction"]
        for name, p in model.named_parameters():
            if p.grad is not None and name in correction:
                p.grad.add_(correction[name])

    def finish(self, ctx: ClientContext) -> None:
        s = ctx.scratch["scaffold"]
        assert ctx.optimizer is not None
        lr = float(ctx.optimizer.param_groups[0]["lr"])
        scale = 1.0 / (max(ctx.steps, 1) * lr)
        params = dict(ctx.model.named_parameters())
        dc, ci_new = {}, {}
        for n in s["names"]:
            new = s["ci"][n] - s["c"][n] + (s["x"][n] - params[n].detach()) * scale
            dc[n] = (new - s["ci"][n]).cpu().numpy()
            ci_new[n] = new.cpu().numpy()
        ctx.state["scaffold_ci"] = ci_new
        ctx.reply[DC.name] = dc
