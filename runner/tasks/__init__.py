"""Client training and evaluation (conf/task/): the part of an experiment a user writes.

No Flower types here (as in Flower's ``task.py``). A task is any object with:

* ``configure_optimizer(model) -> torch.optim.Optimizer``
* ``train(model, optimizer, data: Split, ctx: TrainContext) -> dict[str, float]``
* ``evaluate(model, data: Split, ctx: EvalContext) -> dict[str, float]`` (include ``"loss"``)

``data`` is a :class:`runner.data.Split` (``len(data)``, ``data.x``/``data.y`` arrays and
``data.batches(batch_size, generator=ctx.generator, device=ctx.device)``). The returned
names become metrics (``train_<name>``, ``evaluate_<name>``, ``centralized_<name>`` in
metrics.jsonl, plots, the sweep summary, ``checkpoint.monitor``). A task may declare
``train_metrics`` (names its ``train`` returns) when they differ from ``evaluate``'s.

To take part in the runner's algorithms a training loop calls, per optimizer step,
``loss = loss + ctx.penalty(model)`` (FedProx's proximal term) and ``ctx.before_step(model)``
after ``backward()`` (SCAFFOLD's gradient correction); both are no-ops otherwise.
Randomness must come from ``ctx.generator`` or torch's global RNG (seeded per round and
client by the runner), never from wall-clock or unseeded sources, or resume is not exact.
A task object is built once per process and reused: keep per-client state out of it (the
runner keeps optimizer state and personalised layers per client, see README).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Classification", "EvalContext", "TrainContext"]


@dataclass
class EvalContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class TrainContext(EvalContext):
    seed: int = 0
    round: int = 0
    partition_id: int = 0
    generator: torch.Generator | None = None
    proximal_mu: float = 0.0
    correction: dict[str, torch.Tensor] | None = None  # SCAFFOLD: c - c_i per parameter name
    steps: int = 0  # optimizer steps taken (counted by before_step)
    _anchor: list[torch.Tensor] = field(default_factory=list, repr=False)
    penalty_calls: int = 0

    def start(self, model: nn.Module) -> None:
        """Called by the runner before ``train``: remember the global weights (FedProx)."""
        if self.proximal_mu > 0:
            self._anchor = [p.detach().clone() for p in model.parameters()]

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """FedProx's mu/2 * ||w - w_global||^2 (0 unless the strategy sends proximal-mu)."""
        self.penalty_calls += 1
        if self.proximal_mu <= 0:
            return 0.0
        prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), self._anchor, strict=True))
        return (self.proximal_mu / 2.0) * prox

    def before_step(self, model: nn.Module) -> None:
        """Call after ``loss.backward()``, before ``optimizer.step()``."""
        self.steps += 1
        if self.correction is None:
            return
        for name, p in model.named_parameters():
            if p.grad is not None and name in self.correction:
                p.grad.add_(self.correction[name])


class Classification:
    """Supervised classification: ``loss`` (default cross-entropy), ``optimizer`` (a partial
    taking the parameters, e.g. ``torch.optim.SGD`` with ``_partial_: true``), metrics
    ``loss`` and ``accuracy``."""

    train_metrics = ("loss", "accuracy")

    def __init__(
        self,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        loss: nn.Module | None = None,
        local_epochs: int = 1,
        batch_size: int = 32,
        eval_batch_size: int = 256,
    ) -> None:
        if not callable(optimizer):
            raise TypeError("optimizer must be a callable taking the parameters (use _partial_: true)")
        self.optimizer = optimizer
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()
        self.local_epochs = int(local_epochs)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return self.optimizer(model.parameters())

    def _check(self, out: torch.Tensor, y: torch.Tensor) -> None:
        if out.ndim != 2:
            raise ValueError(f"the model returns shape {tuple(out.shape)}; classification needs (batch, classes)")
        if len(y) and int(y.max()) >= out.shape[1]:
            raise ValueError(f"the model returns {out.shape[1]} class scores but labels go up to {int(y.max())}")

    def train(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, ctx: TrainContext
    ) -> dict[str, float]:
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        for _ in range(self.local_epochs):
            for xb, yb in data.batches(self.batch_size, generator=ctx.generator, device=ctx.device):
                optimizer.zero_grad()
                out = model(xb)
                if seen == 0:
                    self._check(out, yb)
                loss = self.loss(out, yb) + ctx.penalty(model)
                loss.backward()
                ctx.before_step(model)
                optimizer.step()
                total_loss += float(loss.detach()) * len(yb)
                correct += int((out.argmax(1) == yb).sum())
                seen += len(yb)
        return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, ctx: EvalContext) -> dict[str, float]:
        model.eval()
        total, correct, seen = 0.0, 0, 0
        for xb, yb in data.batches(self.eval_batch_size, device=ctx.device):
            out = model(xb)
            if seen == 0:
                self._check(out, yb)
            total += float(self.loss(out, yb)) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        if seen == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": total / seen, "accuracy": correct / seen}
