"""Built-in models (conf/model/): plain ``nn.Module`` classes built by ``_target_``.

A model learns the data's shape from the dataset config by interpolation, e.g.
``input_shape: ${dataset.input_shape}`` and ``num_classes: ${dataset.num_classes}``; a
user's model does the same. MLP and CNN end in a ``head`` (the last layer), the usual
FedPer split for ``personalization.layers='[head.*]'``; torchvision's ResNet-18 calls it ``fc``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["CNN", "MLP", "resnet18"]


class MLP(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128,)) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(int(d) for d in input_shape)
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class CNN(nn.Module):
    """Two conv blocks; adaptive pooling makes it fit 8x8, 28x28 and 32x32 inputs.

    ``norm="batch"`` puts a BatchNorm2d after each convolution (what FedBN keeps local,
    ``model=cnn_bn``); ``norm=None`` builds exactly the layers, names and weights of the
    plain CNN. Only the conv blocks are normalized: BatchNorm1d fails on a last batch of one
    sample, which small non-IID partitions do produce.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        norm: str | None = None,
    ) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"CNN needs image input (channels, height, width), got input_shape {list(input_shape)}")
        if norm not in (None, "batch"):
            raise ValueError(f"CNN norm must be null or 'batch', got {norm!r}")
        c1, c2 = (int(c) for c in channels)

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1)]
            return [*conv, *([nn.BatchNorm2d(c_out)] if norm == "batch" else []), nn.ReLU()]

        self.features = nn.Sequential(
            *block(int(input_shape[0]), c1),
            *block(c1, c2),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 16, int(hidden)), nn.ReLU())
        self.head = nn.Linear(int(hidden), int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.features(x)))


def resnet18(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a small-image stem (3x3 stride-1 conv, no max-pool)."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs image input (channels, height, width), got input_shape {list(input_shape)}")
    model = tv_resnet18(weights=None, num_classes=int(num_classes))
    model.conv1 = nn.Conv2d(int(input_shape[0]), 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
