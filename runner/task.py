"""Training and evaluation of one model on arrays (Flower's task.py): no Flower here."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
from torch import nn

from runner.dataset import ArrayDataset
from runner.model import build_model

__all__ = ["build_model", "derive_seed", "evaluate", "pick_device", "train", "state_to_numpy"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (seed, round, partition id, purpose): same in every process."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but this process sees no CUDA GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def _batches(
    data: ArrayDataset, idx: np.ndarray, batch_size: int, generator: torch.Generator | None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if generator is not None:
        order = idx[torch.randperm(len(idx), generator=generator).numpy()]
    else:
        order = idx
    out = []
    for start in range(0, len(order), batch_size):
        sel = order[start : start + batch_size]
        out.append((torch.from_numpy(data.x[sel]), torch.from_numpy(data.y[sel])))
    return out


def train(
    model: nn.Module,
    data: ArrayDataset,
    idx: np.ndarray,
    train_cfg: dict[str, Any],
    seed: int,
    device: torch.device,
    proximal_mu: float = 0.0,
) -> tuple[float, float]:
    """Local training; returns (mean loss, accuracy). FedProx adds mu/2 * ||w - w_global||^2."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    if train_cfg["optimizer"] == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=train_cfg["lr"], weight_decay=train_cfg["weight_decay"]
        )
    else:
        opt = torch.optim.SGD(
            model.parameters(),
            lr=train_cfg["lr"],
            momentum=train_cfg["momentum"],
            weight_decay=train_cfg["weight_decay"],
        )
    loss_fn = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(int(train_cfg["local_epochs"])):
        for xb, yb in _batches(data, idx, int(train_cfg["batch_size"]), gen):
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            if proximal_mu > 0:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
                loss = loss + (proximal_mu / 2.0) * prox
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: ArrayDataset, idx: np.ndarray, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(mean loss, accuracy) on the given indices; NaN for an empty split."""
    model.to(device).eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total, correct, seen = 0.0, 0, 0
    for xb, yb in _batches(data, idx, batch_size, None):
        xb, yb = xb.to(device), yb.to(device)
        out = model(xb)
        total += float(loss_fn(out, yb))
        correct += int((out.argmax(1) == yb).sum())
        seen += len(yb)
    if seen == 0:
        return float("nan"), float("nan")
    return total / seen, correct / seen


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
