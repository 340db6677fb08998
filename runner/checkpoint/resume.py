"""Choosing what to resume from: ``resume=latest | best | <checkpoint file or run dir>``.

``latest``/``best`` search every earlier run under the launch dir's output roots (each
Hydra run gets a fresh dir, so looking only in our own dir would silently start from
scratch), keep checkpoints whose config fingerprint equals this run's, and order them by
the round recorded in the manifest, never by file time. Unverifiable ones are skipped
with a warning that names them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runner.checkpoint.formats import CheckpointError
from runner.checkpoint.store import find_checkpoint_dirs, load_checkpoint, read_manifest, verify
from runner.state import round_metric

log = logging.getLogger("runner")


@dataclass
class ResumePoint:
    manifest_path: Path
    manifest: dict[str, Any]
    weights: dict[str, np.ndarray]
    state_arrays: dict[str, np.ndarray]
    restore_state: bool  # strategy/RNG/best-tracker state applies to this run


@dataclass
class Candidate:
    path: Path
    manifest: dict[str, Any]

    @property
    def round(self) -> int:
        return int(self.manifest["round"])

    @property
    def created(self) -> str:
        return str(self.manifest.get("created", ""))


def _manifests(ckpt_dir: Path) -> list[Candidate]:
    out = []
    for path in sorted(ckpt_dir.glob("round-*.json")):
        try:
            out.append(Candidate(path, read_manifest(path)))
        except Exception as exc:  # unreadable manifest: a torn or foreign file
            log.warning("skipping unreadable checkpoint manifest %s: %s", path, exc)
    return out


def _search(roots: list[Path], fp: str) -> list[Candidate]:
    found = []
    for root in roots:
        if root.is_dir():
            for ckpt_dir in find_checkpoint_dirs(root):
                found += [c for c in _manifests(ckpt_dir) if c.manifest.get("fingerprint") == fp]
    return found


def _first_valid(ordered: list[Candidate]) -> Candidate | None:
    for cand in ordered:
        problems = verify(cand.path)
        if not problems:
            return cand
        log.warning("skipping invalid checkpoint %s: %s", cand.path, "; ".join(problems))
    return None


def _best_value(cand: Candidate, histories: dict[Path, list[dict[str, Any]]], monitor: str) -> float | None:
    # A fit-phase checkpoint precedes its round's evaluation: read the value from the
    # longest history of the same run, which later checkpoints carry.
    return round_metric(histories[cand.path.parent], cand.round, monitor)


def _pick(kind: str, cands: list[Candidate], monitor: str, mode: str) -> Candidate | None:
    newest_first = sorted(cands, key=lambda c: (c.round, c.created), reverse=True)
    if kind == "latest":
        return _first_valid(newest_first)
    histories: dict[Path, list[dict[str, Any]]] = {}
    for c in newest_first:  # the highest round of each run has the longest history
        histories.setdefault(c.path.parent, c.manifest.get("state", {}).get("history", []))
    scored = [(v, c) for c in newest_first if (v := _best_value(c, histories, monitor)) is not None]
    scored = [(v, c) for v, c in scored if not math.isnan(v)]
    sign = -1.0 if mode == "max" else 1.0
    scored.sort(key=lambda vc: (sign * vc[0], -vc[1].round))
    return _first_valid([c for _, c in scored])


def _resolve_path(spec: str, launch_dir: Path) -> Path:
    """A manifest for a checkpoint file, a checkpoints dir or a run dir (its latest valid)."""
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = launch_dir / path
    if not path.exists():
        raise CheckpointError(f"resume: {spec} does not exist")
    if path.is_file():
        if path.suffix == ".json":
            return path
        manifest = path.with_name(path.name.split(".")[0] + ".json")
        if not manifest.exists():
            raise CheckpointError(f"resume: {path} has no manifest beside it ({manifest.name})")
        return manifest
    ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = _first_valid(sorted(_manifests(ckpt_dir), key=lambda c: c.round, reverse=True))
    if best is None:
        raise CheckpointError(f"resume: no valid checkpoint in {ckpt_dir}")
    return best.path


def check_compatible(weights: dict[str, np.ndarray], reference: dict[str, np.ndarray], source: Path) -> None:
    """Weights must fit the model: same keys, same shapes; the error names the mismatches."""
    problems = []
    for key in reference.keys() - weights.keys():
        problems.append(f"missing {key}")
    for key in weights.keys() - reference.keys():
        problems.append(f"unexpected {key}")
    for key in reference.keys() & weights.keys():
        if tuple(reference[key].shape) != tuple(weights[key].shape):
            problems.append(f"{key}: checkpoint {tuple(weights[key].shape)} vs model {tuple(reference[key].shape)}")
    if problems:
        shown = "; ".join(sorted(problems)[:6]) + (f"; … {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CheckpointError(f"resume: {source} does not fit this model: {shown}")


def resolve_resume(
    cfg: dict[str, Any], fp: str, launch_dir: Path, reference: dict[str, np.ndarray]
) -> ResumePoint | None:
    spec = cfg.get("resume")
    if spec in (None, "", "null"):
        return None
    spec = str(spec)
    if spec in ("latest", "best"):
        roots = [launch_dir / r for r in cfg["resume_roots"]]
        cands = _search(roots, fp)
        chosen = _pick(spec, cands, cfg["checkpoint"]["monitor"], cfg["checkpoint"]["mode"])
        if chosen is None:
            log.warning(
                "resume=%s: no compatible checkpoint (fingerprint %s) under %s; STARTING FRESH",
                spec,
                fp,
                ", ".join(str(r) for r in roots),
            )
            return None
        log.info("resume=%s picked %s (round %d of %d candidates)", spec, chosen.path, chosen.round, len(cands))
        manifest_path = chosen.path
    else:
        manifest_path = _resolve_path(spec, launch_dir)
    loaded = load_checkpoint(manifest_path)
    manifest = loaded.manifest
    check_compatible(loaded.weights, reference, manifest_path)
    same_run = manifest.get("fingerprint") == fp
    same_strategy = manifest.get("config", {}).get("strategy") == cfg["strategy"]
    if not same_run:
        log.warning(
            "resume: %s was written by a different config (fingerprint %s, this run %s)",
            manifest_path,
            manifest.get("fingerprint"),
            fp,
        )
    return ResumePoint(
        manifest_path=manifest_path,
        manifest=manifest,
        weights=loaded.weights,
        state_arrays=loaded.state_arrays,
        restore_state=same_strategy,
    )
