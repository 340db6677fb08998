"""Errors a user can fix: reported as one line, never as a traceback."""

from __future__ import annotations

from runner.checkpoint.formats import CheckpointError
from runner.config import ConfigError
from runner.datasets import DatasetNotFound

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, CheckpointError, DatasetNotFound)
