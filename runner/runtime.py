"""What the driver and every client process build from a resolved run config: the model,
the task, the device, and the seeds that make a run reproducible."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from runner.build import build

__all__ = [
    "build_model",
    "build_task",
    "cached_model",
    "cached_task",
    "derive_seed",
    "pick_device",
    "seed_torch",
    "state_to_numpy",
]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from (seed, round, partition id, purpose): the same in every process."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@lru_cache(maxsize=1)
def _sees_cuda() -> bool:
    return bool(torch.cuda.is_available())


def seed_torch(seed: int, device: torch.device) -> None:
    """``torch.manual_seed(seed)`` for a client's training on ``device``.

    In a process that sees no GPU and trains on the CPU, only the CPU generator is seeded:
    ``torch.manual_seed`` also queues a lazy seed for each accelerator backend (CUDA, XPU,
    MTIA), recording a formatted stack trace for each (~0.7 ms a call, once per client
    message), for backends this process never initializes. The CPU generator gets the same
    seed either way, so the draws are the same bits."""
    if device.type == "cpu" and not _sees_cuda():
        torch.default_generator.manual_seed(int(seed))
    else:
        torch.manual_seed(int(seed))


def pick_device(setting: str) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda but this process sees no CUDA GPU")
        return torch.device("cuda")
    return torch.device("cpu")


def build_model(run_cfg: dict[str, Any]) -> nn.Module:
    """The ``model`` node, instantiated; initial weights from ``seed``."""
    torch.manual_seed(int(run_cfg["seed"]))
    model = build(run_cfg["model"], "model")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model: {run_cfg['model'].get('_target_')} built a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def build_task(run_cfg: dict[str, Any]) -> Any:
    task = build(run_cfg["task"], "task")
    missing = [m for m in ("configure_optimizer", "train", "evaluate") if not callable(getattr(task, m, None))]
    if missing:
        from runner.config import ConfigError

        raise ConfigError(
            "task", f"{run_cfg['task'].get('_target_')} lacks {', '.join(missing)} (see runner.tasks)", show_value=False
        )
    return task


@lru_cache(maxsize=4)
def _model_from(key: str) -> nn.Module:
    return build_model({"model": json.loads(key), "seed": 0})


def cached_model(run_cfg: dict[str, Any]) -> nn.Module:
    """One model object per process and architecture; its weights are always overwritten
    before use, so reusing it is the same as building a new one (minus the build)."""
    model = _model_from(json.dumps(run_cfg["model"], sort_keys=True))
    for p in model.parameters():
        p.grad = None
    return model


@lru_cache(maxsize=4)
def _task_from(key: str) -> Any:
    return build_task({"task": json.loads(key)})


def cached_task(run_cfg: dict[str, Any]) -> Any:
    return _task_from(json.dumps(run_cfg["task"], sort_keys=True))


def state_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
