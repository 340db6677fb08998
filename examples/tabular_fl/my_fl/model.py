"""The model: a small residual MLP for tabular rows, with BatchNorm and a `head`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TabularNet(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        (features,) = input_shape
        self.inp = nn.Sequential(nn.Linear(int(features), hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.block = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(h + self.block(h))
