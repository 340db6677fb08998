"""Typed access to the records of a Flower message (``RecordDict`` values are a union)."""

from __future__ import annotations

from math import prod
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

__all__ = ["array_numpy", "arrays_of", "config_of", "torch_state_dict"]

_NPY_MAGIC = b"\x93NUMPY"


def arrays_of(content: RecordDict, key: str) -> ArrayRecord:
    record = content[key]
    if not isinstance(record, ArrayRecord):
        raise TypeError(f"message record {key!r} is a {type(record).__name__}, expected an ArrayRecord")
    return record


def config_of(content: RecordDict, key: str = "config") -> ConfigRecord:
    record = content[key]
    if not isinstance(record, ConfigRecord):
        raise TypeError(f"message record {key!r} is a {type(record).__name__}, expected a ConfigRecord")
    return record


def array_numpy(array: Array) -> np.ndarray:
    """``Array.numpy()`` without numpy's header parser.

    ``np.load`` reads each array's header with ``ast.literal_eval`` (~0.1 ms an array, paid
    for every array of every message a client process handles); the Array's own dtype and
    shape fields say the same, so only the data's offset is read from the header, after
    checking that the header states that dtype, that shape and C order. Anything else (another
    serialization, Fortran order, another byte order, a size that does not match) takes
    Flower's own path. Never unpickles: object dtypes take Flower's path, which refuses them."""
    data = array.data
    if array.stype != "numpy.ndarray" or data[:6] != _NPY_MAGIC:
        return array.numpy()
    major = data[6]
    if major == 1:
        start, hlen = 10, int.from_bytes(data[8:10], "little")
    elif major in (2, 3):
        start, hlen = 12, int.from_bytes(data[8:12], "little")
    else:
        return array.numpy()
    try:
        dtype = np.dtype(array.dtype)
    except TypeError:
        return array.numpy()
    shape = tuple(int(d) for d in array.shape)
    header = data[start : start + hlen]
    stated = (f"'descr': '{dtype.str}'", "'fortran_order': False", f"'shape': {shape!r}")
    count, offset = prod(shape), start + hlen
    if dtype.hasobject or any(s.encode() not in header for s in stated) or len(data) - offset != count * dtype.itemsize:
        return array.numpy()
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()


def torch_state_dict(record: ArrayRecord) -> dict[str, Any]:
    """``record.to_torch_state_dict()`` through :func:`array_numpy` (same tensors, same order)."""
    import torch

    return {k: torch.from_numpy(array_numpy(a)) for k, a in record.items()}
