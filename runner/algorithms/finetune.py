"""FedAvg with local fine-tuning before personal evaluation: the baseline personalized-FL
papers report as "FedAvg + fine-tuning" (e.g. Collins et al., ICML 2021, Table 1;
Yu, Bagdasaryan, Shmatikov, "Salvaging Federated Learning by Local Adaptation", 2020).

Training is FedAvg's. At evaluation each evaluated client copies the global model, trains
the copy for ``finetune_epochs`` on its own training split (the task's loop, shuffled by a
generator seeded from (seed, round, partition id)), and reports that copy as its personal
model. Nothing persists: the next evaluation starts again from the global model.

``strategy=finetune``; ``strategy.client.finetune_epochs`` (default 1).
"""

from __future__ import annotations

import copy

import torch
from flwr.serverapp.strategy import FedAvg
from torch import nn

from runner.algorithms._shared import non_negative, train_epochs
from runner.algorithms.base import ClientAlgorithm, ClientContext
from runner.runtime import derive_seed

__all__ = ["FineTune", "FineTuneClient"]


class FineTune(FedAvg):
    """The server half of FedAvg + fine-tuning: FedAvg."""


class FineTuneClient(ClientAlgorithm):
    """Fine-tunes a copy of the global model before personal evaluation; keeps no state."""

    personal = True

    def __init__(self, finetune_epochs: int = 1) -> None:
        self.finetune_epochs = non_negative("strategy.client.finetune_epochs", finetune_epochs)

    def personal_model(self, ctx: ClientContext) -> nn.Module:
        model = copy.deepcopy(ctx.model)
        if self.finetune_epochs == 0:
            return model
        seed = derive_seed(ctx.seed, ctx.round, ctx.partition_id, "finetune")
        torch.manual_seed(seed)  # a task's own randomness (dropout) as well as the shuffling
        saved = ctx.generator
        ctx.generator = torch.Generator().manual_seed(seed)
        try:
            train_epochs(ctx, model, ctx.task.configure_optimizer(model), self.finetune_epochs)
        finally:
            ctx.generator = saved
        return model
