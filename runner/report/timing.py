"""``elapsed_s`` of a run's metric rows: one clock across the sessions of a run.

``elapsed_s`` is the seconds of round-loop time (from the moment the engine hands the
server its grid, so engine start-up is left out) summed over every session of the run. A
resumed session continues from the largest ``elapsed_s`` of the history its checkpoint
carries, so the clock never restarts or goes backwards; time spent on rounds that a resume
redoes (they came after the checkpoint) is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any


class RunClock:
    def __init__(self, history: Iterable[dict[str, Any]] = ()) -> None:
        values = [r.get("elapsed_s") for r in history]
        numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.base = max(numbers, default=0.0)
        self.t0 = time.monotonic()

    def restart(self) -> None:
        """This session's clock starts now (the grid is up)."""
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return round(self.base + time.monotonic() - self.t0, 4)
