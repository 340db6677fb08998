"""Typed access to the records of a Flower message (``RecordDict`` values are a union)."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

__all__ = ["arrays_of", "config_of"]


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
