"""When to save, which round is best, and which old checkpoints to remove.

Pure bookkeeping, no I/O: the writer asks it, and its ``state_dict()`` travels in every
manifest so a resumed run keeps its best-so-far tracker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CheckpointPolicy"]

_MODES = ("max", "min")


class CheckpointPolicy:
    """Save every ``every_n_rounds`` (and the final round); keep the last ``keep_last``
    checkpoints (None: all) plus the best by ``monitor`` (``mode`` max|min) and any
    protected round (the one this run resumed from, the final round)."""

    def __init__(
        self,
        every_n_rounds: int = 1,
        keep_last: int | None = None,
        monitor: str | None = "centralized_accuracy",
        mode: str = "max",
    ) -> None:
        if not isinstance(every_n_rounds, int) or isinstance(every_n_rounds, bool) or every_n_rounds < 1:
            raise ValueError(f"checkpoint.every_n_rounds must be an integer >= 1, got {every_n_rounds!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1):
            raise ValueError(f"checkpoint.keep_last must be null or an integer >= 1, got {keep_last!r}")
        if mode not in _MODES:
            raise ValueError(f"checkpoint.mode must be 'max' or 'min', got {mode!r}")
        self.every_n_rounds = every_n_rounds
        self.keep_last = keep_last
        self.monitor = monitor or None
        self.mode = mode
        self.best_round: int | None = None
        self.best_value: float | None = None

    # -- saving -------------------------------------------------------------------------
    def should_save(self, round: int, num_rounds: int) -> bool:
        """Every n-th round, and always the final one (a run must end with a checkpoint)."""
        return round >= num_rounds or round % self.every_n_rounds == 0

    # -- best tracking ------------------------------------------------------------------
    def is_better(self, value: float, than: float | None) -> bool:
        if than is None:
            return True
        return value > than if self.mode == "max" else value < than

    def update_best(self, round: int, metrics: Mapping[str, Any]) -> bool:
        """True if ``metrics[monitor]`` makes ``round`` the new best (strictly better; the
        earlier round wins a tie). NaN, missing or non-numeric values are never best."""
        if self.monitor is None:
            return False
        value = metrics.get(self.monitor)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            try:
                value = float(value)  # type: ignore[arg-type]  # numpy scalars, 0-d arrays
            except (TypeError, ValueError):
                return False
        value = float(value)
        if math.isnan(value) or not self.is_better(value, self.best_value):
            return False
        self.best_round, self.best_value = round, value
        return True

    # -- retention ----------------------------------------------------------------------
    def should_remove(self, round: int, existing_rounds: Iterable[int], protected_rounds: Iterable[int] = ()) -> bool:
        """True if ``round`` is outside the last ``keep_last`` and neither best nor protected."""
        if self.keep_last is None or round == self.best_round or round in set(protected_rounds):
            return False
        return round not in sorted(set(existing_rounds))[-self.keep_last :]

    def rounds_to_remove(self, existing_rounds: Iterable[int], protected: Iterable[int] = ()) -> list[int]:
        existing = sorted(set(existing_rounds))
        protected = set(protected)
        return [r for r in existing if self.should_remove(r, existing, protected)]

    # -- persistence --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "every_n_rounds": self.every_n_rounds,
            "keep_last": self.keep_last,
            "monitor": self.monitor,
            "mode": self.mode,
            "best_round": self.best_round,
            "best_value": self.best_value,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the best tracker. The settings stay this run's own; a best recorded for
        another monitor or mode means nothing here, so it is then dropped."""
        if state.get("monitor") != self.monitor or state.get("mode", "max") != self.mode:
            self.best_round = self.best_value = None
            return
        best_round, best_value = state.get("best_round"), state.get("best_value")
        if best_round is None or best_value is None:
            self.best_round = self.best_value = None
        else:
            self.best_round, self.best_value = int(best_round), float(best_value)

    def __repr__(self) -> str:
        return (
            f"CheckpointPolicy(every_n_rounds={self.every_n_rounds}, keep_last={self.keep_last}, "
            f"monitor={self.monitor!r}, mode={self.mode!r}, best_round={self.best_round})"
        )
