"""Issue 20: a client process decodes the arrays of a message without numpy's header parser
(runner.records.array_numpy), giving exactly what Flower's ``Array.numpy()`` gives."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from runner.records import array_numpy, torch_state_dict

COMMON = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array(3.5),  # 0-d (a BatchNorm counter)
    np.zeros((0, 5)),
    np.arange(5, dtype=np.int64),
    np.array([True, False]),
    np.zeros((2, 1, 3), dtype=np.float16),
    np.arange(6, dtype=">f8").reshape(2, 3),  # big-endian: the header says so, and so does Array.dtype
]
UNUSUAL = [np.asfortranarray(np.ones((3, 2)))]


@pytest.mark.parametrize("a", COMMON + UNUSUAL, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_same_array_as_flower(a: np.ndarray):
    arr = Array.from_numpy_ndarray(a)
    got, want = array_numpy(arr), arr.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
    assert got.flags.writeable and got.flags.c_contiguous == want.flags.c_contiguous


def test_the_fast_path_skips_numpys_parser_and_unusual_arrays_take_flowers(monkeypatch: pytest.MonkeyPatch):
    common = [Array.from_numpy_ndarray(a) for a in COMMON]
    unusual = [Array.from_numpy_ndarray(a) for a in UNUSUAL]
    lying = Array.from_numpy_ndarray(np.arange(4, dtype=np.float32))
    lying.shape = (2, 2)  # fields that disagree with the header: Flower decides

    calls: list[int] = []
    flower = Array.numpy

    def counted(self: Array) -> np.ndarray:
        calls.append(1)
        return flower(self)

    monkeypatch.setattr(Array, "numpy", counted)
    for arr in common:
        array_numpy(arr)
    assert calls == []
    for arr in [*unusual, lying]:
        array_numpy(arr)
    assert len(calls) == len(unusual) + 1


def test_torch_state_dict_is_flowers():
    arrays = {"w": np.ones((2, 3), np.float32), "n": np.array(7)}
    record = ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in arrays.items()})
    ours, theirs = torch_state_dict(record), record.to_torch_state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].dtype == theirs[k].dtype and bool((ours[k] == theirs[k]).all()) for k in ours)
