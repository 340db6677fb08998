"""Run state that is not weights: RNG states and flat views of the metrics history (JSON)."""

from __future__ import annotations

import base64
import math
import random
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """Python, NumPy (legacy global) and torch CPU generator states, as JSON."""
    py = random.getstate()
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
    }


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))


def flat_metrics(history: list[dict[str, Any]], upto_round: int | None = None) -> dict[str, float]:
    """Latest value of every ``<phase>_<metric>`` (e.g. centralized_accuracy) so far."""
    flat: dict[str, float] = {}
    for row in history:
        if upto_round is not None and row["round"] > upto_round:
            continue
        for key, value in row.items():
            if key in ("round", "phase", "elapsed_s") or not isinstance(value, (int, float)):
                continue
            flat[f"{row['phase']}_{key}"] = float(value)
    return flat


def round_metrics(history: list[dict[str, Any]], rnd: int) -> dict[str, float]:
    """``<phase>_<metric>`` values recorded for round ``rnd`` only."""
    return flat_metrics([row for row in history if row["round"] == rnd])


def round_metric(history: list[dict[str, Any]], rnd: int, name: str) -> float | None:
    """The value of ``<phase>_<metric>`` recorded for round ``rnd``, or None."""
    phase, _, metric = name.partition("_")
    for row in history:
        if row["round"] == rnd and row["phase"] == phase and metric in row:
            value = row[metric]
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
    return None
