"""Reading weights that this package did not write: Flower's how-to files and plain state_dicts.

Flower's "save and load model checkpoints" how-to writes ``round-N-weights.npz`` with
``np.savez(f, *ndarrays)`` (positional ``arr_0``, ``arr_1``, … in the model's state_dict
order) or ``model_round_N.pth`` with ``torch.save(model.state_dict())``. Positional arrays are
mapped onto a reference state_dict's key order; named arrays are matched by key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runner.checkpoint.formats import CheckpointError, load_arrays
from runner.checkpoint.store import load_checkpoint, resolve_manifest

__all__ = ["is_positional", "load_any_weights", "load_foreign_weights", "match_reference", "mismatches"]

_POSITIONAL_RE = re.compile(r"^arr_(\d+)$")
_SHOWN = 3  # mismatches named in an error message


def is_positional(arrays: Mapping[str, np.ndarray]) -> bool:
    """Exactly ``arr_0 … arr_{n-1}``: what ``np.savez(f, *ndarrays)`` writes."""
    return bool(arrays) and set(arrays) == {f"arr_{i}" for i in range(len(arrays))}


def _positional_order(arrays: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return [arrays[f"arr_{i}"] for i in range(len(arrays))]


def _describe(arr: np.ndarray) -> str:
    return f"{arr.dtype}{list(arr.shape)}"


def mismatches(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> list[str]:
    """Differences between named arrays and a reference state_dict (keys, shapes, dtypes)."""
    problems = [f"missing {k}" for k in reference if k not in arrays]
    problems += [f"unexpected {k}" for k in arrays if k not in reference]
    for key, ref in reference.items():
        got = arrays.get(key)
        if got is not None and (got.shape != ref.shape or got.dtype != ref.dtype):
            problems.append(f"{key}: expected {_describe(ref)}, got {_describe(got)}")
    return problems


def _summary(problems: list[str]) -> str:
    more = f"; … and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return "; ".join(problems[:_SHOWN]) + more


def _same_order(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> bool:
    """Other key names, but the same shapes and dtypes in the same order (e.g. a ``Flatten``
    in front shifts every ``nn.Sequential`` index)."""
    got, ref = list(arrays.values()), list(reference.values())
    if len(got) != len(ref):
        return False
    return all(a.shape == b.shape and a.dtype == b.dtype for a, b in zip(got, ref, strict=True))


def _mapping(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], shown: int = 6) -> str:
    pairs = [f"{a}->{b}" for a, b in zip(arrays, reference, strict=True) if a != b]
    more = f", … and {len(pairs) - shown} more" if len(pairs) > shown else ""
    return ", ".join(pairs[:shown]) + more


def match_reference(
    arrays: Mapping[str, np.ndarray],
    reference: Mapping[str, np.ndarray],
    source: str | os.PathLike[str],
    match: str = "name",
) -> dict[str, np.ndarray]:
    """Arrays in the reference's key order; positional ``arr_i`` arrays are named by position.
    ``match="order"`` also maps named arrays by position when their names differ but their
    shapes match in order. Raises CheckpointError naming the first few mismatched keys and
    shapes (and the mapping ``order`` would use, when it would fit)."""
    if is_positional(arrays) and not is_positional(reference):
        ordered = _positional_order(arrays)
        if len(ordered) != len(reference):
            raise CheckpointError(
                f"{source}: holds {len(ordered)} positional arrays (arr_0…), the model has {len(reference)}"
            )
        arrays = dict(zip(reference, ordered, strict=True))
    problems = mismatches(arrays, reference)
    if problems and _same_order(arrays, reference):
        if match == "order":
            return dict(zip(reference, arrays.values(), strict=True))
        raise CheckpointError(
            f"{source}: its key names differ from the model's, but its {len(reference)} arrays have the model's "
            f"shapes in the model's order; init_weights_match=order loads them as {_mapping(arrays, reference)}"
        )
    if problems:
        raise CheckpointError(f"{source}: does not fit the model: {_summary(problems)}")
    return {key: arrays[key] for key in reference}


def load_any_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], Path | None]:
    """Weights from one of our checkpoints (manifest, weights file beside its manifest, run
    or checkpoints dir: checksums verified) or from any plain weights file. Returns the
    arrays and the manifest they came from (None for a foreign file)."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".json":
        manifest = resolve_manifest(path)
    else:
        try:
            manifest = resolve_manifest(path)
        except CheckpointError:
            manifest = None  # a file without a manifest: a foreign (e.g. Flower how-to) file
    if manifest is not None and not _is_state_file(path):
        return load_checkpoint(manifest, clients="skip").weights, manifest
    return load_arrays(path), None


def _is_state_file(path: Path) -> bool:
    return path.is_file() and path.suffix != ".json" and ".state." in path.name


def load_foreign_weights(
    path: str | os.PathLike[str], reference: Mapping[str, np.ndarray], match: str = "name"
) -> dict[str, np.ndarray]:
    """Weights for a warm start or an export, checked against a reference state_dict.

    ``path``: a Flower how-to file (``round-N-weights.npz`` with positional arrays,
    ``model_round_N.pth``), any npz/torch/safetensors state_dict, or one of our checkpoints.
    """
    arrays, _ = load_any_weights(path)
    return match_reference(arrays, reference, path, match=match)
