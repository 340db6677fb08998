"""Datasets (conf/dataset/) and their federated partitions (conf/partitioner/).

Images are held as one float32 array per process and partitions as index arrays, so a
Ray worker that serves many virtual clients loads the data once. Partitioning is done by
flwr-datasets partitioners over an in-memory ``datasets.Dataset`` of labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np


class DatasetNotFound(FileNotFoundError):
    """Local dataset files are missing; the message says where to put them."""


@dataclass(frozen=True)
class ArrayDataset:
    x: np.ndarray  # float32, N x C x H x W, normalised
    y: np.ndarray  # int64, N
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class Split:
    """Server test split and the pool that is partitioned among clients."""

    data: ArrayDataset
    test_idx: np.ndarray
    pool_idx: np.ndarray


# Channels, image size and classes per dataset, so a model can be built without data.
DATASET_META: dict[str, dict[str, int]] = {
    "digits": {"channels": 1, "size": 8, "num_classes": 10},
    "mnist": {"channels": 1, "size": 28, "num_classes": 10},
    "cifar10": {"channels": 3, "size": 32, "num_classes": 10},
}


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images N x 8 x 8 float64, target) exactly as ``sklearn.datasets.load_digits``.

    Reads scikit-learn's bundled ``digits.csv.gz`` the way ``load_digits`` does, without
    importing scikit-learn (about a second per process, and every Ray worker is one).
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path is None or not path.is_file():  # unusual install: let scikit-learn find it
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    import gzip

    with open(path, "rb") as raw, gzip.open(raw, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _load_digits() -> ArrayDataset:
    images, target = _digits_arrays()
    x = (images.astype(np.float32) / 16.0)[:, None, :, :]
    x = (x - 0.5) / 0.5
    return ArrayDataset(x, target.astype(np.int64), 10)


_WHERE = {
    "mnist": "{root}/MNIST/raw/ (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])",
    "cifar10": "{root}/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta; "
    "the extracted cifar-10-python.tar.gz)",
}


def _load_torchvision(name: str, root: str, download: bool) -> ArrayDataset:
    from torchvision import datasets as tvd

    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10}[name]
    try:
        parts = [cls(root=root, train=train, download=download) for train in (True, False)]
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted..."
        where = _WHERE[name].format(root=str(Path(root).resolve()))
        raise DatasetNotFound(
            f"dataset {name}: files not found under {root!r}; put them in {where}, "
            f"or set dataset.root=<dir> (or RUNNER_DATA) ({exc})"
        ) from None
    xs, ys = [], []
    for part in parts:
        data = np.asarray(part.data)
        if data.ndim == 3:  # MNIST: N x 28 x 28 uint8
            data = data[:, None, :, :]
        else:  # CIFAR: N x 32 x 32 x 3 uint8
            data = data.transpose(0, 3, 1, 2)
        xs.append(data)
        ys.append(np.asarray(part.targets, dtype=np.int64))
    x = (np.concatenate(xs).astype(np.float32) / 255.0 - 0.5) / 0.5
    return ArrayDataset(x, np.concatenate(ys), 10)


def _dataset_key(cfg: dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True)


@lru_cache(maxsize=4)
def _load_cached(key: str) -> ArrayDataset:
    cfg = json.loads(key)
    if cfg["name"] == "digits":
        return _load_digits()
    return _load_torchvision(cfg["name"], cfg.get("root", "data"), bool(cfg.get("download")))


def load_dataset(dataset_cfg: dict[str, Any]) -> ArrayDataset:
    return _load_cached(_dataset_key(dataset_cfg))


def split_dataset(data: ArrayDataset, test_fraction: float, seed: int) -> Split:
    """Stratified server test split; the rest is the pool that clients share."""
    fast = _stratified_split(data.y, test_fraction, seed)
    if fast is not None:
        pool, test = fast
        return Split(data, test, pool)
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data.y))
    pool, test = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=data.y
    )
    return Split(data, np.sort(test), np.sort(pool))


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """``sklearn.utils.extmath._approximate_mode``, step for step (same draws from ``rng``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        values = np.sort(np.unique(remainder))[::-1]
        for value in values:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _stratified_split(y: np.ndarray, test_fraction: Any, seed: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Sorted (pool, test) of ``train_test_split(arange(len(y)), test_size=test_fraction,
    random_state=seed, stratify=y)``, without importing scikit-learn.

    The same steps as scikit-learn's ``StratifiedShuffleSplit`` (same RandomState draws in
    the same order; the final shuffles only reorder, and both sides are sorted anyway).
    Returns None wherever scikit-learn would raise or take another path, so the caller
    lets scikit-learn run and report it exactly as before.
    """
    if not isinstance(test_fraction, float) or not 0.0 < test_fraction < 1.0:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**32:
        return None
    n_samples = len(y)
    n_test = math.ceil(test_fraction * n_samples)
    n_train = n_samples - n_test
    if y.ndim != 1 or n_train <= 0 or n_test <= 0:
        return None
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    n_classes = class_counts.shape[0]
    if np.min(class_counts) < 2 or n_train < n_classes or n_test < n_classes:
        return None
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(int(seed))
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for i in range(n_classes):
        permutation = rng.permutation(class_counts[i])
        perm_indices_class_i = class_indices[i].take(permutation, mode="clip")
        train.append(perm_indices_class_i[: n_i[i]])
        test.append(perm_indices_class_i[n_i[i] : n_i[i] + t_i[i]])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def build_partitioner(part_cfg: dict[str, Any], num_partitions: int, seed: int) -> Any:
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    name = part_cfg["name"]
    if name == "iid":
        return IidPartitioner(num_partitions=num_partitions)
    if name == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(part_cfg["alpha"]),
            min_partition_size=int(part_cfg.get("min_partition_size", 5)),
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    if name == "pathological":
        return PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=int(part_cfg["classes_per_client"]),
            class_assignment_mode=part_cfg.get("class_assignment_mode", "first-deterministic"),
            shuffle=True,
            seed=seed,
        )
    raise ValueError(f"partitioner.name: unknown partitioner {name!r}")


def iid_partitions(pool_idx: np.ndarray, num_partitions: int) -> tuple[np.ndarray, ...]:
    """flwr-datasets' ``IidPartitioner`` over ``pool_idx``, without building a HF dataset.

    ``IidPartitioner.load_partition(i)`` is ``Dataset.shard(num_partitions, i,
    contiguous=True)``: the i-th of ``num_partitions`` contiguous runs, the first
    ``len % num_partitions`` one longer. Same indices, without importing ``datasets`` and
    ``flwr_datasets`` (about a second per process: the driver and every Ray worker).
    """
    if num_partitions <= 0:
        raise ValueError("The number of partitions must be greater than zero.")
    n = len(pool_idx)
    if 0 < n < num_partitions:  # shard n would start past the end: what datasets raises
        raise IndexError(f"Index {n} out of range for dataset of size {n}.")
    div, mod = divmod(n, num_partitions)
    parts = []
    for i in range(num_partitions):
        start = div * i + min(i, mod)
        end = start + div + (1 if i < mod else 0)
        parts.append(np.array(pool_idx[start:end], dtype=np.int64))
    return tuple(parts)


@lru_cache(maxsize=4)
def _partitions_cached(key: str) -> tuple[Split, tuple[np.ndarray, ...]]:
    cfg = json.loads(key)
    split = split_dataset(load_dataset(cfg["dataset"]), cfg["test_fraction"], cfg["seed"])
    if cfg["partitioner"]["name"] == "iid":
        return split, iid_partitions(split.pool_idx, cfg["num_clients"])
    from datasets import Dataset

    labels = Dataset.from_dict(
        {"label": split.data.y[split.pool_idx].tolist(), "idx": split.pool_idx.tolist()}
    )
    partitioner = build_partitioner(cfg["partitioner"], cfg["num_clients"], cfg["seed"])
    partitioner.dataset = labels
    parts = tuple(
        np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64)
        for i in range(cfg["num_clients"])
    )
    return split, parts


def partition_key(run_cfg: dict[str, Any]) -> str:
    return json.dumps(
        {
            "dataset": run_cfg["dataset"],
            "partitioner": run_cfg["partitioner"],
            "num_clients": run_cfg["num_clients"],
            "seed": run_cfg["seed"],
            "test_fraction": run_cfg["eval"]["test_fraction"],
        },
        sort_keys=True,
    )


def client_split(run_cfg: dict[str, Any], partition_id: int) -> tuple[ArrayDataset, np.ndarray, np.ndarray]:
    """(data, train indices, validation indices) of one client's partition."""
    split, parts = _partitions_cached(partition_key(run_cfg))
    idx = parts[partition_id]
    # Fixed per-client shuffle, independent of the round: the val split never changes.
    rng = np.random.default_rng([run_cfg["seed"], partition_id, 7])
    idx = idx[rng.permutation(len(idx))]
    n_val = int(round(len(idx) * float(run_cfg["eval"]["val_fraction"])))
    if len(idx) > 1:
        n_val = min(max(n_val, 1 if run_cfg["eval"]["val_fraction"] > 0 else 0), len(idx) - 1)
    return split.data, idx[n_val:], idx[:n_val]


def server_test_split(run_cfg: dict[str, Any]) -> tuple[ArrayDataset, np.ndarray]:
    split, _ = _partitions_cached(partition_key(run_cfg))  # builds the partitions: a bad
    return split.data, split.test_idx  # partitioner config fails here, on the driver


def partition_sizes(run_cfg: dict[str, Any]) -> list[int]:
    _, parts = _partitions_cached(partition_key(run_cfg))
    return [len(p) for p in parts]
