"""Each client's rows, computed once and read by client processes (``data_cache`` in the config).

Loading a dataset and partitioning it needs scikit-learn (the default dataset), ``datasets``
and flwr-datasets: seconds of imports and work, and ~200 MB, in every process that does it.
Flower's deployment runtime starts a fresh ClientApp process per message, and every Ray
actor of a simulation did the same work once per run. So the server side, which partitions
anyway, writes each client's rows into a cache entry before round 1, and a client process
reads only its own entry: numpy arrays, no loader, no partitioner.

An entry is ``<dir>/<scope digest>/client-<pid>.npz``:

* ``<dir>``: ``data_cache.dir``, or ``<tmp>/fl-runner-<uid>/partitions`` (private, 0700);
* the scope digest is a sha256 of the partition key (dataset, partitioner, num_clients, seed,
  test fraction) and a scope: the *data fingerprint* when the runner knows what the dataset
  is read from (:func:`data_fingerprint`), else a token the server picks per process;
* the file holds the partition's rows ``x``, ``y`` in partition order, their sample ids and
  a JSON header with the full key and the sha256 of each array. Every read checks the key
  and the digests (``np.load(allow_pickle=False)``); an entry that fails either is ignored.

The data fingerprint covers the files the built-in loaders read (scikit-learn's bundled
digits file, the torchvision files under ``dataset.root``, ``dataset=hf``'s local
``path``/``data_files``: path, size and mtime of each), the versions of the libraries
that load and partition (numpy, scikit-learn, datasets, flwr-datasets, torchvision,
pyarrow) and the runner's own data code. With one, a scope outlives its process: the server
side keeps the whole split there too (``partitions.npz``), so the next run on the same data
starts without importing scikit-learn, ``datasets`` or flwr-datasets, and each node
(a SuperNode on another machine) partitions at most once for that data. A loader or
partitioner from the user's own code gets no fingerprint (the runner cannot know what it
reads): its scope is per process, as above.

A client that finds no entry (a remote Ray node, a SuperNode on another machine, a deleted
dir) partitions itself, as before, and writes its own entry, so each node does it at most
once per scope. The server removes per-process scopes when its process exits; scopes nobody
used for a day are removed by the next writer. Results are bit for bit the same with the
cache on or off (``data_cache.enabled=false``): the same rows in the same order reach the
task.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from runner.datasets import ArrayData

log = logging.getLogger("runner")

__all__ = [
    "cache_dir",
    "client_entry",
    "data_fingerprint",
    "publish",
    "read_entry",
    "read_partitions",
    "store_entry",
    "write_entry",
    "write_partitions",
]

FORMAT = 1
STALE_S = 24 * 3600.0  # a scope dir untouched this long belongs to a process that is gone
_ARRAYS = ("x", "y", "ids")
_TOKENS: dict[str, str] = {}  # partition key -> this process's scope token
_WRITTEN: set[Path] = set()  # scope dirs this process wrote as the server side
_KEEP: set[Path] = set()  # ... of which fingerprinted ones, kept at exit
MEMO_BYTES = 64 * 2**20  # entries a process keeps after reading them (see read_entry)
_MEMO: OrderedDict[tuple[Path, str], tuple[tuple[int, int, int], tuple[ArrayData, np.ndarray], int]] = OrderedDict()
_MEMO_SIZE = 0


def _settings(run_cfg: dict[str, Any]) -> dict[str, Any]:
    node = run_cfg.get("data_cache")
    return node if isinstance(node, dict) else {}


def cache_dir(run_cfg: dict[str, Any]) -> Path | None:
    """Where entries live on this machine; None when ``data_cache.enabled`` is false."""
    node = _settings(run_cfg)
    if node.get("enabled", True) is False:
        return None
    if node.get("dir"):
        return Path(str(node["dir"])).expanduser()
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"fl-runner-{uid}" / "partitions"


# -- the data fingerprint: what makes a scope valid beyond one process ----------------------
_LIBRARIES = ("numpy", "scikit-learn", "datasets", "flwr-datasets", "torchvision", "pyarrow")
_RUNNER_CODE = ("data.py", "datasets/__init__.py", "partitioners.py", "partition_cache.py")
_MAX_INPUT_FILES = 10_000  # more than this under a dataset root: no fingerprint (stat cost)


def _versions() -> list[str]:
    from importlib import metadata

    out = []
    for name in _LIBRARIES:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name}==none")
    return out


def _runner_code() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for rel in _RUNNER_CODE:
        h.update(rel.encode())
        h.update((here / rel).read_bytes())
    return h.hexdigest()


def _stats(paths: list[Path]) -> list[list[Any]] | None:
    """(path, size, mtime) of every file under ``paths``; None if one is missing (the
    loader then raises its own error) or there are too many to stat."""
    rows: list[list[Any]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file())
        elif path.is_file():
            files = [path]
        else:
            return None
        for f in files:
            st = f.stat()
            rows.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
            if len(rows) > _MAX_INPUT_FILES:
                return None
    return rows


def _digits_inputs(cfg: dict[str, Any]) -> list[Path] | None:
    from importlib.util import find_spec

    spec = find_spec("sklearn")  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return [Path(locations[0]) / "datasets" / "data" / "digits.csv.gz"] if locations else None


def _torchvision_inputs(sub: str) -> Any:
    def inputs(cfg: dict[str, Any]) -> list[Path] | None:
        if cfg.get("download"):
            return None  # may fetch new files
        return [Path(str(cfg.get("root", "data"))).expanduser() / sub]

    return inputs


def _hf_inputs(cfg: dict[str, Any]) -> list[Path] | None:
    from runner.datasets import _data_file_items, _plain_files

    path = Path(str(cfg.get("path"))).expanduser()
    if path.exists():
        return [path]  # a dir written by save_to_disk
    files = cfg.get("data_files")
    plain = _plain_files(files)
    if not files or len(plain) != len(_data_file_items(files)):
        return None  # a Hub dataset, a glob or a URL: no fixed list of files
    return [Path(f).expanduser() for f in plain]


# The built-in loaders, and what each reads: the only ones the runner can fingerprint.
_INPUTS: dict[str, Any] = {
    "runner.datasets.digits": _digits_inputs,
    "runner.datasets.mnist": _torchvision_inputs("MNIST"),
    "runner.datasets.cifar10": _torchvision_inputs("cifar-10-batches-py"),
    "runner.datasets.hf": _hf_inputs,
}
_PARTITIONER_MODULES = ("flwr_datasets.", "runner.partitioners.")


def data_fingerprint(run_cfg: dict[str, Any]) -> str | None:
    """A digest of what the split depends on beyond the config (module docstring), or None
    when the dataset or partitioner is code the runner cannot see into."""
    dataset, partitioner = run_cfg.get("dataset") or {}, run_cfg.get("partitioner") or {}
    inputs = _INPUTS.get(str(dataset.get("_target_", "")))
    if inputs is None or not str(partitioner.get("_target_", "")).startswith(_PARTITIONER_MODULES):
        return None
    try:
        paths = inputs(dataset)
        stats = _stats(paths) if paths is not None else None
    except (OSError, ValueError, TypeError):
        return None
    if stats is None:
        return None
    text = json.dumps({"files": stats, "libraries": _versions(), "runner": _runner_code()}, sort_keys=True)
    return "fp-" + hashlib.sha256(text.encode()).hexdigest()[:40]


_FINGERPRINTS: dict[str, str | None] = {}  # partition key -> its data fingerprint, once per process


def _scope(run_cfg: dict[str, Any], key: str) -> tuple[str, bool]:
    """(scope, persistent): the data fingerprint, or this process's token. The fingerprint
    depends only on what the partition key holds (dataset, partitioner), so the files are
    stat-ed once per process and key."""
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = data_fingerprint(run_cfg)
    fingerprint = _FINGERPRINTS[key]
    if fingerprint is not None:
        return fingerprint, True
    return _TOKENS.setdefault(key, uuid.uuid4().hex), False


def _scope_dir(root: Path, key: str, scope: str) -> Path:
    return root / hashlib.sha256(f"{key}|{scope}".encode()).hexdigest()[:32]


def client_entry(run_cfg: dict[str, Any], key: str, partition_id: int) -> Path | None:
    """The entry file of one client, or None when the run config carries no scope (the
    server side did not publish: in-process calls, tests) or the cache is off."""
    root = cache_dir(run_cfg)
    scope = _settings(run_cfg).get("scope")
    if root is None or not scope:
        return None
    return _scope_dir(root, key, str(scope)) / f"client-{int(partition_id)}.npz"


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _header(key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "key": key,
        "arrays": {n: {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": _digest(a)} for n, a in arrays.items()},
    }


def _save_checked(path: Path, key: str, arrays: dict[str, np.ndarray], **extra: Any) -> None:
    """``arrays`` and a JSON header (key, each array's dtype/shape/sha256, ``extra``) as one
    npz, written atomically (a temp file renamed into place)."""
    header = np.frombuffer(json.dumps({**_header(key, arrays), **extra}, sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=header, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_checked(
    path: Path, key: str, names: tuple[str, ...] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(header, arrays) of a file :func:`_save_checked` wrote, or None if it is missing,
    unreadable, for another key, or an array does not match its declared digest. ``names``:
    the arrays to read (default: all of them, and exactly the declared ones)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(bytes(npz["header"]).decode())
            arrays = {n: npz[n] for n in (names or [n for n in npz.files if n != "header"])}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, truncated, not an npz
        return None
    if header.get("format") != FORMAT or header.get("key") != key:
        return None
    declared = header.get("arrays") or {}
    if names is None and sorted(declared) != sorted(arrays):
        return None
    for name, a in arrays.items():
        want = declared.get(name) or {}
        if want.get("dtype") != str(a.dtype) or want.get("shape") != list(a.shape) or want.get("sha256") != _digest(a):
            return None
    return header, arrays


def write_entry(path: Path, key: str, x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> None:
    """Write one client's entry atomically."""
    arrays = {"x": np.ascontiguousarray(x), "y": np.ascontiguousarray(y), "ids": np.asarray(ids, dtype=np.int64)}
    _save_checked(path, key, arrays)


def read_entry(path: Path, key: str) -> tuple[ArrayData, np.ndarray] | None:
    """(the client's rows as ArrayData, their sample ids), or None if the entry is missing,
    unreadable, for another key, or its arrays do not match their digests.

    A long-lived process (a Ray actor serving many clients) keeps the entries it read, up to
    ``MEMO_BYTES``, while the file is unchanged (same size, mtime and inode); the checks ran
    when it was read."""
    try:
        st = path.stat()
    except OSError:
        return None
    sig = (st.st_size, st.st_mtime_ns, st.st_ino)
    memo = _MEMO.get((path, key))
    if memo is not None and memo[0] == sig:
        _MEMO.move_to_end((path, key))
        return memo[1]
    got = _read_checked(path, key)
    if got is not None:
        _remember((path, key), sig, got)
    return got


def _remember(k: tuple[Path, str], sig: tuple[int, int, int], got: tuple[ArrayData, np.ndarray]) -> None:
    global _MEMO_SIZE
    size = int(got[0].x.nbytes + got[0].y.nbytes + got[1].nbytes)
    if size > MEMO_BYTES:
        return
    old = _MEMO.pop(k, None)
    if old is not None:
        _MEMO_SIZE -= old[2]
    _MEMO[k] = (sig, got, size)
    _MEMO_SIZE += size
    while _MEMO_SIZE > MEMO_BYTES:
        _, (_, _, dropped) = _MEMO.popitem(last=False)
        _MEMO_SIZE -= dropped


def _read_checked(path: Path, key: str) -> tuple[ArrayData, np.ndarray] | None:
    got = _load_checked(path, key, _ARRAYS)
    if got is None:
        return None
    arrays = got[1]
    return ArrayData(arrays["x"], arrays["y"]), arrays["ids"]


def _collect_stale(root: Path, keep: Path) -> None:
    """Remove scope dirs of processes that are long gone (killed before their cleanup)."""
    now = time.time()
    try:
        dirs = [d for d in root.iterdir() if d.is_dir() and d != keep]
    except OSError:
        return
    for d in dirs:
        try:
            if now - d.stat().st_mtime > STALE_S:
                shutil.rmtree(d, ignore_errors=True)
        except OSError:
            continue


def publish(run_cfg: dict[str, Any], key: str, data: ArrayData, parts: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Write every client's entry (server side, before round 1) and return the
    ``data_cache`` node the clients get: the settings plus the scope.

    A per-process scope is shared by the jobs of one sweep process with the same data and
    removed when the process exits; a fingerprinted one stays (its entries are written once)."""
    node = dict(_settings(run_cfg))
    root = cache_dir(run_cfg)
    if root is None:
        return node
    scope, persistent = _scope(run_cfg, key)
    scope_dir = _scope_dir(root, key, scope)
    if scope_dir not in _WRITTEN:
        if not persistent:
            _WRITTEN.add(scope_dir)  # removed at exit, also when only some entries got written
        try:
            for pid, ids in enumerate(parts):
                path = scope_dir / f"client-{pid}.npz"
                if persistent and path.exists():
                    continue  # written for this data before; every read checks it
                write_entry(path, key, data.x[ids], data.y[ids], ids)
            _touch(scope_dir)
        except OSError as exc:
            log.warning(
                "data_cache.dir: cannot write the partition cache under %s (%s); every client process "
                "loads and partitions the data itself (slower, same results)",
                root,
                exc,
            )
            if not persistent:
                shutil.rmtree(scope_dir, ignore_errors=True)
            return node
        if persistent:
            _WRITTEN.add(scope_dir)  # this process wrote or checked it: not again (kept at exit)
            _KEEP.add(scope_dir)
        _collect_stale(root, keep=scope_dir)
    node["scope"] = scope
    return node


def _touch(scope_dir: Path) -> None:
    """A scope in use is not stale (the collector goes by the dir's mtime)."""
    try:
        os.utime(scope_dir)
    except OSError:
        pass


# -- the server side's whole split (fingerprinted scopes only) -------------------------------
def store_entry(run_cfg: dict[str, Any], key: str) -> Path | None:
    """Where the server side keeps the whole split for this data, or None (cache off, or a
    dataset/partitioner without a fingerprint)."""
    root = cache_dir(run_cfg)
    if root is None:
        return None
    scope, persistent = _scope(run_cfg, key)
    return _scope_dir(root, key, scope) / "partitions.npz" if persistent else None


def read_partitions(
    path: Path, key: str
) -> tuple[ArrayData, np.ndarray, tuple[np.ndarray, ...], tuple[str, ...]] | None:
    """(data, test ids, each client's sample ids, the partitioner's notes) as written by
    :func:`write_partitions`, or None if missing, for another key, or not matching its digests."""
    got = _load_checked(path, key)
    if got is None:
        return None
    header, arrays = got
    offsets = arrays["offsets"]
    parts = tuple(arrays["parts"][offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1))
    columns = {str(n)[len("col_") :]: a for n, a in arrays.items() if str(n).startswith("col_")}
    data = ArrayData(arrays["x"], arrays["y"], columns, arrays.get("data_test_idx"))
    _touch(path.parent)
    return data, arrays["test"], parts, tuple(str(n) for n in header.get("notes", []))


def write_partitions(
    path: Path, key: str, data: ArrayData, test: np.ndarray, parts: tuple[np.ndarray, ...], notes: tuple[str, ...]
) -> bool:
    """Keep the server side's split for the next run on the same data (atomically; best
    effort: False, and nothing kept, when it cannot be written or holds non-numeric columns)."""
    arrays: dict[str, np.ndarray] = {
        "x": np.ascontiguousarray(data.x),
        "y": np.ascontiguousarray(data.y),
        "test": np.asarray(test, dtype=np.int64),
        "parts": np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.zeros(0, np.int64),
        "offsets": np.cumsum([0, *(len(p) for p in parts)]).astype(np.int64),
    }
    if data.test_idx is not None:
        arrays["data_test_idx"] = np.asarray(data.test_idx)
    for name, col in data.columns.items():
        arrays[f"col_{name}"] = np.asarray(col)
    if any(a.dtype.hasobject for a in arrays.values()):
        return False  # np.load(allow_pickle=False) could not read it back
    try:
        _save_checked(path, key, arrays, notes=list(notes))
    except OSError:
        return False
    return True


def write_own(path: Path, key: str, data: ArrayData, ids: np.ndarray) -> None:
    """A client that partitioned itself leaves its entry for its next process (best effort:
    a read-only or full disk only costs the next process the same work)."""
    try:
        write_entry(path, key, data.x[ids], data.y[ids], ids)
        _collect_stale(path.parent.parent, keep=path.parent)
    except OSError:
        pass


@atexit.register
def _remove_written() -> None:
    for d in _WRITTEN - _KEEP:
        shutil.rmtree(d, ignore_errors=True)
