"""The dataset: scikit-learn's bundled breast-cancer table (569 rows, 30 features, offline)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from runner.datasets import ArrayData


def breast_cancer(num_classes: int = 2, input_shape: Sequence[int] = (30,), standardize: bool = True) -> ArrayData:
    """Features as float32 (standardized per column), labels 0 = malignant, 1 = benign."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    x = bunch.data.astype(np.float32)
    if standardize:  # a public, fixed transform: every client applies the same one
        x = (x - x.mean(axis=0)) / x.std(axis=0)
    return ArrayData(x.astype(np.float32), bunch.target.astype(np.int64))
