"""Partitioner factories for conf/partitioner/ where flwr-datasets needs the data's size.

Every other partitioner option targets a ``flwr_datasets.partitioner`` class directly. The
partitioning itself is always flwr-datasets'; these only defer a constructor argument that
depends on how many samples the pool holds.
"""

from __future__ import annotations

from typing import Any

from flwr_datasets.partitioner import InnerDirichletPartitioner, Partitioner

__all__ = ["EqualSizeInnerDirichlet", "equal_sizes"]


def equal_sizes(total: int, parts: int) -> list[int]:
    """``parts`` sizes that differ by at most one and sum to ``total``."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


class EqualSizeInnerDirichlet(Partitioner):
    """``InnerDirichletPartitioner`` with equal ``partition_sizes`` that sum to the pool."""

    def __init__(
        self, num_partitions: int, partition_by: str, alpha: Any, shuffle: bool = True, seed: int | None = 42
    ) -> None:
        super().__init__()
        if num_partitions < 1:
            raise ValueError("num_partitions must be >= 1")
        self._n = int(num_partitions)
        self._kwargs = {"partition_by": partition_by, "alpha": alpha, "shuffle": shuffle, "seed": seed}
        self._inner: InnerDirichletPartitioner | None = None

    @property
    def num_partitions(self) -> int:
        return self._n

    def load_partition(self, partition_id: int) -> Any:
        if self._inner is None:
            inner = InnerDirichletPartitioner(partition_sizes=equal_sizes(len(self.dataset), self._n), **self._kwargs)
            inner.dataset = self.dataset
            self._inner = inner
        return self._inner.load_partition(partition_id)
