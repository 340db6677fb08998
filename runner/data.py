"""The run's data: the dataset (``dataset`` node), the server's test split and the clients'
partitions (``partitioner`` node), cached per process.

The driver and every client process compute the same split and partitions from the
resolved config (deterministic loaders, seeded partitioners), so a client only ever needs
its partition id. Partitioning is flwr-datasets': its partitioner runs over an in-memory
``datasets.Dataset`` of the pool's labels, sample ids and any extra columns the dataset
provides. Loader and partitioner errors become one line naming the config key.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from runner.build import build
from runner.config import ConfigError
from runner.datasets import ArrayData, DatasetNotFound

log = logging.getLogger("runner")

__all__ = [
    "Partitions",
    "Split",
    "client_split",
    "load_data",
    "partitions",
    "publish_partitions",
    "server_test_split",
]


@dataclass(frozen=True)
class Split:
    """Samples ``idx`` (sample ids) of a dataset: what a task trains or evaluates on.

    ``rows``: where those samples sit in ``data`` when ``data`` holds only some rows of the
    dataset (a client process reads only its own partition, :mod:`runner.partition_cache`);
    None when ``data`` is the whole dataset and ``idx`` indexes it directly. Use ``x``, ``y``
    and ``batches`` rather than indexing ``data`` with ``idx``.
    """

    data: ArrayData
    idx: np.ndarray
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def _rows(self) -> np.ndarray:
        return self.idx if self.rows is None else self.rows

    @property
    def x(self) -> np.ndarray:
        return self.data.x[self._rows]

    @property
    def y(self) -> np.ndarray:
        return self.data.y[self._rows]

    def batches(self, batch_size: int, generator: Any = None, device: Any = None) -> Any:
        """Tensor batches ``(x, y)``; shuffled with ``generator`` (a ``torch.Generator``) if given."""
        import torch

        order = self._rows
        if generator is not None:
            order = order[torch.randperm(len(order), generator=generator).numpy()]
        for start in range(0, len(order), batch_size):
            sel = order[start : start + batch_size]
            xb, yb = torch.from_numpy(self.data.x[sel]), torch.from_numpy(self.data.y[sel])
            if device is not None and str(device) != "cpu":
                xb, yb = xb.to(device), yb.to(device)
            yield xb, yb


@dataclass(frozen=True)
class Partitions:
    data: ArrayData
    test_idx: np.ndarray
    parts: tuple[np.ndarray, ...]
    notes: tuple[str, ...] = ()  # what flwr-datasets warned about (the driver logs them once)


def _key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


@lru_cache(maxsize=4)
def _load(key: str) -> ArrayData:
    cfg = json.loads(key)
    try:
        data = build(cfg, "dataset")
    except ConfigError:
        raise
    except DatasetNotFound:
        raise
    if type(data).__module__.split(".")[0] == "datasets":  # a datasets.Dataset: default column names
        from runner.datasets import from_hf

        try:
            data = from_hf(data)
        except ValueError as exc:
            raise ConfigError(
                "dataset", f"{cfg.get('_target_')} returned a datasets.Dataset: {exc}", show_value=False
            ) from None
    if not isinstance(data, ArrayData):
        raise ConfigError(
            "dataset",
            f"{cfg.get('_target_')} returned a {type(data).__name__}; a dataset loader returns "
            "runner.datasets.ArrayData (or a datasets.Dataset)",
            show_value=False,
        )
    _check_declared(data, cfg)
    return data


def load_data(dataset_cfg: dict[str, Any]) -> ArrayData:
    """The dataset of a config node (cached per process)."""
    return _load(_key(dataset_cfg))


def _check_declared(data: ArrayData, cfg: dict[str, Any]) -> None:
    """The shape the config declares (models interpolate it) must be the data's."""
    shape = cfg.get("input_shape")
    if shape is not None and [int(d) for d in shape] != data.input_shape:
        raise ConfigError(
            "dataset.input_shape",
            f"declares {list(shape)} but the loader returned samples of shape {data.input_shape}",
            show_value=False,
        )
    k = cfg.get("num_classes")
    if k is not None and len(data.y) and int(data.y.min()) >= 0 and int(data.y.max()) >= int(k):
        raise ConfigError(
            "dataset.num_classes", f"declares {k} classes but labels go up to {int(data.y.max())}", show_value=False
        )


def _split(data: ArrayData, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(test, pool) indices: the dataset's own test split, or a stratified one."""
    idx = np.arange(len(data.y))
    if data.test_idx is not None:
        test = np.sort(np.asarray(data.test_idx, dtype=np.int64))
        return test, np.setdiff1d(idx, test)
    from sklearn.model_selection import train_test_split

    _, counts = np.unique(data.y, return_counts=True)
    stratify = data.y if counts.min() >= 2 else None
    pool, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    return np.sort(test), np.sort(pool)


def _partition_error(cfg: dict[str, Any], exc: BaseException) -> ConfigError:
    """One line naming the partitioner key the message is about (or the partitioner)."""
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    target = str(cfg.get("_target_", "")).rsplit(".", 1)[-1]
    for key in cfg:
        if not key.startswith("_") and re.search(rf"\b{re.escape(key)}\b", msg):
            name = "num_clients" if key == "num_partitions" else f"partitioner.{key}"  # set from num_clients
            return ConfigError(name, f"{target}: {msg}", show_value=False)
    if "max number of attempts" in msg and "alpha" in cfg:
        return ConfigError(
            "partitioner.alpha",
            f"{target} could not give every client min_partition_size={cfg.get('min_partition_size')} samples "
            f"with alpha={cfg.get('alpha')} ({msg}); use a larger alpha, a smaller min_partition_size or fewer clients",
            show_value=False,
        )
    return ConfigError("partitioner", f"{target}: {msg}", show_value=False)


@lru_cache(maxsize=4)
def _partitions(key: str) -> Partitions:
    cfg = json.loads(key)
    data = _load(_key(cfg["dataset"]))
    test, pool = _split(data, cfg["test_fraction"], cfg["seed"])
    n = int(cfg["num_clients"])
    if n > len(pool):
        raise ConfigError(
            "num_clients", f"{n} clients but the dataset leaves {len(pool)} samples to partition", show_value=False
        )
    from datasets import Dataset

    columns = {"label": data.y[pool].tolist(), "sample_id": pool.tolist()}
    for name, col in data.columns.items():
        columns[name] = np.asarray(col)[pool].tolist()
    table = Dataset.from_dict(columns)
    part_cfg = cfg["partitioner"]
    partitioner = build(part_cfg, "partitioner")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            partitioner.dataset = table
            count = partitioner.num_partitions
            if count != n:
                raise ConfigError(
                    "num_clients",
                    f"the partitioner makes {count} partitions but num_clients={n}; set num_clients={count}",
                    show_value=False,
                )
            parts = tuple(np.asarray(partitioner.load_partition(i)["sample_id"], dtype=np.int64) for i in range(n))
        except ConfigError:
            raise
        except Exception as exc:  # flwr-datasets raises ValueError/KeyError/... on impossible settings
            raise _partition_error(part_cfg, exc) from None
    # flwr-datasets warns once per attempt; a working partition shows each distinct note once
    notes = tuple(sorted({str(w.message).splitlines()[0] for w in caught if issubclass(w.category, UserWarning)}))
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ConfigError(
            "partitioner",
            f"client(s) {empty[:5]} got no samples; use fewer clients or other partitioner settings",
            show_value=False,
        )
    return Partitions(data, test, parts, notes)


def partition_key(run_cfg: dict[str, Any]) -> str:
    return _key(
        {
            "dataset": run_cfg["dataset"],
            "partitioner": run_cfg["partitioner"],
            "num_clients": run_cfg["num_clients"],
            "seed": run_cfg["seed"],
            "test_fraction": run_cfg["eval"]["test_fraction"],
        }
    )


def partitions(run_cfg: dict[str, Any]) -> Partitions:
    """The run's split. Where the data has a fingerprint (:mod:`runner.partition_cache`),
    the split an earlier process computed for the same data is read back (checked), and
    one computed here is kept for the next: no loader or partitioner library is imported
    when it is found."""
    from runner import partition_cache

    key = partition_key(run_cfg)
    store = partition_cache.store_entry(run_cfg, key)
    return _partitions_via(key, None if store is None else str(store))


@lru_cache(maxsize=4)
def _partitions_via(key: str, store: str | None) -> Partitions:
    from runner import partition_cache

    if store is not None:
        got = partition_cache.read_partitions(Path(store), key)
        if got is not None:
            log.info("data: the split of an earlier run on the same data, from %s", Path(store).parent)
            return Partitions(*got)
    p = _partitions(key)
    if store is not None:
        partition_cache.write_partitions(Path(store), key, p.data, p.test_idx, p.parts, p.notes)
    return p


def client_split(run_cfg: dict[str, Any], partition_id: int) -> tuple[Split, Split]:
    """(train, validation) of one client's partition; the validation part never changes.

    In a client process the rows come from the partition cache the server side published
    (:mod:`runner.partition_cache`): no loader, no partitioner. Without an entry the process
    partitions itself, and leaves an entry for its next process."""
    from runner import partition_cache

    key = partition_key(run_cfg)
    entry = partition_cache.client_entry(run_cfg, key, partition_id)
    cached = partition_cache.read_entry(entry, key) if entry is not None else None
    if cached is not None:
        data, ids = cached
    else:
        p = partitions(run_cfg)
        data, ids = p.data, p.parts[partition_id]
        if entry is not None:
            partition_cache.write_own(entry, key, data, ids)
    rng = np.random.default_rng([run_cfg["seed"], partition_id, 7])
    perm = rng.permutation(len(ids))
    frac = float(run_cfg["eval"]["val_fraction"])
    n_val = int(round(len(ids) * frac))
    if len(ids) > 1:
        n_val = min(max(n_val, 1 if frac > 0 else 0), len(ids) - 1)
    # the same samples in the same order either way: positions into the client's own rows,
    # or sample ids into the whole dataset
    rows = perm if cached is not None else ids[perm]
    train_rows, val_rows = rows[n_val:], rows[:n_val]
    if cached is None:
        return Split(data, train_rows), Split(data, val_rows)
    return Split(data, ids[train_rows], train_rows), Split(data, ids[val_rows], val_rows)


def publish_partitions(run_cfg: dict[str, Any]) -> dict[str, Any]:
    """Server side, before round 1: every client's rows into the partition cache; returns
    the ``data_cache`` node to send to the clients (with this process's scope)."""
    from runner import partition_cache

    p = partitions(run_cfg)
    return partition_cache.publish(run_cfg, partition_key(run_cfg), p.data, p.parts)


def server_test_split(run_cfg: dict[str, Any]) -> Split:
    """The server's held-out test split (centralized evaluation)."""
    p = partitions(run_cfg)
    return Split(p.data, p.test_idx)
