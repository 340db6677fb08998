"""The single reader of a run's ``metrics.jsonl`` (and of its ``summary.json``).

A run dir holds ``metrics.jsonl``: one JSON object per line, one row per round and
phase (``train``, ``evaluate`` = federated evaluation, ``centralized`` = server-side
evaluation, round 0 = the initial model)::

    {"round": 1, "phase": "train", "loss": 0.52, "accuracy": 0.81, ...}

Every other part of the report package (plots, sweep summary) goes through this
module, so the numbers in a plot, a summary table and the metrics file agree.

Flat metric names are ``<phase>_<metric>`` (``centralized_accuracy``,
``evaluate_loss``, ``train_loss``), as used by ``checkpoint.monitor``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"

#: Phases in display order, with human-readable names.
PHASES: dict[str, str] = {
    "train": "train",
    "evaluate": "federated eval",
    "centralized": "centralized eval",
}

#: Row keys that are bookkeeping, not metrics.
NON_METRIC_KEYS = frozenset({"round", "phase"})

#: Row keys that count or time things (replies, failures, DP releases, seconds, bytes), not results.
COUNTER_KEYS = frozenset({"num_replies", "num_failures", "num_releases", "elapsed_s", "bytes_down", "bytes_up"})

Row = dict[str, Any]


def metrics_path(run_dir: str | Path) -> Path:
    """Path of the metrics file of ``run_dir`` (``run_dir`` may also be the file)."""
    p = Path(run_dir)
    return p if p.name == METRICS_FILE or p.is_file() else p / METRICS_FILE


def read_metrics(run_dir: str | Path) -> list[Row]:
    """Read all rows of ``<run_dir>/metrics.jsonl``, in file order.

    A missing file gives ``[]``. A torn last line (a process killed mid-write) is
    skipped with a warning; so is any other line that is not a JSON object with an
    integer ``round`` and a string ``phase``. ``NaN`` values are kept as ``float('nan')``.
    """
    path = metrics_path(run_dir)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    last_lineno = max((i for i, raw in enumerate(lines, start=1) if raw.strip()), default=0)
    rows: list[Row] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            if lineno == last_lineno and not data.rstrip(b" \t\r").endswith(b"\n"):
                log.warning("%s:%d: skipping torn last line (%s)", path, lineno, e)
            else:
                log.warning("%s:%d: skipping unreadable line (%s)", path, lineno, e)
            continue
        if not _valid_row(row):
            log.warning(
                "%s:%d: skipping row without integer 'round' and 'phase': %.80s",
                path,
                lineno,
                raw.decode("utf-8", "replace"),
            )
            continue
        rows.append(row)
    return rows


def _valid_row(row: Any) -> bool:
    return (
        isinstance(row, dict)
        and isinstance(row.get("round"), int)
        and not isinstance(row.get("round"), bool)
        and isinstance(row.get("phase"), str)
    )


def to_float(value: Any) -> float | None:
    """A metric value as float; ``None`` for missing / non-numeric values (NaN stays NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return None


def latest_rows(rows: Iterable[Row]) -> list[Row]:
    """One row per (phase, round): the last one written wins; sorted by phase, round.

    A run that re-did a round (e.g. resumed into the same metrics file) reports what
    it did last.
    """
    by_key: dict[tuple[str, int], Row] = {}
    for row in rows:
        by_key[(row["phase"], row["round"])] = row
    return [by_key[k] for k in sorted(by_key, key=lambda k: (k[0], k[1]))]


def phases(rows: Iterable[Row]) -> list[str]:
    """Phases present in ``rows``: known ones in display order, then any others sorted."""
    present = {r["phase"] for r in rows}
    return [p for p in PHASES if p in present] + sorted(present - set(PHASES))


def series(rows: Iterable[Row], phase: str, metric: str, *, finite_only: bool = False) -> tuple[list[int], list[float]]:
    """``(rounds, values)`` of one metric of one phase, by round (last write wins).

    Rows without the metric are left out; NaN is kept unless ``finite_only``.
    """
    xs: list[int] = []
    ys: list[float] = []
    for row in latest_rows(r for r in rows if r["phase"] == phase):
        v = to_float(row.get(metric))
        if v is None or (finite_only and not math.isfinite(v)):
            continue
        xs.append(row["round"])
        ys.append(v)
    return xs, ys


def split_flat(name: str) -> tuple[str, str]:
    """``"centralized_accuracy"`` -> ``("centralized", "accuracy")``."""
    phase, sep, metric = name.partition("_")
    if not sep or not phase or not metric:
        raise ValueError(f"metric name {name!r} is not of the form <phase>_<metric>, e.g. centralized_accuracy")
    return phase, metric


def flat_name(phase: str, metric: str) -> str:
    return f"{phase}_{metric}"


def final_metrics(rows: Iterable[Row]) -> dict[str, float]:
    """Last value of every metric of every phase, as flat names (``train_loss``...).

    "Last" = the highest round that recorded that metric (NaN counts: a run that
    ended on NaN ends on NaN).
    """
    out: dict[str, float] = {}
    for row in latest_rows(rows):  # sorted by phase then round: later rounds overwrite
        for key, value in row.items():
            if key in NON_METRIC_KEYS:
                continue
            v = to_float(value)
            if v is not None:
                out[flat_name(row["phase"], key)] = v
    return out


def rounds_done(rows: Iterable[Row]) -> int:
    """Highest round that has any row (0 if only the initial evaluation ran)."""
    return max((r["round"] for r in rows), default=0)


class FinalBest(NamedTuple):
    """Final and best value of a monitored metric (``None`` where there is none)."""

    metric: str
    mode: str
    final: float | None
    final_round: int | None
    best: float | None
    best_round: int | None


def final_and_best(rows: Iterable[Row], monitor: str = "centralized_accuracy", mode: str = "max") -> FinalBest:
    """Final and best value of ``monitor`` (a flat name) over ``rows``.

    ``final`` is the value at the highest round that recorded the metric (may be NaN);
    ``best`` is the max (``mode="max"``) or min (``mode="min"``) over finite values,
    the earliest round winning ties.
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    phase, metric = split_flat(monitor)
    xs, ys = series(list(rows), phase, metric)
    final = ys[-1] if ys else None
    final_round = xs[-1] if xs else None
    best = best_round = None
    for x, y in zip(xs, ys, strict=True):
        if not math.isfinite(y):
            continue
        if best is None or (y > best if mode == "max" else y < best):
            best, best_round = y, x
    return FinalBest(monitor, mode, final, final_round, best, best_round)


def read_json_object(path: str | Path) -> dict[str, Any] | None:
    """A JSON object file as a dict; ``None`` (with a warning) if missing or unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); ignoring it", path, e)
        return None
    if not isinstance(data, dict):
        log.warning("%s: not a JSON object; ignoring it", path)
        return None
    return data


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``summary.json`` as a dict, or ``None`` if missing or unreadable."""
    return read_json_object(Path(run_dir) / SUMMARY_FILE)


def read_overrides(run_dir: str | Path) -> list[str]:
    """The run's Hydra task overrides (``.hydra/overrides.yaml``), or ``[]``."""
    import yaml  # a dependency of omegaconf / hydra

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, yaml.YAMLError) as e:
        log.warning("%s: unreadable (%s)", path, e)
        return []
    if not isinstance(data, list):
        return []
    return [str(x) for x in data]


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's composed config (``.hydra/config.yaml``) as plain data, or ``{}``.

    Read as YAML, without resolving interpolations: the report only looks at a few
    plain keys (``checkpoint.monitor``, ``checkpoint.mode``, ``num_rounds``).
    """
    import yaml

    path = Path(run_dir) / ".hydra" / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as e:
        log.warning("%s: unreadable (%s)", path, e)
        return {}
    return data if isinstance(data, dict) else {}
