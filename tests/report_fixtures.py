"""Fake run dirs for tests: files laid out exactly as a real run leaves them.

Used by ``tests/test_report_*.py``; usable by any test that needs a run or sweep on
disk without running a simulation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


def make_rows(
    num_rounds: int,
    *,
    seed: int = 0,
    phases: Iterable[str] = ("train", "evaluate", "centralized"),
    nan: Iterable[tuple[str, int, str]] = (),
) -> list[dict[str, Any]]:
    """Plausible metrics rows: centralized round 0 plus train/evaluate/centralized per round.

    ``nan``: ``(phase, round, metric)`` triples to set to NaN.
    """
    phases = list(phases)
    nan = set(nan)
    rows: list[dict[str, Any]] = []
    off = 0.013 * seed
    if "centralized" in phases:
        rows.append({"round": 0, "phase": "centralized", "loss": 2.30 + off, "accuracy": 0.10 + off, "elapsed_s": 0.05})
    for r in range(1, num_rounds + 1):
        k = 1.0 - math.exp(-0.7 * r)
        if "train" in phases:
            rows.append(
                {
                    "round": r,
                    "phase": "train",
                    "loss": 1.9 * (1 - k) + 0.1 + off,
                    "accuracy": 0.2 + 0.7 * k - off,
                    "num_replies": 5,
                    "num_failures": 0,
                    "elapsed_s": 0.5,
                }
            )
        if "evaluate" in phases:
            rows.append(
                {
                    "round": r,
                    "phase": "evaluate",
                    "loss": 2.0 * (1 - k) + 0.15 + off,
                    "accuracy": 0.15 + 0.7 * k - off,
                    "num_replies": 5,
                    "num_failures": 0,
                    "elapsed_s": 0.2,
                }
            )
        if "centralized" in phases:
            rows.append(
                {
                    "round": r,
                    "phase": "centralized",
                    "loss": 2.1 * (1 - k) + 0.2 + off,
                    "accuracy": 0.12 + 0.75 * k - 0.02 * (r % 3 == 0) - off,
                    "elapsed_s": 0.1,
                }
            )
    for row in rows:
        for phase, rnd, metric in nan:
            if row["phase"] == phase and row["round"] == rnd:
                row[metric] = float("nan")
    return rows


def write_metrics(run_dir: str | Path, rows: Iterable[dict[str, Any]], torn_tail: str | None = None) -> Path:
    """Write ``metrics.jsonl`` (NaN as JSON ``NaN``); ``torn_tail`` is appended unterminated."""
    path = Path(run_dir) / "metrics.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        if torn_tail:
            f.write(torn_tail)
    return path


def summary_from_rows(
    rows: list[dict[str, Any]],
    *,
    num_rounds: int | None = None,
    status: str = "completed",
    monitor: str = "centralized_accuracy",
    mode: str = "max",
    error: str | None = None,
    overrides: list[str] | None = None,
    wall_time_s: float = 12.5,
    resumed_from: str | None = None,
    checkpoints: dict[str, str | None] | None = None,
) -> dict[str, Any]:
    """A ``summary.json`` dict consistent with ``rows``, as the core writes it."""
    final: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: (r["phase"], r["round"])):
        for k, v in row.items():
            if k not in ("round", "phase") and isinstance(v, (int, float)):
                final[f"{row['phase']}_{k}"] = v
    phase, metric = monitor.split("_", 1)
    best = None
    for row in rows:
        v = row.get(metric)
        if row["phase"] != phase or v is None or v != v:
            continue
        if best is None or (v > best["value"] if mode == "max" else v < best["value"]):
            best = {"metric": monitor, "mode": mode, "value": v, "round": row["round"]}
    rounds = max((r["round"] for r in rows), default=0)
    return {
        "status": status,
        "num_rounds": num_rounds if num_rounds is not None else rounds,
        "rounds_done": rounds,
        "wall_time_s": wall_time_s,
        "final": final,
        "best": best or {"metric": monitor, "mode": mode, "value": None, "round": None},
        "resumed_from": resumed_from,
        "checkpoints": checkpoints or {"last": None, "best": None},
        "error": error,
        "overrides": list(overrides or []),
    }


def write_run(
    run_dir: str | Path,
    rows: list[dict[str, Any]] | None = None,
    *,
    overrides: list[str] | None = None,
    config: dict[str, Any] | None = None,
    summary: dict[str, Any] | None | str = "auto",
    torn_tail: str | None = None,
    **summary_kwargs: Any,
) -> Path:
    """A run dir with ``.hydra/``, ``metrics.jsonl`` and (unless ``summary=None``) ``summary.json``.

    ``summary="auto"`` derives it from ``rows`` (``summary_kwargs`` go to
    :func:`summary_from_rows`); a dict is written as is.
    """
    run_dir = Path(run_dir)
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or [])
    (hydra_dir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    cfg = {"seed": 0, "num_rounds": 3, "checkpoint": {"monitor": "centralized_accuracy", "mode": "max"}}
    cfg.update(config or {})
    (hydra_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (hydra_dir / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"name": "runner"}}}))
    if rows is not None:
        write_metrics(run_dir, rows, torn_tail=torn_tail)
    if summary == "auto":
        summary = summary_from_rows(rows or [], overrides=overrides, **summary_kwargs)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return run_dir
