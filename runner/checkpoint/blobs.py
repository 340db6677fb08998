"""Content-addressed client-state blobs: ``checkpoints/blobs/<digest>.<ext>``.

One blob is one client's state: its arrays in the checkpoint's format plus its JSON
skeleton as a ``__json__`` uint8 array (so a blob alone rebuilds the state; nothing is
pickled). The name is the sha256 of the state's content (skeleton, then every array's key,
dtype, shape and bytes), not of the file: npz and torch files are not byte-reproducible,
so the manifest records each blob file's own sha256 and size as well.

A blob is written once, when a state changes; an existing blob is never rewritten (a
manifest may hold its sha256). Every manifest lists every blob it references (``blobs``:
name -> sha256, size, format, arrays) and maps each client to its blob
(``state.components.clients = {"__blobs__": {pid: name}}``). Blobs that no manifest in the
dir references are removed by :func:`collect_garbage`, which the writer runs only after a
manifest is committed; it removes nothing while any manifest there cannot be read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runner.checkpoint.formats import (
    FORMATS,
    TMP_PREFIX,
    CheckpointError,
    atomic_write,
    fsync_dir,
    load_arrays,
    save_arrays,
    sha256_file,
)
from runner.client_state import BLOBS_TAG, ClientRecord
from runner.stateful import pack, unpack

__all__ = [
    "BLOBS_DIR",
    "blob_entries",
    "blob_name_problem",
    "collect_garbage",
    "encode_state",
    "read_state_blob",
    "referenced_blobs",
    "write_records",
]

log = logging.getLogger("runner")

BLOBS_DIR = "blobs"
_JSON = "__json__"
_NAME_RE = re.compile(r"^[0-9a-f]{64}(" + "|".join(re.escape(e) for e in FORMATS.values()) + r")$")
_DIGEST_TAG = b"runner.client-state.v1\0"


def blob_name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        return f"blob name is not <sha256 hex><ext>: {name!r}"
    return None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def encode_state(state: Mapping[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
    """(content digest, arrays to save) of one client's state."""
    skeleton, arrays = pack(dict(state), prefix="s")
    raw = json.dumps(skeleton, default=_json_default, separators=(",", ":")).encode()
    h = hashlib.sha256(_DIGEST_TAG)
    h.update(len(raw).to_bytes(8, "little") + raw)
    for key in sorted(arrays):
        arr = np.ascontiguousarray(arrays[key])
        h.update(f"{key}\0{arr.dtype.str}\0{arr.shape}\0".encode())
        h.update(memoryview(arr.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
    arrays[_JSON] = np.frombuffer(raw, dtype=np.uint8).copy()
    return h.hexdigest(), arrays


def read_state_blob(path: Path, entry: Mapping[str, Any]) -> dict[str, Any]:
    """One client's state from its blob, after checking the blob's recorded size and sha256."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{path}: client-state blob unreadable: {e.strerror or e}") from None
    if size != entry["size"]:
        raise CheckpointError(f"{path}: checksum mismatch (size {size} bytes, manifest says {entry['size']})")
    sha, _ = sha256_file(path)
    if sha != entry["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch (sha256 {sha[:12]}…, manifest says {entry['sha256'][:12]}…)")
    arrays = load_arrays(path, str(entry["format"]))
    raw = arrays.pop(_JSON, None)
    if raw is None:
        raise CheckpointError(f"{path}: not a client-state blob (no {_JSON} array)")
    state = unpack(json.loads(np.asarray(raw).tobytes().decode()), arrays)
    return state if isinstance(state, dict) else {}


# ---------------------------------------------------------------------------------- manifest


def blob_entries(manifest: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, entry) of every blob a manifest references; ``entry["name"]`` is relative to
    the checkpoints dir (``blobs/<name>``), like the entries of ``files``."""
    blobs = manifest.get("blobs") or {}
    return [(name, {**e, "name": f"{BLOBS_DIR}/{name}"}) for name, e in sorted(blobs.items())]


def referenced_blobs(manifest: Mapping[str, Any]) -> dict[str, str]:
    """pid -> blob name of a manifest's clients (empty for the older layout)."""
    clients = ((manifest.get("state") or {}).get("components") or {}).get("clients")
    if isinstance(clients, dict) and isinstance(clients.get(BLOBS_TAG), dict):
        return {str(k): str(v) for k, v in clients[BLOBS_TAG].items()}
    return {}


def blobs_problem(manifest: Mapping[str, Any]) -> str | None:
    blobs = manifest.get("blobs")
    if blobs is None:
        return None
    if not isinstance(blobs, dict):
        return "manifest entry blobs is not an object"
    for name, entry in blobs.items():
        problem = blob_name_problem(name)
        if problem:
            return problem
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not isinstance(entry.get("size"), int)
        ):
            return f"manifest entry blobs.{name} lacks sha256/size"
        if entry.get("format") not in FORMATS:
            return f"manifest entry blobs.{name}: unknown format {entry.get('format')!r}"
    missing = sorted(set(referenced_blobs(manifest).values()) - set(blobs))
    if missing:
        return f"clients reference blobs the manifest does not list: {', '.join(missing[:3])}"
    return None


# ----------------------------------------------------------------------------------- writing


def _import_blob(src: Path, dst: Path, entry: Mapping[str, Any]) -> None:
    """A blob of another checkpoints dir (the run resumed from) into this one: a hard link
    when the filesystem allows, else an atomic copy whose sha256 must match the entry."""
    try:
        tmp = dst.with_name(f"{TMP_PREFIX}{dst.name}.link")
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        return
    except OSError:
        pass
    with open(src, "rb") as f:
        sha, _ = atomic_write(dst, lambda out: shutil.copyfileobj(f, out, 8 << 20))
    if sha != entry["sha256"]:
        dst.unlink(missing_ok=True)
        raise CheckpointError(f"{src}: checksum mismatch while copying it into {dst.parent}")


def write_records(
    ckpt_dir: Path, records: Mapping[int, ClientRecord], fmt: str
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Make every client's current state a blob of ``ckpt_dir`` (writing only the states
    not yet on disk there); returns (pid -> blob name, blob name -> manifest entry).

    Runs on the writer thread. A record's state is dropped from memory once its blob is
    written (the store then reads it back from disk when a round needs it).
    """
    blob_dir = ckpt_dir / BLOBS_DIR
    blob_dir.mkdir(parents=True, exist_ok=True)
    here = blob_dir.resolve()
    ext = FORMATS[fmt]
    parents: dict[str, bool] = {}  # dir of a blob path -> is it this blob dir (one resolve per dir)

    def is_here(path: str) -> bool:
        parent = os.path.dirname(path)
        if parent not in parents:
            parents[parent] = Path(parent).resolve() == here
        return parents[parent]

    known: dict[str, dict[str, Any]] = {}
    for rec in records.values():
        if rec.entry is not None and rec.blob and is_here(rec.entry["path"]):
            known[rec.blob] = rec.entry
    refs: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    wrote = False
    for pid, rec in records.items():
        if rec.entry is None:
            state = rec.state
            if state is None:  # cannot happen: a record is either in memory or written
                raise CheckpointError(f"client {pid}: state neither in memory nor on disk")
            digest, arrays = encode_state(state)
            name = digest + ext
            path = blob_dir / name
            entry = known.get(name)
            if entry is None:
                if path.exists():  # e.g. another client's or an older state: never rewritten
                    sha, size = sha256_file(path)
                    entry = {"path": str(path), "sha256": sha, "size": size, "format": fmt, "arrays": len(arrays)}
                else:
                    sha, size = save_arrays(path, arrays, fmt)
                    wrote = True
                    entry = {"path": str(path), "sha256": sha, "size": size, "format": fmt, "arrays": len(arrays)}
                known[name] = entry
            rec.blob, rec.entry = name, entry
            rec.state = None  # on disk now: the store reads it back when needed
        else:
            assert rec.blob is not None
            name = rec.blob
            src = Path(rec.entry["path"])
            if not is_here(rec.entry["path"]):  # resumed from another run: bring the blob along
                dst = blob_dir / name
                if name not in known:
                    if not dst.exists():
                        _import_blob(src, dst, rec.entry)
                        wrote = True
                    known[name] = {**rec.entry, "path": str(dst)}
                rec.entry = known[name]
        refs[str(pid)] = name
        entries[name] = {k: rec.entry[k] for k in ("sha256", "size", "format", "arrays") if k in rec.entry}
    if wrote:
        fsync_dir(blob_dir)
    return refs, entries


# ------------------------------------------------------------------------------------ GC


def collect_garbage(ckpt_dir: Path, manifests: list[dict[str, Any] | None]) -> list[str]:
    """Remove the blobs no manifest of ``ckpt_dir`` references (``manifests``: every one
    there, None for one that does not parse, which makes this remove nothing). Also removes
    blob temp files older than this call. Returns the names removed."""
    blob_dir = ckpt_dir / BLOBS_DIR
    if not blob_dir.is_dir():
        return []
    if any(m is None for m in manifests):
        log.warning("%s: a manifest there cannot be read; no client-state blob is removed", ckpt_dir)
        return []
    keep = {name for m in manifests if m is not None for name in (m.get("blobs") or {})}
    started = time.time()
    removed = []
    for entry in sorted(os.scandir(blob_dir), key=lambda e: e.name):
        try:
            if entry.name.startswith(TMP_PREFIX):
                if entry.stat().st_mtime < started:
                    os.unlink(entry.path)
            elif _NAME_RE.match(entry.name) and entry.name not in keep:
                os.unlink(entry.path)
                removed.append(entry.name)
        except OSError as e:  # keeping an extra blob is no reason to stop a run
            log.warning("could not remove client-state blob %s: %s", entry.path, e)
    if removed:
        try:
            fsync_dir(blob_dir)
        except OSError:
            pass
    return removed
