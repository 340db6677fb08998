"""Small datasets for tests, loadable by ``_target_`` (``tests.fixture_data.<name>``)."""

from __future__ import annotations

import numpy as np

from runner.datasets import ArrayData, digits


def digits_with_writers(
    num_writers: int = 10, num_classes: int = 10, input_shape: list[int] | None = None
) -> ArrayData:
    """Digits plus a ``client_id`` column (sample i written by writer i % num_writers)."""
    data = digits()
    writers = np.arange(len(data.y)) % num_writers
    return ArrayData(data.x, data.y, {"client_id": writers})
