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
  test fraction) and a token the server picks per process, so an entry never outlives the
  data it was cut from: a new server process (a new run, a resume) writes new entries;
* the file holds the partition's rows ``x``, ``y`` in partition order, their sample ids and
  a JSON header with the full key and the sha256 of each array. Every read checks the key
  and the digests (``np.load(allow_pickle=False)``); an entry that fails either is ignored.

A client that finds no entry (a remote Ray node, a SuperNode on another machine, a deleted
dir) partitions itself, as before, and writes its own entry, so each node does it at most
once per scope. The server removes the entries it wrote when its process exits; left-overs
of killed processes are removed after a day by the next writer. Results are bit for bit the
same with the cache on or off (``data_cache.enabled=false``): the same rows in the same
order reach the task.
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

__all__ = ["cache_dir", "client_entry", "publish", "read_entry", "write_entry"]

FORMAT = 1
STALE_S = 24 * 3600.0  # a scope dir untouched this long belongs to a process that is gone
_ARRAYS = ("x", "y", "ids")
_TOKENS: dict[str, str] = {}  # partition key -> this process's scope token
_WRITTEN: set[Path] = set()  # scope dirs this process wrote as the server side (removed at exit)
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


def write_entry(path: Path, key: str, x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> None:
    """Write one client's entry atomically (a temp file renamed into place)."""
    arrays = {"x": np.ascontiguousarray(x), "y": np.ascontiguousarray(y), "ids": np.asarray(ids, dtype=np.int64)}
    header = np.frombuffer(json.dumps(_header(key, arrays), sort_keys=True).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=header, x=arrays["x"], y=arrays["y"], ids=arrays["ids"])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    try:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(bytes(npz["header"]).decode())
            arrays = {n: npz[n] for n in _ARRAYS}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, truncated, not an npz
        return None
    if header.get("format") != FORMAT or header.get("key") != key:
        return None
    declared = header.get("arrays") or {}
    for name, a in arrays.items():
        want = declared.get(name) or {}
        if want.get("dtype") != str(a.dtype) or want.get("shape") != list(a.shape) or want.get("sha256") != _digest(a):
            return None
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
    ``data_cache`` node the clients get: the settings plus this process's scope token.

    The token is per partition key and process, so the jobs of one sweep process with the
    same data share the entries; they are removed when the process exits."""
    node = dict(_settings(run_cfg))
    root = cache_dir(run_cfg)
    if root is None:
        return node
    token = _TOKENS.setdefault(key, uuid.uuid4().hex)
    scope_dir = _scope_dir(root, key, token)
    if scope_dir not in _WRITTEN:
        _WRITTEN.add(scope_dir)  # removed at exit, also when only some entries got written
        try:
            for pid, ids in enumerate(parts):
                write_entry(scope_dir / f"client-{pid}.npz", key, data.x[ids], data.y[ids], ids)
        except OSError as exc:
            log.warning(
                "data_cache.dir: cannot write the partition cache under %s (%s); every client process "
                "loads and partitions the data itself (slower, same results)",
                root,
                exc,
            )
            shutil.rmtree(scope_dir, ignore_errors=True)
            return node
        _collect_stale(root, keep=scope_dir)
    node["scope"] = token
    return node


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
    for d in _WRITTEN:
        shutil.rmtree(d, ignore_errors=True)
