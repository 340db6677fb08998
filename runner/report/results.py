"""A run's results beyond its metric rows, from its history (hence exact across resume):
bytes totals, rounds (and bytes) to reach each target of ``report.targets``, the split."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.report.comm import BYTES_KEYS
from runner.report.metrics import latest_rows, read_json_object
from runner.report.partitions import PARTITIONS_FILE, split_stats


def totals(history: Iterable[dict[str, Any]]) -> dict[str, int]:
    """``bytes_down``, ``bytes_up`` and their sum over all rounds of the run."""
    rows = latest_rows(history)
    out = {key: sum(int(r.get(key) or 0) for r in rows) for key in BYTES_KEYS}
    out["bytes"] = out["bytes_down"] + out["bytes_up"]
    return out


def target_name(metric: str, target: float) -> str:
    """``centralized_accuracy``, 0.8 -> ``centralized_accuracy_0.8``."""
    return f"{metric}_{format(float(target), 'g')}"


def lower_is_better(metric: str) -> bool:
    """Losses are reached from above (a value <= target), everything else from below."""
    return "loss" in metric.split("_")


def reached_at(history: Iterable[dict[str, Any]], metric: str, target: float) -> int | None:
    """The first round whose ``metric`` (flat name) meets ``target``, or None."""
    phase, _, key = metric.partition("_")
    low = lower_is_better(metric)
    for row in sorted((r for r in latest_rows(history) if r["phase"] == phase), key=lambda r: r["round"]):
        value = row.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            continue
        if (value <= target) if low else (value >= target):
            return int(row["round"])
    return None


def rounds_to_targets(history: list[dict[str, Any]], targets: Mapping[str, Any]) -> dict[str, int | None]:
    """``rounds_to_<metric>_<target>`` and ``bytes_to_<metric>_<target>`` (all bytes sent
    and received up to and including that round), ``None`` where it is not reached."""
    out: dict[str, int | None] = {}
    rows = latest_rows(history)
    for metric, values in targets.items():
        for target in values if isinstance(values, (list, tuple)) else [values]:
            name = target_name(metric, float(target))
            rnd = reached_at(rows, metric, float(target))
            out[f"rounds_to_{name}"] = rnd
            out[f"bytes_to_{name}"] = (
                None if rnd is None else sum(int(r.get(k) or 0) for r in rows if r["round"] <= rnd for k in BYTES_KEYS)
            )
    return out


def split_summary(run_dir: Path) -> dict[str, Any] | None:
    """Statistics of the run's ``partitions.json`` (None when the run has none)."""
    table = read_json_object(Path(run_dir) / PARTITIONS_FILE)
    return None if table is None else split_stats(table)
