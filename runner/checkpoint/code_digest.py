"""Code digest: the sha256 of the source of every user module a config's ``_target_`` names.

``resume=latest`` matches runs by config fingerprint; a user who edited their own model or
task code would otherwise be resumed, without a word, onto a checkpoint their old code
wrote. Each manifest records this digest; on resume a differing one is a warning naming
the module (exactness is then not promised).

Only modules of the *current* config are located (``importlib.util.find_spec``, which reads
where the source lives; Hydra imports them anyway to build the run). A manifest's digest
is only compared as strings: nothing it names is ever imported.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sysconfig
from pathlib import Path
from typing import Any

__all__ = ["changed_modules", "code_digest", "user_modules"]

# The runner and the libraries it builds on are versioned in the manifest already.
_LIBRARIES = frozenset({"runner", "flwr", "flwr_datasets", "torch", "torchvision", "hydra", "omegaconf", "numpy"})


def _library_dirs() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]


def _origin(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.origin or not spec.has_location:
        return None
    path = Path(spec.origin)
    return path if path.suffix == ".py" and path.is_file() else None


def _module_of(target: str) -> tuple[str, Path] | None:
    """The longest dotted prefix of ``target`` that is a module with a .py source file."""
    parts = target.split(".")
    if parts[0] in _LIBRARIES:
        return None
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        origin = _origin(name)
        if origin is not None:
            return name, origin
    return None


def user_modules(cfg: dict[str, Any]) -> dict[str, Path]:
    """``{module: source file}`` of the user modules named by any ``_target_`` in ``cfg``
    (installed libraries and the standard library left out)."""
    from runner.build import targets

    libs = _library_dirs()
    found: dict[str, Path] = {}
    for _, target in targets(cfg):
        hit = _module_of(target)
        if hit is None:
            continue
        name, origin = hit
        resolved = origin.resolve()
        if any(resolved.is_relative_to(d) for d in libs):
            continue
        found[name] = origin
    return dict(sorted(found.items()))


def code_digest(cfg: dict[str, Any]) -> dict[str, str]:
    """``{module: sha256 of its source}`` for :func:`user_modules`."""
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in user_modules(cfg).items()}


def changed_modules(saved: Any, current: dict[str, str]) -> list[str]:
    """Modules whose digest differs between a manifest's record and now (a manifest without
    one, written before digests were recorded, compares as unknown: nothing is reported)."""
    if not isinstance(saved, dict):
        return []
    names = sorted(set(saved) | set(current))
    return [n for n in names if saved.get(n) != current.get(n)]
