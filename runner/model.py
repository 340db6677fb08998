"""Models (conf/model/): built from the config alone, sized by the dataset's metadata."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from runner.dataset import DATASET_META


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: list[int], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Two conv blocks; adaptive pooling makes it fit 8x8, 28x28 and 32x32 inputs."""

    def __init__(self, in_channels: int, channels: list[int], hidden: int, num_classes: int) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _resnet18(in_channels: int, num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    # Small images: a 3x3 stride-1 stem and no max-pool keep spatial resolution.
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(config: dict[str, Any]) -> nn.Module:
    """The model of a resolved run config (also used to rebuild one from a checkpoint)."""
    meta = DATASET_META[config["dataset"]["name"]]
    model_cfg = config["model"]
    name = model_cfg["name"]
    c, s, k = meta["channels"], meta["size"], meta["num_classes"]
    if name == "mlp":
        return MLP(c * s * s, list(model_cfg.get("hidden", [128])), k)
    if name == "cnn":
        return CNN(c, list(model_cfg.get("channels", [32, 64])), int(model_cfg.get("hidden", 128)), k)
    if name == "resnet18":
        return _resnet18(c, k)
    raise ValueError(f"model.name: unknown model {name!r}")
