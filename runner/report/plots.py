"""Per-run plots: ``plots/loss.png``, ``plots/accuracy.png`` (and one per other metric),
``plots/clients_<metric>.png`` (the p10-p90 band of the clients around the mean) and
``plots/partitions.png`` (each client's label distribution, from ``partitions.json``).

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
from runner.report.comm import is_spread_key

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
        k
        for k in recorded
        if k not in PLOTTED_METRICS
        and not is_spread_key(k)
        and not (k.startswith(PERSONAL) and k[len(PERSONAL) :] in shown)
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
    written += plot_client_spread(rows, out_dir, title_name, overrides)
    part = plot_partitions(run_dir)
    if part is not None:
        written.append(part)
    return written


def plot_client_spread(rows: list[M.Row], out_dir: Path, title_name: str, overrides: list[str]) -> list[Path]:
    """``clients_<metric>.png`` per metric with a client spread: for each federated phase,
    the aggregated value (line), the p10-p90 band of the clients and their min/max (dots)."""
    spread = sorted(
        {k[: -len("_client_p10")] for r in rows for k in r if k.endswith("_client_p10") and r["phase"] in M.PHASES}
    )
    written = []
    for metric in spread:
        fig = _figure()
        ax = fig.add_subplot(1, 1, 1)
        drawn = 0
        for phase in M.phases(rows):
            xs, mean = M.series(rows, phase, metric)
            lo = M.series(rows, phase, f"{metric}_client_p10")
            hi = M.series(rows, phase, f"{metric}_client_p90")
            if not lo[0]:
                continue
            colour, marker = _STYLE.get(phase, (None, "x"))
            label = M.PHASES.get(phase, phase)
            ax.fill_between(lo[0], lo[1], hi[1], color=colour, alpha=0.2, label=f"{label}: clients p10–p90")
            for stat in ("min", "max"):
                sx, sy = M.series(rows, phase, f"{metric}_client_{stat}")
                ax.plot(
                    sx,
                    sy,
                    linestyle=":",
                    color=colour,
                    linewidth=1.0,
                    label=f"{label}: clients min/max" if stat == "min" else None,
                )
            if xs:
                ax.plot(
                    xs,
                    mean,
                    color=colour,
                    marker=marker if len(xs) <= MARKER_LIMIT else None,
                    markersize=4,
                    linewidth=1.5,
                    label=f"{label}: mean",
                )
            drawn += 1
        _decorate(
            ax,
            xlabel="round",
            ylabel=metric,
            title=_title(f"{metric} across clients — {title_name}", overrides),
            empty=not drawn,
            empty_text=f"no client {metric} recorded",
        )
        if drawn:
            ax.legend(loc="best", fontsize="x-small")
        written.append(save_figure(fig, out_dir / f"clients_{metric}.png"))
    return written


BARS_UP_TO = 100  # clients drawn as bars in partitions.png; more: filled bands (same data, ~1,000x fewer artists)


def plot_partitions(run_dir: str | Path) -> Path | None:
    """``plots/partitions.png``: a stacked bar per client of its label counts (``None``
    when the run has no ``partitions.json`` or it holds no label counts)."""
    run_dir = Path(run_dir)
    table = M.read_json_object(run_dir / "partitions.json")
    if not table or not table.get("labels") or not isinstance(table.get("clients"), list):
        return None
    labels = [str(x) for x in table["labels"]]
    clients = table["clients"]
    if not all(isinstance(c.get("label_counts"), dict) for c in clients):
        return None
    n = len(clients)
    fig = _figure(figsize=(max(6.4, min(16.0, 0.25 * n + 3)), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    bottom = [0] * n
    xs = list(range(n))
    cmap = _colours(len(labels))
    counts = [[int(c["label_counts"].get(label, 0)) for c in clients] for label in labels]
    if n <= BARS_UP_TO:
        for i, label in enumerate(labels):
            ax.bar(xs, counts[i], bottom=bottom, color=cmap[i], width=0.85, label=label)
            bottom = [b + h for b, h in zip(bottom, counts[i], strict=True)]
    else:  # one filled band per label: a bar per client and label took ~18 s at 1,000 clients
        ax.stackplot(xs, counts, colors=cmap, labels=labels, step="mid", linewidth=0)
    _decorate(
        ax,
        xlabel="client (partition id)",
        ylabel="samples",
        title=f"label distribution per client — {run_name(run_dir)}\n{_partitioner_text(table)}",
        empty=n == 0,
        empty_text="no clients",
    )
    if len(labels) <= 20:
        ax.legend(title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small")
    return save_figure(fig, run_dir / PLOTS_DIR / "partitions.png")


def _partitioner_text(table: dict[str, Any]) -> str:
    name = str(table.get("partitioner", "")).rsplit(".", 1)[-1]
    args = table.get("partitioner_args")
    items = sorted(args.items()) if isinstance(args, dict) else []
    text = ", ".join(f"{k}={v}" for k, v in items if k != "num_partitions")
    return textwrap.fill(f"{name}({text})", width=90)


def _colours(k: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"]
    return [cmap(i if k <= 20 else i / max(k - 1, 1)) for i in range(k)]


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
