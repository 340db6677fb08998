"""Sweep summary: ``summary.csv``, ``summary.md`` and ``comparison.png`` in a sweep dir.

One row per job dir (the numbered subdirs Hydra makes in a multirun, sorted
numerically), built only from files on disk: the job's ``metrics.jsonl`` (through
:mod:`runner.report.metrics`, so the numbers equal the metrics file), its
``summary.json`` (status, wall time, checkpoints, error), its ``.hydra/`` files
(overrides, monitored metric) and, when the sweep ran with
:class:`runner.report.callback.SweepSummaryCallback`, the ``hydra_job.json`` the
callback leaves in each job dir (Hydra's own view of whether the job raised).

Status of a job:

* ``failed`` if Hydra saw the task function raise, or ``summary.json`` says so, or
  the job left metrics but no ``summary.json`` (crashed hard / killed);
* otherwise ``summary.json``'s status (``completed``, ``already_complete``);
* ``running`` while a job of a live sweep has not finished;
* ``unknown`` when the job dir has neither metrics nor a summary.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import socket
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.report import metrics as M
from runner.report._atomic import atomic_write_text
from runner.report.comm import is_spread_key
from runner.report.plots import _decorate, _figure, run_name, save_figure

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
COMPARISON_PNG = "comparison.png"
#: Written into each job dir by the callback: Hydra's view of the job.
HYDRA_JOB_FILE = "hydra_job.json"
LOCK_FILE = ".summary.lock"

DEFAULT_MONITOR = "centralized_accuracy"
DEFAULT_MODE = "max"

#: Flat metrics reported for every job, in column order.
REPORTED_FINALS: tuple[str, ...] = (
    "centralized_accuracy",
    "centralized_loss",
    "evaluate_accuracy",
    "evaluate_loss",
    "train_accuracy",
    "train_loss",
)

#: Flat metric names that are counters, not results (left out of the extra columns).
BOOKKEEPING_SUFFIXES: tuple[str, ...] = tuple(f"_{key}" for key in sorted(M.COUNTER_KEYS))

CSV_COLUMNS: tuple[str, ...] = (
    "job",
    "overrides",
    "status",
    "rounds_done",
    "failed_rounds",  # issue 21: rounds with no aggregate (summary.json["failures"])
    "num_rounds",
    "monitor",
    "mode",
    "final_monitored",
    "best_monitored",
    "best_round",
    *(f"final_{m}" for m in REPORTED_FINALS),
    "wall_time_s",
    "resumed_from",
    "best_checkpoint",
    "last_checkpoint",
    "error",
    "job_dir",
)


@dataclass
class JobRecord:
    """Everything the summary says about one job."""

    job: int | str
    job_dir: Path
    overrides: list[str]
    status: str
    rounds_done: int | None
    num_rounds: int | None
    monitor: str
    mode: str
    final_monitored: float | None
    best_monitored: float | None
    best_round: int | None
    finals: dict[str, float | None]
    wall_time_s: float | None
    resumed_from: str | None
    best_checkpoint: str | None
    last_checkpoint: str | None
    error: str | None
    rows: list[dict] = field(default_factory=list, repr=False)
    failed_rounds: int | None = None  # issue 21: summary.json["failures"]["failed_rounds"]
    summary: dict[str, Any] | None = field(default=None, repr=False)  # summary.json, if any

    def extra_finals(self) -> dict[str, float | None]:
        return {m: v for m, v in self.finals.items() if m not in REPORTED_FINALS}

    def as_csv_row(self, extra: tuple[str, ...] = (), swept: tuple[str, ...] = ()) -> dict[str, str]:
        values = override_values(self.overrides)
        row: dict[str, Any] = {
            **{swept_column(k): values.get(k) for k in swept},
            "job": self.job,
            "overrides": " ".join(self.overrides),
            "status": self.status,
            "rounds_done": self.rounds_done,
            "failed_rounds": self.failed_rounds,
            "num_rounds": self.num_rounds,
            "monitor": self.monitor,
            "mode": self.mode,
            "final_monitored": self.final_monitored,
            "best_monitored": self.best_monitored,
            "best_round": self.best_round,
            **{f"final_{m}": self.finals.get(m) for m in REPORTED_FINALS},
            "wall_time_s": self.wall_time_s,
            "resumed_from": self.resumed_from,
            "best_checkpoint": self.best_checkpoint,
            "last_checkpoint": self.last_checkpoint,
            "error": self.error,
            "job_dir": str(self.job_dir),
        }
        row.update({f"final_{m}": self.finals.get(m) for m in extra})
        return {k: _csv_cell(row[k]) for k in csv_columns(extra, swept)}


def csv_columns(extra: tuple[str, ...] = (), swept: tuple[str, ...] = ()) -> list[str]:
    """CSV_COLUMNS with one column per swept override key after ``overrides``, then extras."""
    at = CSV_COLUMNS.index("overrides") + 1
    return [*CSV_COLUMNS[:at], *(swept_column(k) for k in swept), *CSV_COLUMNS[at:], *(f"final_{m}" for m in extra)]


def swept_column(key: str) -> str:
    """A swept key's column: the key itself, unless it is one of the summary's own columns."""
    return f"override.{key}" if key in CSV_COLUMNS else key


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~key`` -> ``key``."""
    return override.split("=", 1)[0].lstrip("~+")


def override_values(overrides: list[str]) -> dict[str, str]:
    return {override_key(o): (o.split("=", 1)[1] if "=" in o else "~") for o in overrides}


def swept_keys(override_lists: list[list[str]], exclude: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """Override keys whose value is not the same in every job (first-seen order)."""
    values = [override_values(o) for o in override_lists]
    keys: list[str] = []
    for v in values:
        keys += [k for k in v if k not in keys and k not in exclude]
    return tuple(k for k in keys if len({v.get(k) for v in values}) > 1)


# --------------------------------------------------------------------------- discovery


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """Job dirs of a sweep: numbered subdirs (numeric order), then any other subdir
    holding a ``.hydra/`` dir (name order)."""
    sweep_dir = Path(sweep_dir)
    numbered, other = [], []
    try:
        children = list(sweep_dir.iterdir())
    except FileNotFoundError:
        return []
    for child in children:
        if not child.is_dir() or child.name.startswith("."):
            continue
        if child.name.isdigit():
            numbered.append(child)
        elif (child / ".hydra").is_dir():
            other.append(child)
    numbered.sort(key=lambda p: int(p.name))
    other.sort(key=lambda p: p.name)
    return numbered + other


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / name).exists() for name in (M.METRICS_FILE, M.SUMMARY_FILE, ".hydra/config.yaml"))


def is_sweep_dir(path: str | Path) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "multirun.yaml").is_file():
        return True
    return any(is_run_dir(d) for d in job_dirs(p))


# --------------------------------------------------------------------------- one job


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def read_hydra_job(job_dir: str | Path) -> dict[str, Any] | None:
    """The callback's ``hydra_job.json`` of a job, or ``None``."""
    return M.read_json_object(Path(job_dir) / HYDRA_JOB_FILE)


def _num(value: Any) -> float | None:
    return M.to_float(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text.splitlines()[0] if text else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def collect_job(job_dir: str | Path, job: int | str | None = None) -> JobRecord:
    """Build the summary row of one job (or single run) dir from its files."""
    job_dir = Path(job_dir).absolute()
    if job is None:
        job = int(job_dir.name) if job_dir.name.isdigit() else job_dir.name
    rows = M.read_metrics(job_dir)
    summ = M.read_summary(job_dir) or {}
    hjob = read_hydra_job(job_dir) or {}
    cfg = M.read_run_config(job_dir)
    ckpt_cfg = _dict(cfg.get("checkpoint"))

    overrides = M.read_overrides(job_dir)
    if not overrides and isinstance(summ.get("overrides"), list):
        overrides = [str(o) for o in summ["overrides"]]

    # status and error line
    error = _str(summ.get("error"))
    s_status = summ.get("status") if isinstance(summ.get("status"), str) else None
    h_status = hjob.get("status")
    if h_status == "failed":
        status = "failed"
        error = error or _str(hjob.get("error")) or "job raised (no error message)"
    elif s_status:
        status = s_status
    elif h_status == "completed":
        status = "completed"
    elif h_status == "running":
        same_host = hjob.get("host") in (None, socket.gethostname())
        if same_host and _pid_alive(hjob.get("pid")):
            status = "running"
        else:
            status = "failed"
            error = "job process ended without reporting (killed?)"
    elif rows:
        status = "failed"
        error = "no summary.json (job crashed or was killed)"
    else:
        status = "unknown"
    if status == "failed" and not error:
        error = "failed (no error message)"

    # monitored metric: what the run itself tracked, else its config, else default
    best_info = _dict(summ.get("best"))
    monitor = str(best_info.get("metric") or ckpt_cfg.get("monitor") or DEFAULT_MONITOR)
    mode = str(best_info.get("mode") or ckpt_cfg.get("mode") or DEFAULT_MODE)
    final_monitored = best_monitored = None
    best_round = None
    try:
        fb = M.final_and_best(rows, monitor, mode)
        final_monitored = fb.final
        # best over trained rounds (round 0 is the initial model), as the run's checkpoint policy sees it
        trained = M.final_and_best([r for r in rows if r["round"] >= 1], monitor, mode)
        best_monitored, best_round = trained.best, trained.best_round
    except ValueError as e:
        log.warning("%s: cannot evaluate monitor %r/%r: %s", job_dir, monitor, mode, e)

    finals_from_rows = M.final_metrics(rows)
    summ_final = _dict(summ.get("final"))
    if final_monitored is None:  # no metric rows: fall back to what the run reported
        final_monitored = _num(summ_final.get(monitor))
    if best_monitored is None:
        best_monitored = _num(best_info.get("value"))
        best_round = _int(best_info.get("round"))
    finals = {m: finals_from_rows[m] if m in finals_from_rows else _num(summ_final.get(m)) for m in REPORTED_FINALS}
    # any other metric the run's task or DP reports (e.g. centralized_f1, privacy_epsilon)
    for m, v in finals_from_rows.items():
        if m not in finals and not m.endswith(BOOKKEEPING_SUFFIXES) and not is_spread_key(m):
            finals[m] = v

    rounds = _int(summ.get("rounds_done"))
    if rounds is None and rows:
        rounds = M.rounds_done(rows)
    num_rounds = _int(summ.get("num_rounds"))
    if num_rounds is None:
        num_rounds = _int(cfg.get("num_rounds"))

    ckpts = _dict(summ.get("checkpoints"))
    return JobRecord(
        job=job,
        job_dir=job_dir,
        overrides=overrides,
        status=status,
        rounds_done=rounds,
        num_rounds=num_rounds,
        monitor=monitor,
        mode=mode,
        final_monitored=final_monitored,
        best_monitored=best_monitored,
        best_round=best_round,
        finals=finals,
        wall_time_s=_num(summ.get("wall_time_s")),
        resumed_from=_str(summ.get("resumed_from")),
        best_checkpoint=_str(ckpts.get("best")),
        last_checkpoint=_str(ckpts.get("last")),
        error=error,
        rows=rows,
        failed_rounds=_int(_dict(summ.get("failures")).get("failed_rounds")),
        summary=M.read_summary(job_dir),
    )


def collect_sweep(sweep_dir: str | Path) -> list[JobRecord]:
    return [collect_job(d) for d in job_dirs(sweep_dir)]


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def sweep_lock(sweep_dir: str | Path) -> Iterator[None]:
    """Exclusive lock on the sweep dir's summary, across processes (joblib workers).

    Held while reading the jobs *and* writing, so the last writer has seen every job
    that finished before it started.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: atomic writes still keep files whole
        yield
        return
    path = Path(sweep_dir) / LOCK_FILE
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def summarize_sweep(sweep_dir: str | Path) -> Path:
    """(Re)write ``summary.csv``, ``summary.md`` and ``comparison.png`` in ``sweep_dir``.

    Returns the path of ``summary.csv``. Safe to call concurrently from several
    processes and as often as wanted: it only reads job files and replaces the
    three outputs atomically.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep dir {sweep_dir} does not exist")
    with sweep_lock(sweep_dir):
        records = collect_sweep(sweep_dir)
        csv_path = write_csv(records, sweep_dir / SUMMARY_CSV)
        write_markdown(records, sweep_dir / SUMMARY_MD, sweep_dir)
        plot_comparison(records, sweep_dir / COMPARISON_PNG, title_name=run_name(sweep_dir))
        from runner.report.aggregate import write_aggregate

        write_aggregate(records, sweep_dir)
    return csv_path


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly; nan / inf as 'nan' / 'inf'
    return str(value)


def write_csv(records: list[JobRecord], path: Path) -> Path:
    extra = tuple(sorted({m for rec in records for m in rec.extra_finals()}))
    swept = swept_keys([r.overrides for r in records])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(extra, swept), lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(rec.as_csv_row(extra, swept))
    return atomic_write_text(path, buf.getvalue())


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}g}"
    return str(value)


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _rel(path: str | None, base: Path) -> str:
    if not path:
        return "—"
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except (ValueError, OSError):
        return path


def varying_overrides(records: list[JobRecord]) -> dict[int | str, str]:
    """Job -> label made of the overrides that differ between jobs (all if none differ)."""
    sets = [set(r.overrides) for r in records]
    common = set.intersection(*sets) if len(sets) > 1 else set()
    labels = {}
    for rec in records:
        parts = [o for o in rec.overrides if o not in common] or rec.overrides
        labels[rec.job] = " ".join(parts) if parts else f"job {rec.job}"
    return labels


def write_markdown(records: list[JobRecord], path: Path, sweep_dir: Path) -> Path:
    counts: dict[str, int] = {}
    for rec in records:
        counts[rec.status] = counts.get(rec.status, 0) + 1
    monitors = {(r.monitor, r.mode) for r in records}
    one_monitor = len(monitors) == 1
    mon_name = next(iter(monitors))[0] if one_monitor else "monitored"

    lines = [f"# Sweep summary — {run_name(sweep_dir)}", "", f"Sweep dir: `{sweep_dir}`", ""]
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    lines.append(f"{len(records)} job(s)" + (f": {status_text}." if records else "."))
    if one_monitor and records:
        lines.append(f"Monitored metric: `{mon_name}` ({next(iter(monitors))[1]}).")
    lines.append("")
    header = ["job", "overrides", "status", "rounds"]
    if not one_monitor:
        header.append("monitor")
    header += [
        f"final {mon_name}",
        "best (round)",
        "central acc",
        "central loss",
        "fed acc",
        "fed loss",
        "train acc",
        "train loss",
        "wall time",
        "resumed from",
        "best ckpt",
        "last ckpt",
    ]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for rec in records:
        rounds = _fmt(rec.rounds_done)
        if rec.num_rounds is not None:
            rounds += f"/{rec.num_rounds}"
        best = _fmt(rec.best_monitored)
        if rec.best_round is not None:
            best += f" ({rec.best_round})"
        status = f"**{rec.status}**" if rec.status == "failed" else rec.status
        cells = [str(rec.job), f"`{_md(' '.join(rec.overrides))}`" if rec.overrides else "—", status, rounds]
        if not one_monitor:
            cells.append(f"{rec.monitor} ({rec.mode})")
        cells += [
            _fmt(rec.final_monitored),
            best,
            *(_fmt(rec.finals.get(m)) for m in REPORTED_FINALS),
            _fmt_duration(rec.wall_time_s),
            _md(_rel(rec.resumed_from, sweep_dir)),
            _md(_rel(rec.best_checkpoint, sweep_dir)),
            _md(_rel(rec.last_checkpoint, sweep_dir)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines += ["", "## Failed jobs", ""]
        for rec in failed:
            lines.append(f"- job {rec.job} (`{_md(' '.join(rec.overrides))}`): {_md(rec.error or '')}")
    lines += ["", f"![comparison]({COMPARISON_PNG})", ""]
    return atomic_write_text(path, "\n".join(lines))


def comparison_phase(records: list[JobRecord]) -> str:
    """``centralized`` if any job has centralized accuracy, else ``evaluate`` (federated)."""
    if any(M.series(r.rows, "centralized", "accuracy", finite_only=True)[0] for r in records):
        return "centralized"
    return "evaluate"


def plot_comparison(records: list[JobRecord], path: Path, title_name: str = "") -> Path:
    """Accuracy per round, one line per job: centralized if any job has it, else federated."""
    phase = comparison_phase(records)
    ylabel = f"{M.PHASES[phase]} accuracy"
    labels = varying_overrides(records)
    many = len(records) > 8
    fig = _figure(figsize=(9.0, 5.0) if many else (7.0, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for rec in records:
        xs, ys = M.series(rec.rows, phase, "accuracy", finite_only=True)
        if not xs:
            continue
        label = f"{rec.job}: {textwrap.shorten(labels[rec.job], width=48, placeholder=' …')}"
        if rec.status != "completed":
            label += f" ({rec.status})"
        ax.plot(
            xs,
            ys,
            label=label,
            linestyle="--" if rec.status == "failed" else "-",
            marker="o" if len(xs) <= 40 else None,
            markersize=3,
            linewidth=1.4,
        )
        drawn += 1
    title = f"{ylabel} per round" + (f" — {title_name}" if title_name else "")
    _decorate(
        ax, xlabel="round", ylabel="accuracy", title=title, empty=drawn == 0, empty_text="no accuracy recorded yet"
    )
    ax.set_ylabel(ylabel)
    if drawn:
        if many:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", ncols=1 if drawn <= 25 else 2)
        else:
            ax.legend(loc="best", fontsize="small")
    return save_figure(fig, path)
