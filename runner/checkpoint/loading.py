"""Rebuild a trained model from a checkpoint: ``load_model("outputs/2026-11-24/10-00-00")``."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from runner.checkpoint.formats import CheckpointError
from runner.checkpoint.migrate import mismatches
from runner.checkpoint.store import load_checkpoint, resolve_manifest

if TYPE_CHECKING:
    import torch

__all__ = ["load_model"]


def load_model(
    path: str | os.PathLike[str],
    build_model: Callable[[dict[str, Any]], torch.nn.Module] | None = None,
) -> torch.nn.Module:
    """The model of a checkpoint, weights loaded strictly, in eval mode.

    ``path``: a manifest, a weights file beside its manifest, or a run / checkpoints dir (its
    latest valid checkpoint). The model is rebuilt from the run config stored in the manifest
    with ``build_model`` (default: the runner's own ``runner.task.build_model``).
    """
    import torch

    manifest_path = resolve_manifest(path)
    ckpt = load_checkpoint(manifest_path)  # checksums verified
    config = ckpt.manifest.get("config")
    if not isinstance(config, dict) or not config:
        raise CheckpointError(f"{manifest_path}: manifest has no run config to rebuild the model from")
    if build_model is None:
        from runner.task import build_model  # lazily: pulls in the training stack

    model = build_model(config)
    reference = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    problems = mismatches(ckpt.weights, reference)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; … and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"{manifest_path}: weights do not fit the model built from its config: {shown}")
    with warnings.catch_warnings():
        # Arrays from a memory map are read-only; load_state_dict copies them anyway.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        state = {k: torch.from_numpy(v) for k, v in ckpt.weights.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
