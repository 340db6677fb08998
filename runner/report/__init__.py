"""Reports of runs and sweeps: metrics reader, per-run plots, sweep summary, progress.

Submodules are imported lazily so that, e.g., the round loop importing
:mod:`runner.report.progress` does not pay for matplotlib.

* :func:`read_metrics`, :func:`final_and_best` — :mod:`runner.report.metrics`
* :func:`plot_run` — :mod:`runner.report.plots`
* :func:`summarize_sweep` — :mod:`runner.report.summary`
* :class:`SweepSummaryCallback` — :mod:`runner.report.callback` (Hydra callback)
* :class:`RoundProgress` — :mod:`runner.report.progress`
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_metrics": "metrics",
    "final_and_best": "metrics",
    "final_metrics": "metrics",
    "plot_run": "plots",
    "summarize_sweep": "summary",
    "SweepSummaryCallback": "callback",
    "RoundProgress": "progress",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
