"""Logging of Flower inside the runner: its INFO chatter to the log file, not the console."""

from __future__ import annotations

import logging


def tame_flower_logging() -> None:
    """Flower sets its logger to DEBUG and adds a console handler when imported (after
    Hydra configured logging): keep its console output to warnings, its file output to INFO."""
    from flwr.supercore import logger as flwr_logger

    flwr_logger.FLOWER_LOGGER.setLevel(logging.INFO)
    flwr_logger.console_handler.setLevel(logging.WARNING)
    if not any(isinstance(f, _KnownDeprecation) for f in flwr_logger.console_handler.filters):
        flwr_logger.console_handler.addFilter(_KnownDeprecation())


class _KnownDeprecation(logging.Filter):
    """``run_simulation`` is deprecated upstream; the runner knows (runner/engine.py keeps
    the call in one place) and the log file still records it, so keep it off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "`run_simulation` function is deprecated" not in record.getMessage()
