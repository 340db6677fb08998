"""The task: imbalanced binary classification with a class-weighted loss, reporting F1.

No Flower types here. The runner calls ``configure_optimizer``, ``train`` and ``evaluate``;
``train`` calls ``ctx.penalty(model)`` and ``ctx.before_step(model)`` so FedProx and
SCAFFOLD work with it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from runner.tasks import EvalContext, TrainContext


class WeightedBinary:
    train_metrics = ("loss", "accuracy")  # what train() returns; evaluate() adds f1 and recall

    def __init__(
        self,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        positive_weight: float = 1.0,
        local_epochs: int = 1,
        batch_size: int = 32,
    ) -> None:
        self.optimizer = optimizer
        self.loss = nn.CrossEntropyLoss(weight=torch.tensor([positive_weight, 1.0]))
        self.local_epochs = local_epochs
        self.batch_size = batch_size

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return self.optimizer(model.parameters())

    def train(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, ctx: TrainContext
    ) -> dict[str, float]:
        model.train()
        total, correct, seen = 0.0, 0, 0
        for _ in range(self.local_epochs):
            for x, y in data.batches(self.batch_size, generator=ctx.generator, device=ctx.device):
                if len(y) < 2:  # BatchNorm needs two rows
                    continue
                optimizer.zero_grad()
                out = model(x)
                loss = self.loss(out, y) + ctx.penalty(model)
                loss.backward()
                ctx.before_step(model)
                optimizer.step()
                total += float(loss.detach()) * len(y)
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
        return {"loss": total / max(seen, 1), "accuracy": correct / max(seen, 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, ctx: EvalContext) -> dict[str, float]:
        model.eval()
        total, tp, fp, fn, correct, seen = 0.0, 0, 0, 0, 0, 0
        for x, y in data.batches(256, device=ctx.device):
            out = model(x)
            if out.ndim != 2 or out.shape[1] != 2:
                raise ValueError(
                    f"WeightedBinary needs 2 class scores per row, the model gives shape {tuple(out.shape)}"
                )
            total += float(self.loss(out, y)) * len(y)
            pred = out.argmax(1)
            tp += int(((pred == 1) & (y == 1)).sum())
            fp += int(((pred == 1) & (y == 0)).sum())
            fn += int(((pred == 0) & (y == 1)).sum())
            correct += int((pred == y).sum())
            seen += len(y)
        if seen == 0:
            return {"loss": float("nan"), "accuracy": float("nan"), "f1": float("nan"), "recall": float("nan")}
        f1 = 2 * tp / max(2 * tp + fp + fn, 1)
        return {"loss": total / seen, "accuracy": correct / seen, "f1": f1, "recall": tp / max(tp + fn, 1)}
