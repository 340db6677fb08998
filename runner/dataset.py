"""Datasets (conf/dataset/) and their federated partitions (conf/partitioner/).

Images are held as one float32 array per process and partitions as index arrays, so a
Ray worker that serves many virtual clients loads the data once. Partitioning is done by
flwr-datasets partitioners over an in-memory ``datasets.Dataset`` of labels.
"""

from __future__ import annotations

import json
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


def _load_digits() -> ArrayDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    x = (x - 0.5) / 0.5
    return ArrayDataset(x, bunch.target.astype(np.int64), 10)


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
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(data.y))
    pool, test = train_test_split(
        idx, test_size=test_fraction, random_state=seed, stratify=data.y
    )
    return Split(data, np.sort(test), np.sort(pool))


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


@lru_cache(maxsize=4)
def _partitions_cached(key: str) -> tuple[Split, tuple[np.ndarray, ...]]:
    from datasets import Dataset

    cfg = json.loads(key)
    split = split_dataset(load_dataset(cfg["dataset"]), cfg["test_fraction"], cfg["seed"])
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
    split, _ = _partitions_cached(partition_key(run_cfg))
    return split.data, split.test_idx


def partition_sizes(run_cfg: dict[str, Any]) -> list[int]:
    _, parts = _partitions_cached(partition_key(run_cfg))
    return [len(p) for p in parts]
