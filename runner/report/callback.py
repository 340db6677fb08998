"""Hydra callback that keeps a sweep's summary up to date, failed jobs included.

Register it in the primary config::

    hydra:
      callbacks:
        sweep_summary:
          _target_: runner.report.callback.SweepSummaryCallback

Why ``on_job_end`` and not only ``on_multirun_end``: Hydra's basic sweeper accesses
every ``JobReturn.return_value`` after a batch, which re-raises the first failed
job's exception; ``on_multirun_end`` is then never called. So each job, when it
ends (in its own process: the main one with the basic launcher, a loky worker with
the joblib launcher), records Hydra's view of its outcome in ``hydra_job.json`` and
rebuilds the sweep summary under a file lock. ``on_multirun_end`` rebuilds it once
more when the sweep ends cleanly. Nothing here may fail a job: errors are logged as
warnings.

Only multirun jobs are touched; single runs are left alone.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.report._atomic import atomic_write_text
from runner.report.summary import HYDRA_JOB_FILE

log = logging.getLogger(__name__)


def _is_multirun(config: DictConfig) -> bool:
    mode = OmegaConf.select(config, "hydra.mode", default=None)
    return mode is not None and getattr(mode, "name", str(mode)).upper().endswith("MULTIRUN")


def _job_dir(config: DictConfig) -> Path | None:
    out = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
    return Path(str(out)) if out else None


def _sweep_dir_of_job(config: DictConfig, job_dir: Path) -> Path:
    """The sweep dir, from the job's absolute output dir minus ``hydra.sweep.subdir``.

    ``hydra.sweep.dir`` itself may be relative, and with ``hydra.job.chdir=True`` the
    cwd at ``on_job_end`` is the job dir, so it is not resolved against the cwd.
    """
    depth = 1
    try:
        subdir = OmegaConf.select(config, "hydra.sweep.subdir", default=None)
        if subdir is not None:
            depth = max(1, len(Path(str(subdir)).parts))
    except Exception:  # an interpolation that does not resolve here
        pass
    return job_dir.parents[depth - 1]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class SweepSummaryCallback(Callback):
    """Rebuild ``summary.csv``/``summary.md``/``comparison.png`` as jobs end.

    ``plot_jobs`` (default true): also (re)draw a job's own plots at its end when they
    are missing or older than its metrics (e.g. the job died before drawing them).
    """

    def __init__(self, plot_jobs: bool = True, **kwargs: Any) -> None:
        self.plot_jobs = bool(plot_jobs)
        if kwargs:
            log.debug("SweepSummaryCallback: ignoring unknown options %s", sorted(kwargs))

    # -- per job (job's process) ------------------------------------------------------

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        try:
            job_dir = _job_dir(config)
            if job_dir is not None:
                self._write_job_state(job_dir, {"status": "running"})
        except Exception as e:  # never fail a job over the report
            log.warning("sweep summary: could not mark job as running: %s", _one_line(e))

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        try:
            job_dir = _job_dir(config)
            if job_dir is None:
                return
            state: dict[str, Any] = {"status": "unknown"}
            status = getattr(getattr(job_return, "status", None), "name", None)
            if status == "COMPLETED":
                state = {"status": "completed"}
            elif status == "FAILED":
                error = None
                try:
                    _ = job_return.return_value  # re-raises the job's exception
                except Exception as exc:
                    error = _one_line(exc)
                state = {"status": "failed", "error": error}
            self._write_job_state(job_dir, state)
            if self.plot_jobs:
                self._maybe_plot(job_dir)
            from runner.report.summary import summarize_sweep

            path = summarize_sweep(_sweep_dir_of_job(config, job_dir))
            if state["status"] == "failed":
                # on_multirun_end will not run (the sweeper re-raises): say where it is
                log.info("Sweep summary (this job marked failed): %s", path)
        except Exception as e:
            log.warning("sweep summary: could not update after job: %s", _one_line(e))

    # -- whole sweep (launching process) ----------------------------------------------

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            from runner.report.summary import summarize_sweep

            sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
            if not sweep_dir.is_dir():
                return
            path = summarize_sweep(sweep_dir)
            log.info("Sweep summary: %s (and %s)", path, path.with_suffix(".md").name)
        except Exception as e:
            log.warning("sweep summary: could not write it at the end of the sweep: %s", _one_line(e))

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _write_job_state(job_dir: Path, state: dict[str, Any]) -> None:
        import json

        state = {**state, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        atomic_write_text(job_dir / HYDRA_JOB_FILE, json.dumps(state, indent=1) + "\n")

    @staticmethod
    def _maybe_plot(job_dir: Path) -> None:
        from runner.report.metrics import metrics_path
        from runner.report.plots import PLOTS_DIR, PLOTTED_METRICS, plot_run

        mpath = metrics_path(job_dir)
        if not mpath.is_file():
            return
        mtime = mpath.stat().st_mtime
        for metric in PLOTTED_METRICS:
            png = job_dir / PLOTS_DIR / f"{metric}.png"
            if not png.is_file() or png.stat().st_mtime < mtime:
                plot_run(job_dir)
                return
