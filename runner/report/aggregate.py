"""Seed aggregation of a sweep: ``aggregate.csv``, ``aggregate.md``, ``aggregate.tex`` and
``aggregate.png`` in the sweep dir — the table and curves a paper reports.

A *configuration* is a job's overrides without ``seed`` and without the keys that do not
change what is computed (:data:`NOT_CONFIG`: resume, logger, progress, ...). Per
configuration: ``n`` (jobs whose values enter the statistics), ``n_failed`` (jobs that
failed, were interrupted or left no ``summary.json``), and ``<value>_mean`` /
``<value>_std`` (sample std, ddof=1; empty for n < 2) of every final and best metric, the
times, the bytes, and the rounds (and bytes) to each target. Failure totals
(``failed_rounds``, ``client_failures``) are sums over the configuration's jobs when their
summaries give them.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.report import metrics as M
from runner.report._atomic import atomic_write_text
from runner.report.comm import BYTES_KEYS
from runner.report.plots import _decorate, _figure, run_name, save_figure
from runner.report.results import lower_is_better
from runner.report.summary import JobRecord, comparison_phase, override_key, override_values, swept_keys

AGGREGATE_CSV = "aggregate.csv"
AGGREGATE_MD = "aggregate.md"
AGGREGATE_TEX = "aggregate.tex"
AGGREGATE_PNG = "aggregate.png"

#: Override keys that never make a different configuration (besides ``seed``).
NOT_CONFIG = frozenset(
    {
        "seed",
        "resume",
        "resume_roots",
        "logger",
        "progress",
        "print_config",
        "telemetry",
        "stop_after_round",
        "data_cache",
    }
)
#: Statuses whose job counts in ``n_failed`` (besides a job without summary.json).
FAILED = frozenset({"failed", "interrupted"})
#: Statuses of jobs not finished yet: in neither ``n`` nor ``n_failed``.
PENDING = frozenset({"running"})
FAILURE_TOTALS = ("failed_rounds", "client_failures")


def is_config_key(key: str) -> bool:
    """``logger.csv.log_clients`` is a logger key like ``logger``; ``hydra.*`` never counts."""
    root = key.split(".", 1)[0]
    return root not in NOT_CONFIG and root != "hydra"


def config_overrides(overrides: list[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if is_config_key(override_key(o)))


@dataclass
class ConfigRow:
    """One configuration: its jobs and the statistics over them."""

    overrides: tuple[str, ...]
    jobs: list[JobRecord] = field(default_factory=list)
    n: int = 0
    n_failed: int = 0
    n_running: int = 0
    stats: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # name -> (mean, std)
    reached: dict[str, int] = field(default_factory=dict)  # rounds_to_* -> jobs that reached it
    totals: dict[str, int] = field(default_factory=dict)


def job_values(rec: JobRecord) -> dict[str, float | None]:
    """The numbers of one job that the aggregate averages."""
    summ = rec.summary or {}
    out: dict[str, float | None] = {f"final_{m}": v for m, v in rec.finals.items()}
    out[f"best_{rec.monitor}"] = rec.best_monitored
    out["wall_time_s"] = rec.wall_time_s
    for key in ("startup_s", "rounds_s"):
        out[key] = M.to_float(summ.get(key))
    totals = summ.get("totals")
    for key in (*BYTES_KEYS, "bytes"):
        out[key] = M.to_float(totals.get(key)) if isinstance(totals, dict) else None
    targets = summ.get("rounds_to_target")
    for key, value in (targets if isinstance(targets, dict) else {}).items():
        out[str(key)] = M.to_float(value)
    return out


def _failed(rec: JobRecord) -> bool:
    return rec.summary is None or rec.status in FAILED


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(records: list[JobRecord]) -> list[ConfigRow]:
    """One row per configuration, in the order of each configuration's first job."""
    rows: dict[tuple[str, ...], ConfigRow] = {}
    for rec in records:
        key = config_overrides(rec.overrides)
        rows.setdefault(key, ConfigRow(key)).jobs.append(rec)
    for row in rows.values():
        used = []
        for rec in row.jobs:
            if rec.status in PENDING and rec.summary is None:
                row.n_running += 1
            elif _failed(rec):
                row.n_failed += 1
            else:
                used.append(rec)
        row.n = len(used)
        per_job = [job_values(rec) for rec in used]
        names: list[str] = []
        for values in per_job:
            names += [k for k in values if k not in names]
        for name in names:
            present = [v for values in per_job if (v := values.get(name)) is not None]
            row.stats[name] = _mean_std(present)
            if name.startswith("rounds_to_"):
                row.reached[name] = len(present)
        for total in FAILURE_TOTALS:
            counts = [f.get(total) for rec in row.jobs if isinstance(f := (rec.summary or {}).get("failures"), dict)]
            numbers = [int(c) for c in counts if isinstance(c, int) and not isinstance(c, bool)]
            if numbers:
                row.totals[total] = sum(numbers)
    return list(rows.values())


def _columns(rows: list[ConfigRow]) -> list[str]:
    names: list[str] = []
    for row in rows:
        names += [k for k in row.stats if k not in names]
    return names


# --------------------------------------------------------------------------- writing


def write_aggregate(records: list[JobRecord], sweep_dir: Path) -> list[Path]:
    """(Re)write the four aggregate files of a sweep (called with the summary, under its lock)."""
    rows = aggregate(records)
    swept = swept_keys([list(r.overrides) for r in rows])
    fixed = [o for o in (rows[0].overrides if rows else ()) if override_key(o) not in swept]
    return [
        write_csv(rows, swept, sweep_dir / AGGREGATE_CSV),
        write_markdown(rows, swept, fixed, sweep_dir / AGGREGATE_MD, sweep_dir),
        write_tex(rows, swept, sweep_dir / AGGREGATE_TEX, sweep_dir),
        plot_bands(rows, swept, sweep_dir / AGGREGATE_PNG, title_name=run_name(sweep_dir)),
    ]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(rows: list[ConfigRow], swept: tuple[str, ...], path: Path) -> Path:
    names = _columns(rows)
    reached = sorted({k for row in rows for k in row.reached}, key=names.index)
    totals = [k for k in FAILURE_TOTALS if any(k in row.totals for row in rows)]
    header = [
        *swept,
        "n",
        "n_failed",
        "n_running",
        *(f"{k}_{s}" for k in names for s in ("mean", "std")),
        *(f"{k}_reached" for k in reached),
        *totals,
        "overrides",
    ]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        values = override_values(list(row.overrides))
        writer.writerow(
            [
                *(values.get(k, "") for k in swept),
                row.n,
                row.n_failed,
                row.n_running,
                *(_cell(x) for k in names for x in row.stats.get(k, (None, None))),
                *(row.reached.get(k, 0) for k in reached),
                *(row.totals.get(k, "") for k in totals),
                " ".join(row.overrides),
            ]
        )
    return atomic_write_text(path, buf.getvalue())


@dataclass(frozen=True)
class Shown:
    """A column of the Markdown / LaTeX table."""

    key: str
    title: str
    lower_better: bool
    scale: float = 1.0
    digits: int = 4


def shown_columns(rows: list[ConfigRow]) -> list[Shown]:
    """Results first (final metrics, best monitored, rounds to targets), then cost."""
    names = _columns(rows)
    out = []
    from runner.report.summary import REPORTED_FINALS

    for m in REPORTED_FINALS:
        if f"final_{m}" in names and any(
            row.stats[f"final_{m}"][0] is not None for row in rows if f"final_{m}" in row.stats
        ):
            out.append(Shown(f"final_{m}", m.replace("_", " "), lower_is_better(m)))
    monitors = {rec.monitor: rec.mode for row in rows for rec in row.jobs}
    for monitor, mode in monitors.items():
        if f"best_{monitor}" in names:
            out.append(Shown(f"best_{monitor}", f"best {monitor.replace('_', ' ')}", mode == "min"))
    for key in names:
        if key.startswith("rounds_to_"):
            out.append(Shown(key, key.replace("_", " "), True, digits=3))
    if "bytes" in names:
        out.append(Shown("bytes", "MB sent+received", True, scale=1e-6, digits=4))
    if "rounds_s" in names:
        out.append(Shown("rounds_s", "rounds s", True, digits=3))
    return out


def _pair(stats: tuple[float | None, float | None], col: Shown) -> tuple[str, str] | None:
    """Mean and std as text: the std to two significant digits, the mean to the same decimals."""
    mean, std = stats
    if mean is None:
        return None
    mean *= col.scale
    if std is None or not math.isfinite(std) or not math.isfinite(mean):
        return f"{mean:.{col.digits}g}", "" if std is None else f"{std * col.scale:g}"
    std *= col.scale
    if std == 0:
        return f"{mean:.{col.digits}g}", "0"
    decimals = min(8, max(0, 1 - math.floor(math.log10(std))))
    return f"{mean:.{decimals}f}", f"{std:.{decimals}f}"


def _best_rows(rows: list[ConfigRow], col: Shown) -> set[int]:
    """Rows holding the column's best mean (none if fewer than two rows have one)."""
    means = [(i, row.stats.get(col.key, (None, None))[0]) for i, row in enumerate(rows)]
    finite = [(i, m) for i, m in means if m is not None and math.isfinite(m)]
    if len(finite) < 2:
        return set()
    best = (min if col.lower_better else max)(m for _, m in finite)
    return {i for i, m in finite if m == best}


def _config_label(row: ConfigRow, swept: tuple[str, ...]) -> list[str]:
    values = override_values(list(row.overrides))
    return [values.get(k, "—") for k in swept]


def _table(
    rows: list[ConfigRow], swept: tuple[str, ...], cell: Callable[[str, str, bool], str], missing: str
) -> tuple[list[str], list[list[str]]]:
    cols = shown_columns(rows)
    header = [*swept, "n", *(c.title for c in cols)]
    body = []
    best = {c.key: _best_rows(rows, c) for c in cols}
    for i, row in enumerate(rows):
        cells = [*_config_label(row, swept), f"{row.n}" + (f" ({row.n_failed} failed)" if row.n_failed else "")]
        for c in cols:
            pair = _pair(row.stats.get(c.key, (None, None)), c)
            if pair is not None and c.key in row.reached and row.reached[c.key] < row.n:
                pair = (pair[0], pair[1] + f", {row.reached[c.key]}/{row.n} reached")
            if pair is None and c.key.startswith("rounds_to_") and row.n:
                cells.append("not reached")
                continue
            cells.append(missing if pair is None else cell(pair[0], pair[1], i in best[c.key]))
        body.append(cells)
    return header, body


def write_markdown(
    rows: list[ConfigRow], swept: tuple[str, ...], fixed: list[str], path: Path, sweep_dir: Path
) -> Path:
    def cell(mean: str, std: str, bold: bool) -> str:
        text = f"{mean} ± {std}" if std else mean
        return f"**{text}**" if bold else text

    header, body = _table(rows, swept, cell, "—")
    jobs = sum(len(r.jobs) for r in rows)
    lines = [f"# Aggregate over seeds — {run_name(sweep_dir)}", ""]
    lines.append(
        f"{len(rows)} configuration(s) from {jobs} job(s); mean ± sample std (ddof=1) over the n jobs that "
        "finished; best of each column in bold."
    )
    if fixed:
        lines.append(f"Fixed overrides: `{' '.join(fixed)}`.")
    failed = sum(r.n_failed for r in rows)
    running = sum(r.n_running for r in rows)
    if failed or running:
        lines.append(f"Left out: {failed} failed or interrupted job(s), {running} still running.")
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    settings = [(row, strategy_settings(row)) for row in rows]
    if any(text for _, text in settings):
        lines += ["", "Strategy settings (from each configuration's first job, overridden or not):", ""]
        for row, text in settings:
            label = " ".join(f"{k}={v}" for k, v in zip(swept, _config_label(row, swept), strict=True)) or "all jobs"
            lines.append(f"- {label}: `{text or '—'}`")
    lines += ["", f"All columns: `{AGGREGATE_CSV}`.", "", f"![mean ± std per round]({AGGREGATE_PNG})", ""]
    return atomic_write_text(path, "\n".join(lines))


def strategy_settings(row: ConfigRow) -> str:
    """``FedProx(proximal_mu=0.1, fraction_train=0.5, ...)`` from the first job's composed config."""
    if not row.jobs:
        return ""
    node = M.read_run_config(row.jobs[0].job_dir).get("strategy")
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        return ""
    args = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
    return f"{node['_target_'].rsplit('.', 1)[-1]}({args})"


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


def write_tex(rows: list[ConfigRow], swept: tuple[str, ...], path: Path, sweep_dir: Path) -> Path:
    def cell(mean: str, std: str, bold: bool) -> str:
        text = f"{mean} \\pm {std}" if std else mean
        return f"$\\mathbf{{{text}}}$" if bold else f"${text}$"

    header, body = _table(rows, swept, cell, "--")
    align = "l" * len(swept) + "r" + "c" * (len(header) - len(swept) - 1)
    lines = [
        f"% Aggregate over seeds of {run_name(sweep_dir)}: mean $\\pm$ sample std (ddof=1) over n seeds;",
        "% best of each column in bold. Needs \\usepackage{booktabs}.",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(_tex(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    for cells in body:
        n_label = len(swept) + 1
        lines.append(" & ".join([*(_tex(c) for c in cells[:n_label]), *cells[n_label:]]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return atomic_write_text(path, "\n".join(lines))


# --------------------------------------------------------------------------- plot


def mean_curve(jobs: list[JobRecord], phase: str, metric: str) -> tuple[list[int], list[float], list[float]]:
    """Per round: mean and sample std over the jobs that recorded the metric (std 0 for one)."""
    by_round: dict[int, list[float]] = {}
    for rec in jobs:
        for x, y in zip(*M.series(rec.rows, phase, metric, finite_only=True), strict=True):
            by_round.setdefault(x, []).append(y)
    xs = sorted(by_round)
    means = [statistics.fmean(by_round[x]) for x in xs]
    stds = [statistics.stdev(by_round[x]) if len(by_round[x]) > 1 else 0.0 for x in xs]
    return xs, means, stds


def plot_bands(rows: list[ConfigRow], swept: tuple[str, ...], path: Path, title_name: str = "") -> Path:
    """Accuracy and loss per round: one line per configuration (mean over its seeds) with a
    ± std band; centralized evaluation if any job has it, else federated."""
    jobs = [rec for row in rows for rec in row.jobs]
    phase = comparison_phase(jobs)
    fig = _figure(figsize=(11.0, 4.6))
    drawn = 0
    for i, metric in enumerate(("accuracy", "loss")):
        ax = fig.add_subplot(1, 2, i + 1)
        lines = 0
        for row in rows:
            used = [rec for rec in row.jobs if not _failed(rec) and rec.status not in PENDING]
            xs, means, stds = mean_curve(used, phase, metric)
            if not xs:
                continue
            label = " ".join(f"{k}={v}" for k, v in zip(swept, _config_label(row, swept), strict=True)) or "all jobs"
            (line,) = ax.plot(xs, means, marker="o" if len(xs) <= 40 else None, markersize=3, linewidth=1.5)
            line.set_label(f"{label} (n={len(used)})")
            lo = [m - s for m, s in zip(means, stds, strict=True)]
            hi = [m + s for m, s in zip(means, stds, strict=True)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2)
            lines += 1
        _decorate(
            ax,
            xlabel="round",
            ylabel=f"{M.PHASES[phase]} {metric}",
            title=f"{M.PHASES[phase]} {metric}: mean ± std over seeds",
            empty=lines == 0,
            empty_text=f"no {metric} recorded yet",
        )
        if lines:
            ax.legend(loc="best", fontsize="small")
        drawn += lines
    if title_name:
        fig.suptitle(title_name, fontsize="medium")
    return save_figure(fig, path)
