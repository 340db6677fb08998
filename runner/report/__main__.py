"""Rebuild reports from files on disk.

python -m runner.report multirun/2026-11-24/10-00-00     # sweep: summary, aggregate + job plots
python -m runner.report outputs/2026-11-24/10-00-00      # one run: its plots
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runner.report.plots import plot_run
from runner.report.summary import SUMMARY_MD, is_run_dir, is_sweep_dir, job_dirs, summarize_sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Rebuild a sweep's summary (summary.csv, summary.md, comparison.png), its "
        "aggregate over seeds (aggregate.csv/.md/.tex/.png) and its jobs' plots, or one run's plots, "
        "from the files on disk.",
    )
    parser.add_argument("path", help="a multirun sweep dir or a single run dir")
    parser.add_argument(
        "--no-job-plots", action="store_true", help="for a sweep, only rebuild the summary, not each job's plots"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    path = Path(args.path)
    try:
        if not path.exists():
            return _fail(f"{path}: no such directory")
        if not path.is_dir():
            return _fail(f"{path}: not a directory (give a run dir or a sweep dir)")
        if is_run_dir(path):
            written = plot_run(path)
            print("plots: " + ", ".join(str(p) for p in written))
            return 0
        if is_sweep_dir(path):
            jobs = job_dirs(path)
            if not args.no_job_plots:
                for job in jobs:
                    if is_run_dir(job):
                        plot_run(job)
            csv_path = summarize_sweep(path)
            print(
                f"sweep summary of {len(jobs)} job(s): {csv_path}, "
                f"{csv_path.with_name(SUMMARY_MD)}, {csv_path.with_name('comparison.png')}; "
                f"aggregate over seeds: {csv_path.with_name('aggregate.csv')} (.md, .tex, .png)"
            )
            return 0
        return _fail(
            f"{path}: not a run dir (no metrics.jsonl, summary.json or "
            f".hydra/config.yaml) nor a sweep dir (no multirun.yaml or numbered "
            f"job dirs)"
        )
    except Exception as e:  # a one-line error, not a traceback
        return _fail(f"{path}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
