"""FedDyn (Acar, Zhao, Matas, Mattina, Whatmough, Saligrama, "Federated Learning Based on
Dynamic Regularization", ICLR 2021), both halves.

Each client ``k`` minimizes a dynamically regularized local objective

    L_k(θ) - ⟨∇L_k(θ_k^{t-1}), θ⟩ + α/2 · ‖θ - θ^{t-1}‖²

and then updates its linear term ``∇L_k(θ_k^t) = ∇L_k(θ_k^{t-1}) - α (θ_k^t - θ^{t-1})``,
which it keeps in its client state (key ``feddyn_grad``; zero before its first round). The
server keeps ``h`` (checkpointed by ``state_dict``):

    h^t = h^{t-1} - α/m · Σ_{k∈P_t} (θ_k^t - θ^{t-1}),     θ^t = 1/|P_t| Σ_{k∈P_t} θ_k^t - h^t/α,

``m`` all clients, ``P_t`` those that replied (the paper's unweighted mean). Only the
model's parameters are regularized; buffers (BatchNorm statistics) are FedAvg's average.
The client tells the server which arrays are parameters (:data:`PARAMS`). ``alpha`` is the
paper's α (0.01 in its experiments' default); both halves read the one ``strategy.alpha``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from runner.algorithms._shared import RemembersSent
from runner.algorithms.base import ClientAlgorithm, ClientContext, Payload

if TYPE_CHECKING:
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.serverapp import Grid
    from torch import nn

__all__ = ["PARAMS", "FedDyn", "FedDynClient"]

PARAMS = Payload("feddyn-params")  # client -> server: one 0-d array per trainable parameter name


class FedDyn(RemembersSent):
    """FedDyn's server half: the mean of the clients' models corrected by ``h`` (module docstring)."""

    def __init__(self, *args: Any, alpha: float = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not alpha > 0:
            raise ValueError(f"FedDyn's alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)
        self.h: dict[str, np.ndarray] | None = None
        self.num_nodes = 0

    def state_dict(self) -> dict[str, Any]:
        return {"h": self.h, "num_nodes": self.num_nodes}

    def load_state_dict(self, state: Any) -> None:
        self.h = state["h"]
        self.num_nodes = int(state.get("num_nodes", 0))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.num_nodes = len(list(grid.get_node_ids()))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from flwr.app import Array, ArrayRecord

        replies = list(replies)
        params = [PARAMS.take(msg) for msg in replies]  # before FedAvg: it wants exactly one ArrayRecord
        arrays, metrics = super().aggregate_train(server_round, replies)  # metrics; buffers' average
        current = self._sent
        pairs = [(msg, names) for msg, names in zip(replies, params, strict=True) if names is not None]
        if arrays is None or current is None or not pairs:
            return arrays, metrics
        ok = [msg for msg, _ in pairs]
        names = [k for k in current.keys() if k in pairs[0][1]]  # the model's parameters, in its order
        if self.h is None:
            self.h = {k: np.zeros_like(current[k].numpy()) for k in names}
        models = [next(iter(msg.content.array_records.values())) for msg in ok]
        m = max(self.num_nodes, len(ok))
        out = dict(arrays.items())
        for k in names:
            x = current[k].numpy()
            mean = np.mean([model[k].numpy() for model in models], axis=0)
            drift = np.sum([model[k].numpy() - x for model in models], axis=0)
            self.h[k] = (self.h[k] - (self.alpha / m) * drift).astype(x.dtype)
            out[k] = Array(np.asarray(mean - self.h[k] / self.alpha, dtype=x.dtype))
        return ArrayRecord(out), metrics


class FedDynClient(ClientAlgorithm):
    """FedDyn's client half: the linear and quadratic terms, then the linear term's update."""

    state_keys = ("feddyn_grad",)
    up = (PARAMS,)
    uses_loss_term = True

    def __init__(self, alpha: float = 0.01) -> None:
        if not alpha > 0:
            raise ValueError(f"FedDyn's alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def setup(self, ctx: ClientContext) -> None:
        import torch

        names = [n for n, p in ctx.model.named_parameters() if p.requires_grad]
        grad = ctx.state.get("feddyn_grad") or {}
        ctx.scratch["feddyn"] = {
            "names": names,
            "anchor": {n: ctx.global_weights[n].to(ctx.device) for n in names},
            "grad": {
                n: torch.from_numpy(grad[n]).to(ctx.device) if n in grad else torch.zeros_like(p)
                for n, p in ctx.model.named_parameters()
                if n in names
            },
        }

    def loss_term(
        self, ctx: ClientContext, model: nn.Module, inputs: torch.Tensor | None, outputs: torch.Tensor | None
    ) -> Any:
        s = ctx.scratch["feddyn"]
        linear: Any = 0.0
        quad: Any = 0.0
        for n, p in model.named_parameters():
            if n in s["grad"]:
                linear = linear + (s["grad"][n] * p).sum()
                quad = quad + ((p - s["anchor"][n]) ** 2).sum()
        return -linear + (self.alpha / 2.0) * quad

    def finish(self, ctx: ClientContext) -> None:
        s = ctx.scratch["feddyn"]
        params = dict(ctx.model.named_parameters())
        ctx.state["feddyn_grad"] = {
            n: (s["grad"][n] - self.alpha * (params[n].detach() - s["anchor"][n])).cpu().numpy() for n in s["names"]
        }
        ctx.reply[PARAMS.name] = {n: np.zeros((), dtype=np.uint8) for n in s["names"]}
