"""Reports of runs and sweeps: the metrics reader (:mod:`runner.report.metrics`), per-run
plots (:mod:`~runner.report.plots`), the sweep summary (:mod:`~runner.report.summary`) and its
Hydra callback (:mod:`~runner.report.callback`), round progress (:mod:`~runner.report.progress`).

Import the submodule you need; nothing is imported here, so the round loop importing
``runner.report.progress`` does not pay for matplotlib.
"""
