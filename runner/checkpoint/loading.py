"""Rebuild a trained model from a checkpoint: ``load_model("outputs/2026-11-24/10-00-00")``.

A checkpoint never makes the runner import or call code it names. The model comes from
the caller (an ``nn.Module``, or a model config the caller chose); only when none is given
is it rebuilt from the manifest's config, and then only if every ``_target_`` in that
config is one of the runner's own built-in models, unless the caller passes
``trust_config=True`` (as ``torch.load(weights_only=False)`` is an explicit choice).
"""

from __future__ import annotations

import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.checkpoint.formats import CheckpointError
from runner.checkpoint.migrate import mismatches
from runner.checkpoint.store import load_checkpoint, resolve_manifest

if TYPE_CHECKING:
    import torch

__all__ = ["builtin_model_targets", "load_model", "untrusted_targets"]


@lru_cache(maxsize=1)
def builtin_model_targets() -> frozenset[str]:
    """``_target_``s of the model configs shipped in the runner's own conf/model/."""
    import yaml

    conf = Path(__file__).resolve().parents[2] / "conf" / "model"
    found = set()
    for path in sorted(conf.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data.get("_target_"), str):
            found.add(data["_target_"])
    return frozenset(found or {"runner.models.MLP", "runner.models.CNN", "runner.models.resnet18"})


def untrusted_targets(model_cfg: Any) -> list[str]:
    """``key: target`` of every ``_target_`` in a model config that is not a built-in model."""
    from runner.build import targets

    allowed = builtin_model_targets()
    return [
        f"model.{key}: {t}" if key != "<root>" else f"model._target_: {t}"
        for key, t in targets(model_cfg)
        if t not in allowed
    ]


def load_model(
    path: str | os.PathLike[str],
    model: torch.nn.Module | dict[str, Any] | None = None,
    *,
    trust_config: bool = False,
) -> torch.nn.Module:
    """The model of a checkpoint, weights loaded strictly, in eval mode.

    ``path``: a manifest, a weights file beside its manifest, or a run / checkpoints dir (its
    latest valid checkpoint). ``model``: the module to load into, or a model config
    (``{"_target_": "my_fl.models.Net", ...}``) of your choosing; default: rebuilt from the
    manifest's config if that names only the runner's built-in models (``trust_config=True``
    lifts that check for files you trust).
    """
    import torch

    manifest_path = resolve_manifest(path)
    ckpt = load_checkpoint(manifest_path, clients="skip")  # checksums verified; client states not needed
    if model is None:
        config = ckpt.manifest.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise CheckpointError(f"{manifest_path}: manifest has no model config; pass model=<your nn.Module>")
        bad = untrusted_targets(config["model"])
        if bad and not trust_config:
            raise CheckpointError(
                f"{manifest_path}: refusing to import code named by the checkpoint ({'; '.join(bad)}): "
                "pass model=<your nn.Module or model config>, or trust_config=True if you trust this file"
            )
        model = config["model"]
    if isinstance(model, dict):
        from runner.runtime import build_model

        model = build_model({"model": model, "seed": 0})
    reference = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    problems = mismatches(ckpt.weights, reference)
    if problems:
        shown = "; ".join(problems[:3]) + (f"; … and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(f"{manifest_path}: weights do not fit the model: {shown}")
    with warnings.catch_warnings():
        # Arrays from a memory map are read-only; load_state_dict copies them anyway.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        state = {k: torch.from_numpy(v) for k, v in ckpt.weights.items()}
    model.load_state_dict(state, strict=True)
    return model.eval()
