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
from runner.checkpoint.migrate import match_reference
from runner.checkpoint.policy import CheckpointPolicy
from runner.checkpoint.store import (
    CHECKPOINTS_DIR,
    ManifestInfo,
    find_checkpoint_dirs,
    load_checkpoint,
    resolve_manifest,
    scan,
    verify,
)
from runner.state import round_metric

log = logging.getLogger("runner")


@dataclass
class ResumePoint:
    manifest_path: Path
    manifest: dict[str, Any]
    weights: dict[str, np.ndarray]
    state_arrays: dict[str, np.ndarray]
    restore_state: bool  # strategy/RNG/best-tracker state applies to this run


def _warn(notes: list[str] | None, text: str) -> None:
    """A skipped checkpoint is said once: on the console/log and in summary.json["warnings"]."""
    log.warning("%s", text)
    if notes is not None and text not in notes:
        notes.append(text)


def _manifests(ckpt_dir: Path, notes: list[str] | None = None) -> list[ManifestInfo]:
    found = []
    for info in scan(ckpt_dir):
        if info.manifest is None:
            _warn(notes, f"skipping unreadable checkpoint manifest {info.path}: {info.error}")
        else:
            found.append(info)
    return found


def _created(info: ManifestInfo) -> str:
    return str((info.manifest or {}).get("created", ""))


def _search(roots: list[Path], fp: str, notes: list[str] | None = None) -> list[ManifestInfo]:
    found = []
    for root in roots:
        if root.is_dir():
            for ckpt_dir in find_checkpoint_dirs(root):
                found += [c for c in _manifests(ckpt_dir, notes) if (c.manifest or {}).get("fingerprint") == fp]
    return found


def _first_valid(ordered: list[ManifestInfo], notes: list[str] | None = None) -> ManifestInfo | None:
    for cand in ordered:
        # Client-state blobs: existence and size here; each blob's sha256 is checked when
        # the round loop reads it, so resuming does not read every client's state.
        problems = verify(cand.path, blobs="size")
        if not problems:
            return cand
        _warn(notes, f"skipping invalid checkpoint {cand.path}: {'; '.join(problems)}")
    return None


def _latest_in_dir(path: Path, notes: list[str] | None) -> Path:
    """``resume=<run dir>``: its newest checkpoint that verifies; every one skipped is named
    (:func:`store.resolve_manifest` would pass over them silently)."""
    dirs = [path] if path.name == CHECKPOINTS_DIR else [path / CHECKPOINTS_DIR]
    if not dirs[0].is_dir():
        dirs = find_checkpoint_dirs(path)
        if len(dirs) != 1:
            what = "no checkpoints/ dir" if not dirs else f"{len(dirs)} checkpoints/ dirs; name one run"
            raise CheckpointError(f"{path}: {what}")
    newest_first = sorted(_manifests(dirs[0], notes), key=lambda c: c.round, reverse=True)
    chosen = _first_valid(newest_first, notes)
    if chosen is None:
        raise CheckpointError(f"{dirs[0]}: no valid checkpoint")
    if newest_first and chosen is not newest_first[0]:
        log.warning("resume=%s: using round %d, the newest checkpoint that verifies", path, chosen.round)
    return chosen.path


def _best_value(cand: ManifestInfo, histories: dict[Path, list[dict[str, Any]]], monitor: str) -> float | None:
    # A fit-phase checkpoint precedes its round's evaluation: read the value from the
    # longest history of the same run, which later checkpoints carry.
    return round_metric(histories[cand.path.parent], cand.round, monitor)


def _pick(
    kind: str, cands: list[ManifestInfo], monitor: str, mode: str, notes: list[str] | None = None
) -> ManifestInfo | None:
    newest_first = sorted(cands, key=lambda c: (c.round, _created(c)), reverse=True)
    if kind == "latest":
        return _first_valid(newest_first, notes)
    histories: dict[Path, list[dict[str, Any]]] = {}
    for c in newest_first:  # the highest round of each run has the longest history
        histories.setdefault(c.path.parent, (c.manifest or {}).get("state", {}).get("history", []))
    # The checkpoint policy's own comparison (strictly better; the earlier round wins a
    # tie), so resume=best picks the round best.json names.
    judge = CheckpointPolicy(monitor=monitor, mode=mode)
    by_round = sorted(newest_first, key=lambda c: c.round)  # stable: newest run first per round
    ranked: list[ManifestInfo] = []
    best: float | None = None
    for c in by_round:
        v = _best_value(c, histories, monitor)
        if v is None or math.isnan(v):
            continue
        if judge.is_better(v, best):
            best = v
            ranked.insert(0, c)
        else:
            ranked.append(c)  # fallbacks, in case the best does not verify
    return _first_valid(ranked, notes)


def resolve_resume(
    cfg: dict[str, Any], fp: str, launch_dir: Path, reference: dict[str, np.ndarray], notes: list[str] | None = None
) -> ResumePoint | None:
    """The checkpoint ``resume=`` names (None: start fresh). Every checkpoint skipped on the
    way is a warning, also appended to ``notes`` (summary.json["warnings"]); a path naming one
    checkpoint file never falls back to another: a bad one is a one-line CheckpointError."""
    spec = cfg.get("resume")
    if spec in (None, "", "null"):
        return None
    spec = str(spec)
    exact_file = False  # resume=<one checkpoint file>
    if spec in ("latest", "best"):
        roots = [launch_dir / r for r in cfg["resume_roots"]]
        cands = _search(roots, fp, notes)
        chosen = _pick(spec, cands, cfg["checkpoint"]["monitor"], cfg["checkpoint"]["mode"], notes)
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
        path = Path(spec).expanduser()
        path = path if path.is_absolute() else launch_dir / path
        exact_file = not path.is_dir()
        manifest_path = resolve_manifest(path) if exact_file else _latest_in_dir(path, notes)
    try:
        loaded = load_checkpoint(manifest_path, clients="refs")  # client states stay on disk
    except CheckpointError as exc:
        if not exact_file:
            raise
        # a path naming one checkpoint never falls back to another one
        raise CheckpointError(f"resume={spec}: {exc} (name the run dir to take its newest valid checkpoint)") from None
    manifest = loaded.manifest
    weights = match_reference(loaded.weights, reference, manifest_path)
    same_run = manifest.get("fingerprint") == fp
    saved_cfg = manifest.get("config", {})
    # Strategy, DP and client state only carry over to the same algorithm.
    same_strategy = all(saved_cfg.get(k) == cfg.get(k) for k in ("strategy", "dp", "personalization")) and (
        saved_cfg.get("train", {}).get("keep_optimizer_state") == cfg["train"].get("keep_optimizer_state")
    )
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
        weights=weights,
        state_arrays=loaded.state_arrays,
        restore_state=same_strategy,
    )
