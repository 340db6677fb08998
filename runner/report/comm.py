"""What one round cost and how its clients spread: payload bytes of messages, and the
distribution of each client metric across the clients that reported it.

Bytes are *payload* bytes, counted the same way for every record of a message, whatever
record names a strategy or client algorithm adds (SCAFFOLD's control variates, client
state, personalized layers):

* an ``ArrayRecord``: for each array, elements x item size (the tensor data, not its
  serialization framing);
* a ``ConfigRecord`` / ``MetricRecord``: for each value, a string its UTF-8 length, bytes
  their length, a bool 1, an int or float 8; a list the sum of its items.

Record and key names, message metadata and transport framing are not counted, nor are the
values under ``skip`` keys: the round loop skips the run-config JSON string it puts in every
message (``runner.client_app.RUN_CONFIG_KEY``). That string exists only because simulated
clients are stateless; it carries settings that never reach training (resume, logger,
stop_after_round), so counting it would make a resumed run's bytes differ from an
uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np

#: Statistics of a metric across the clients of one round: ``<metric>_client_<stat>``.
CLIENT_STATS: tuple[str, ...] = ("min", "p10", "p50", "p90", "max", "std")
CLIENT_SUFFIXES: tuple[str, ...] = tuple(f"_client_{s}" for s in CLIENT_STATS)
BYTES_KEYS: tuple[str, str] = ("bytes_down", "bytes_up")


def value_bytes(value: Any) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value)
    raise TypeError(f"cannot count the bytes of a record value of type {type(value).__name__}")


def array_bytes(array: Any) -> int:
    """Tensor bytes of a Flower ``Array`` (elements x item size)."""
    return int(np.prod(array.shape, dtype=np.int64)) * np.dtype(array.dtype).itemsize


def record_bytes(record: Any, skip: Collection[str] = ()) -> int:
    from flwr.app import ArrayRecord

    if isinstance(record, ArrayRecord):
        return sum(array_bytes(a) for a in record.values())
    return sum(value_bytes(v) for k, v in record.items() if k not in skip)


def message_bytes(message: Any, skip: Collection[str] = ()) -> int:
    """Payload bytes of every record of a message (0 for an error reply)."""
    if message.has_error():
        return 0
    return sum(record_bytes(r, skip) for r in message.content.values())


def total_bytes(messages: Iterable[Any], skip: Collection[str] = ()) -> int:
    return sum(message_bytes(m, skip) for m in messages)


def client_spread(per_client: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """For every metric any client reported: min, p10, p50, p90, max (NumPy's linear
    percentiles) and population std (ddof=0) over the clients that reported it."""
    names = sorted({k for values in per_client.values() for k in values})
    out: dict[str, float] = {}
    for name in names:
        xs = np.asarray([float(v[name]) for _, v in sorted(per_client.items()) if name in v], dtype=np.float64)
        if xs.size == 0:
            continue
        p10, p50, p90 = np.percentile(xs, [10, 50, 90])
        stats = (xs.min(), p10, p50, p90, xs.max(), xs.std())
        out.update({f"{name}_client_{s}": float(v) for s, v in zip(CLIENT_STATS, stats, strict=True)})
    return out


def is_spread_key(key: str) -> bool:
    return key.endswith(CLIENT_SUFFIXES)
