"""Built-in datasets (conf/dataset/) and the dataset protocol a user's own loader follows.

A dataset config is ``_target_`` + arguments. The target is called on the driver and in
each client process and returns an :class:`ArrayData` (or a ``datasets.Dataset``, see
:func:`from_hf`):

* ``x``: features, one row per sample (``float32`` images ``N x C x H x W``, tabular
  ``N x F``, token ids ``N x L``, ...), ``y``: labels (``int64`` classes);
* ``columns``: extra per-sample columns a partitioner may use (e.g. a ``writer_id`` for
  ``partitioner=natural_id``);
* ``test_idx``: optional, the dataset's own server test split (otherwise the runner holds
  out a stratified ``eval.test_fraction``).

The config also declares the data's shape for models to interpolate
(``input_shape: ${dataset.input_shape}``, ``num_classes: ${dataset.num_classes}``); the
runner checks those declarations against what the loader returned. The built-in loaders
take them as arguments too, so one YAML file says everything.

Loaders must be deterministic: every client process calls them and must see the same data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArrayData", "DatasetNotFound", "cifar10", "digits", "from_hf", "hf", "mnist"]


class DatasetNotFound(FileNotFoundError):
    """Local dataset files are missing; the message says where to put them."""


@dataclass(frozen=True)
class ArrayData:
    """What a dataset ``_target_`` returns (see the module docstring)."""

    x: np.ndarray
    y: np.ndarray
    columns: Mapping[str, np.ndarray] = field(default_factory=dict)
    test_idx: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"features have {len(self.x)} rows but labels {len(self.y)}")
        for name, col in self.columns.items():
            if len(col) != len(self.y):
                raise ValueError(f"column {name!r} has {len(col)} rows, labels {len(self.y)}")

    @property
    def input_shape(self) -> list[int]:
        return [int(d) for d in self.x.shape[1:]]

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self.y) else 0


def _normalise(x: np.ndarray, scale: float) -> np.ndarray:
    return ((x.astype(np.float32) / scale) - 0.5) / 0.5


def digits(num_classes: int = 10, input_shape: Sequence[int] = (1, 8, 8)) -> ArrayData:
    """scikit-learn's bundled 8x8 digits (1797 images, offline)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return ArrayData(_normalise(bunch.images, 16.0)[:, None, :, :], bunch.target.astype(np.int64))


_WHERE = {
    "mnist": "{root}/MNIST/raw/ (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
    "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])",
    "cifar10": "{root}/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta; "
    "the extracted cifar-10-python.tar.gz)",
}


def _torchvision(name: str, root: str, download: bool) -> ArrayData:
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
        data = data[:, None, :, :] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # MNIST | CIFAR HWC
        xs.append(data)
        ys.append(np.asarray(part.targets, dtype=np.int64))
    return ArrayData(_normalise(np.concatenate(xs), 255.0), np.concatenate(ys))


def mnist(
    root: str = "data", download: bool = False, num_classes: int = 10, input_shape: Sequence[int] = (1, 28, 28)
) -> ArrayData:
    """MNIST from torchvision's files under ``root`` (train + test pooled)."""
    return _torchvision("mnist", root, download)


def cifar10(
    root: str = "data", download: bool = False, num_classes: int = 10, input_shape: Sequence[int] = (3, 32, 32)
) -> ArrayData:
    """CIFAR-10 from torchvision's files under ``root`` (train + test pooled)."""
    return _torchvision("cifar10", root, download)


def hf(
    path: str,
    features: str | Sequence[str] = "image",
    label: str = "label",
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    split: str = "train",
    test_split: str | None = None,
    name: str | None = None,
    columns: Sequence[str] = (),
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
) -> ArrayData:
    """A Hugging Face dataset through ``datasets``.

    ``path``: a builder (``parquet``, ``csv``, ``json``, ``imagefolder``) with ``data_files``,
    a directory written by ``Dataset.save_to_disk`` (``load_from_disk``), or a Hub name (needs
    the local cache or the network). ``features``: one image column, or numeric columns.
    ``test_split``: a split used as the server's test set. ``columns``: extra columns kept
    for partitioners (e.g. a client-id column for ``partitioner=natural_id``).
    """
    import datasets as hfds

    def load(which: str) -> Any:
        local = Path(path).expanduser()
        if local.is_dir() and ((local / "dataset_info.json").exists() or (local / "dataset_dict.json").exists()):
            loaded = hfds.load_from_disk(str(local))
            return loaded[which] if isinstance(loaded, hfds.DatasetDict) else loaded
        files = data_files
        for f in _plain_files(files):
            if not Path(f).expanduser().exists():
                where = Path(f).expanduser().resolve()
                raise DatasetNotFound(f"dataset.data_files: {f} does not exist (looked for {where})")
        return hfds.load_dataset(path, name=name, data_files=files, split=which)

    try:
        train = load(split)
        test = load(test_split) if test_split else None
    except DatasetNotFound:
        raise
    except (FileNotFoundError, ConnectionError, OSError) as exc:
        offline = (
            " (HF_HUB_OFFLINE is set: only local files and the cache are used)"
            if os.environ.get("HF_HUB_OFFLINE")
            else ""
        )
        raise DatasetNotFound(f"dataset.path: cannot load {path!r}{offline}: {str(exc).splitlines()[0]}") from None
    parts = [train] if test is None else [train, test]
    for part in parts:
        _check_columns(part, features, label, columns)
    data = [from_hf(p, features=features, label=label, columns=columns) for p in parts]
    if test is None:
        return data[0]
    a, b = data
    cols = {k: np.concatenate([a.columns[k], b.columns[k]]) for k in a.columns}
    test_idx = np.arange(len(a.y), len(a.y) + len(b.y))
    return ArrayData(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]), cols, test_idx)


def _data_file_items(files: Any) -> list[Any]:
    """Every entry of ``data_files`` (a string, a list, or a split -> string/list mapping)."""
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, Mapping):
        return [f for v in files.values() for f in ([v] if isinstance(v, str) else list(v))]
    return list(files)


def _plain_files(files: Any) -> list[str]:
    """The data_files entries that name one file (globs and URLs are left to ``datasets``)."""
    items = _data_file_items(files)
    return [f for f in items if isinstance(f, str) and not any(ch in f for ch in "*?[") and "://" not in f]


def _check_columns(ds: Any, features: str | Sequence[str], label: str, columns: Sequence[str]) -> None:
    """A missing column is one line naming the key to change and the columns found."""
    from runner.config import ConfigError

    have = list(ds.column_names)
    names = [features] if isinstance(features, str) else list(features)
    for key, wanted in (("dataset.features", names), ("dataset.label", [label]), ("dataset.columns", list(columns))):
        missing = [c for c in wanted if c not in have]
        if missing:
            problem = f"column(s) {', '.join(missing)} not in the dataset; it has columns: {', '.join(have)}"
            raise ConfigError(key, problem, show_value=False)


def from_hf(
    ds: Any, features: str | Sequence[str] = "image", label: str = "label", columns: Sequence[str] = ()
) -> ArrayData:
    """An ``ArrayData`` from a ``datasets.Dataset``: one image column (scaled to [-1, 1],
    ``C x H x W``) or numeric feature columns (``float32``), integer labels."""
    names = [features] if isinstance(features, str) else list(features)
    missing = [c for c in [*names, label, *columns] if c not in ds.column_names]
    if missing:
        raise ValueError(f"columns {missing} not in the dataset (it has {ds.column_names})")
    if len(names) == 1 and _is_image(ds, names[0]):
        x = np.stack([_image_array(img) for img in ds[names[0]]])
        x = _normalise(x, 255.0)
    else:
        x = np.stack([np.asarray(ds[c], dtype=np.float32) for c in names], axis=1)
        if len(names) == 1 and x.ndim > 2:  # one column of vectors
            x = x[:, 0]
    y = np.asarray(ds[label])
    if y.dtype.kind not in "iub":
        raise ValueError(f"label column {label!r} must hold integer class ids, got dtype {y.dtype}")
    cols = {c: np.asarray(ds[c]) for c in columns}
    return ArrayData(np.ascontiguousarray(x), y.astype(np.int64), cols)


def _is_image(ds: Any, column: str) -> bool:
    feature = ds.features.get(column)
    return type(feature).__name__ == "Image"


def _image_array(img: Any) -> np.ndarray:
    arr = np.asarray(img)
    return arr[None, :, :] if arr.ndim == 2 else arr.transpose(2, 0, 1)
