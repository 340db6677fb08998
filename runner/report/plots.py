"""Per-run plots: ``plots/loss.png`` and ``plots/accuracy.png``.

Matplotlib is used through ``Figure`` + ``FigureCanvasAgg`` only: no pyplot, no
global backend switch, so calling this from inside a program that uses matplotlib
interactively changes nothing for it. Files are written atomically.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.report import metrics as M
from runner.report._atomic import atomic_write_with

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
#: Always written (a "no data yet" note if empty); every other metric a run records
#: (a task's own metrics, DP's epsilon and clipping norm) gets its own file too.
PLOTTED_METRICS: tuple[str, ...] = ("loss", "accuracy")
#: Row keys not plotted: counters, and DP settings that stay fixed.
NOT_PLOTTED = M.COUNTER_KEYS | {"delta", "noise_multiplier"}
#: Prefix of a personal model's metrics in ``evaluate`` rows (``personal_accuracy``).
PERSONAL = "personal_"
FIGSIZE = (6.4, 4.4)
DPI = 100
#: Above this many points per line, draw lines without markers.
MARKER_LIMIT = 40

_STYLE = {  # phase -> (colour, marker)
    "train": ("tab:blue", "o"),
    "evaluate": ("tab:orange", "s"),
    "centralized": ("tab:green", "^"),
}


def run_name(run_dir: str | Path) -> str:
    """Short name of a run dir: its last two path parts (``10-00-00/3``, ``2026-11-24/10-00-00``)."""
    parts = Path(run_dir).resolve().parts
    return "/".join(parts[-2:])


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write ``<run_dir>/plots/loss.png`` and ``accuracy.png`` from ``metrics.jsonl``.

    One line per phase present (train, federated eval, centralized eval, and federated
    eval of the clients' personal models, dashed, when an algorithm has them), x = round
    (integer ticks). Missing phases or metrics are left out, NaN / inf points are
    skipped; a metric with no data at all gives a plot saying so. Returns the paths
    written. Cheap enough to call after every round.
    """
    run_dir = Path(run_dir)
    rows = M.read_metrics(run_dir)
    title_name = run_name(run_dir)
    overrides = M.read_overrides(run_dir)
    out_dir = run_dir / PLOTS_DIR
    written = []
    recorded = {
        k
        for r in rows
        for k, v in r.items()
        if k not in M.NON_METRIC_KEYS and k not in NOT_PLOTTED and M.to_float(v) is not None
    }
    # A personal model's metric (evaluate_personal_<m>) is a line on <m>'s plot, not a plot of its own.
    shown = set(PLOTTED_METRICS) | recorded
    others = sorted(
        k for k in recorded if k not in PLOTTED_METRICS and not (k.startswith(PERSONAL) and k[len(PERSONAL) :] in shown)
    )
    for metric in (*PLOTTED_METRICS, *others):
        lines = []
        for phase in M.phases(rows):
            xs, ys = M.series(rows, phase, metric, finite_only=True)
            if xs:
                lines.append((M.PHASES.get(phase, phase), phase, xs, ys, "-"))
            if phase == "evaluate" and not metric.startswith(PERSONAL):
                xs, ys = M.series(rows, phase, PERSONAL + metric, finite_only=True)
                if xs:
                    lines.append((f"{M.PHASES.get(phase, phase)}, personal model", phase, xs, ys, "--"))
        fig = _figure()
        ax = fig.add_subplot(1, 1, 1)
        for label, phase, xs, ys, style in lines:
            colour, marker = _STYLE.get(phase, (None, "x"))
            ax.plot(
                xs,
                ys,
                style,
                label=label,
                color=colour,
                marker=marker if len(xs) <= MARKER_LIMIT else None,
                markersize=4,
                linewidth=1.5,
            )
        _decorate(
            ax,
            xlabel="round",
            ylabel=metric,
            title=_title(f"{metric} per round — {title_name}", overrides),
            empty=not lines,
            empty_text=f"no {metric} recorded yet",
        )
        if lines:
            ax.legend(loc="best", fontsize="small")
        written.append(save_figure(fig, out_dir / f"{metric}.png"))
    return written


def _figure(figsize: tuple[float, float] = FIGSIZE) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(main: str, overrides: Iterable[str]) -> str:
    extra = " ".join(overrides)
    if not extra:
        return main
    return main + "\n" + textwrap.shorten(extra, width=90, placeholder=" …")


def _decorate(ax, *, xlabel: str, ylabel: str, title: str, empty: bool, empty_text: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    if empty:
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib Figure as PNG atomically (temp file + ``os.replace``)."""
    return atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=DPI))
