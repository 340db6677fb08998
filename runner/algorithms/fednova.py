"""FedNova (Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020), both halves.

Clients that run different numbers of local steps ``τ_i`` (stragglers, unequal data)
pull FedAvg towards the objective of the clients that ran longest. FedNova averages
*normalized* updates instead: with ``Δ_i = x - y_i`` client ``i``'s model change and
``a_i`` its aggregation vector, the server steps

    x+ = x - τ_eff · Σ_i p_i Δ_i / ‖a_i‖₁,      τ_eff = Σ_i p_i ‖a_i‖₁,

``p_i = n_i / Σ_j n_j`` (the sampled clients' example counts, Flower's ``num-examples``).
For plain local SGD ``‖a_i‖₁ = τ_i``; for SGD with momentum ``ρ`` (buffer reset every
round, as the runner's fresh optimizer does) the paper's closed form
``‖a_i‖₁ = (τ_i - ρ(1 - ρ^τ_i)/(1 - ρ)) / (1 - ρ)``. With equal ``‖a_i‖₁`` this is FedAvg.

* Server half :class:`FedNova` (FedAvg's sampling); no state between rounds.
* Client half :class:`FedNovaClient`: counts its optimizer steps and returns
  ``‖a_i‖₁`` (and ``τ_i``) as the :data:`TAU` payload. Other optimizers than
  ``torch.optim.SGD`` (without Nesterov or dampening), or a momentum buffer kept from the last
  round (``train.keep_optimizer_state``), have no closed form here: an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from runner.algorithms._shared import RemembersSent
from runner.algorithms.base import ClientAlgorithm, ClientContext, Payload

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, Message, MetricRecord

__all__ = ["TAU", "FedNova", "FedNovaClient", "norm_a"]

TAU = Payload("fednova-tau")  # client -> server: {"a": ‖a_i‖₁, "tau": τ_i}


def norm_a(steps: int, momentum: float) -> float:
    """‖a_i‖₁ of ``steps`` local SGD steps with heavy-ball ``momentum`` (paper, Sec. 4)."""
    if momentum == 0.0:
        return float(steps)
    rho = float(momentum)
    return (steps - rho * (1.0 - rho**steps) / (1.0 - rho)) / (1.0 - rho)


def _weight(reply: Message, key: str) -> float:
    """The reply's aggregation weight (its ``num-examples``), as FedAvg reads it."""
    value = next(iter(reply.content.metric_records.values()))[key]
    assert isinstance(value, (int, float))
    return float(value)


class FedNova(RemembersSent):
    """FedNova's server half: the normalized average of the clients' updates (module docstring)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from flwr.app import Array, ArrayRecord

        replies = list(replies)
        taus = [TAU.take(msg) for msg in replies]  # before FedAvg: it wants exactly one ArrayRecord
        arrays, metrics = super().aggregate_train(server_round, replies)  # metrics, non-float arrays
        current = self._sent
        used = [(m, t) for m, t in zip(replies, taus, strict=True) if t is not None and float(t["a"]) > 0]
        if arrays is None or current is None or not used:
            return arrays, metrics
        n = np.array([_weight(m, self.weighted_by_key) for m, _ in used])
        p = n / n.sum()
        a = np.array([float(t["a"]) for _, t in used])
        tau_eff = float((p * a).sum())
        out = {}
        for key, value in arrays.items():
            x = current[key].numpy()
            if not np.issubdtype(x.dtype, np.floating):
                out[key] = value  # e.g. BatchNorm's num_batches_tracked: FedAvg's
                continue
            step = np.zeros(x.shape, dtype=np.float64)
            for (msg, _), p_i, a_i in zip(used, p, a, strict=True):
                y = next(iter(msg.content.array_records.values()))[key].numpy()
                step += (p_i / a_i) * (x.astype(np.float64) - y)
            out[key] = Array(np.asarray(x - tau_eff * step, dtype=x.dtype))
        return ArrayRecord(out), metrics


class FedNovaClient(ClientAlgorithm):
    """FedNova's client half: local training as FedAvg; sends back ``‖a_i‖₁`` and ``τ_i``."""

    up = (TAU,)
    uses_step_hook = True  # τ_i is counted by the task's ctx.before_step

    def setup(self, ctx: ClientContext) -> None:
        import torch

        opt = ctx.optimizer
        if not isinstance(opt, torch.optim.SGD):
            raise TypeError(f"FedNova needs torch.optim.SGD (optimizer=sgd), got {type(opt).__name__}")
        group = opt.param_groups[0]
        if group.get("nesterov") or float(group.get("dampening", 0.0)) != 0.0:
            raise ValueError("FedNova's normalization covers SGD with plain momentum only (no nesterov, dampening=0)")
        if any(opt.state.values()):  # train.keep_optimizer_state: a momentum buffer from the last round
            raise ValueError("FedNova's ‖a_i‖₁ assumes a fresh momentum buffer; use train.keep_optimizer_state=false")

    def finish(self, ctx: ClientContext) -> None:
        assert ctx.optimizer is not None
        momentum = float(ctx.optimizer.param_groups[0].get("momentum", 0.0))
        ctx.reply[TAU.name] = {
            "a": np.array(norm_a(ctx.steps, momentum), dtype=np.float64),
            "tau": np.array(ctx.steps, dtype=np.int64),
        }
        ctx.metrics["local_steps"] = float(ctx.steps)
