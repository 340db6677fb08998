"""CSV: ``<run dir>/csv/metrics.csv`` in long format (``round,metric,value``), no extra package.

The smallest complete logger, and a template for your own ``_target_``. It keeps no tracker
run to reopen: a resumed run writes a complete file (the checkpoint's history, then its own
rounds) in its own run dir, like ``metrics.jsonl``. Read it with
``pandas.read_csv(f).pivot(index="round", columns="metric", values="value")``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from runner.loggers.base import Logger, Metrics, RunInfo


class CSVLogger(Logger):
    def __init__(self, path: str | None = None, log_clients: bool = False, log_checkpoint: bool = False) -> None:
        super().__init__(log_clients, log_checkpoint)
        self.path_cfg = path
        self.path: Path | None = None
        self._file: TextIO | None = None
        self._writer: Any = None

    def start(
        self, run: RunInfo, state: dict[str, Any] | None, history: list[tuple[int, Metrics]]
    ) -> Iterable[tuple[str, int]] | None:
        self.path = (Path(self.path_cfg) if self.path_cfg else run.output_dir / "csv" / "metrics.csv").resolve()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - open until finish()
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(["round", "metric", "value"])
        return None  # the hub writes the history, then the new rounds

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        assert self._writer is not None and self._file is not None
        self._writer.writerows([step, key, repr(value)] for key, value in metrics.items())
        self._file.flush()

    def state_dict(self) -> dict[str, Any]:
        return {"path": str(self.path)} if self.path else {}

    def finish(self, status: str, artifacts: list[Path]) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
