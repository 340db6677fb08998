"""Weight-file formats (npz, torch, safetensors) and crash-safe atomic writes.

Every file written here is readable with the plain libraries and no pickle is ever loaded:
``dict(np.load(f))``, ``torch.load(f, weights_only=True)``, ``safetensors.numpy.load_file(f)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "FORMATS",
    "CheckpointError",
    "FileInfo",
    "atomic_write",
    "format_from_path",
    "fsync_dir",
    "load_arrays",
    "save_arrays",
    "sha256_file",
]

FORMATS: dict[str, str] = {"npz": ".npz", "torch": ".pt", "safetensors": ".safetensors"}
# Flower's how-to saves `model_round_N.pth`; read it as torch (we never write .pth).
_READ_ALIASES: dict[str, str] = {".pth": "torch"}
TMP_PREFIX = ".tmp-"
# Below this, hashing in a helper thread costs more than it overlaps.
_PARALLEL_HASH_MIN = 1 << 20
_ST_ORDER_KEY = "key_order"  # safetensors metadata: original key order (the format sorts keys)


class CheckpointError(Exception):
    """A checkpoint file is missing, unreadable, corrupt or incompatible (one-line message)."""


FileInfo = tuple[str, int]  # (sha256 hex, size in bytes) of a file as written


def format_from_path(path: str | os.PathLike[str]) -> str:
    """The format name of a weights file, from its extension."""
    p = Path(path)
    suffix = p.suffix.lower()
    for name, ext in FORMATS.items():
        if suffix == ext:
            return name
    if suffix in _READ_ALIASES:
        return _READ_ALIASES[suffix]
    known = ", ".join(sorted({*FORMATS.values(), *_READ_ALIASES}))
    raise CheckpointError(f"{p}: unknown checkpoint format {suffix or '(no extension)'!r} (expected {known})")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r} (expected one of {', '.join(FORMATS)})")
    return fmt


def _byte_view(arr: np.ndarray) -> memoryview:
    """Zero-copy flat byte view of a C-contiguous array (0-d and empty arrays included)."""
    return memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]


class _HashingWriter:
    """File wrapper that sha256-hashes and counts bytes as they are written.

    It deliberately has no ``seek``: zipfile (npz) then streams with data descriptors instead
    of seeking back, so every byte passes through ``write`` exactly once and the digest is
    known without re-reading the file. Hashing runs on one helper thread, in write order, so
    it overlaps the writes and the final fsync (hashlib and file I/O release the GIL). A large
    buffer is hashed asynchronously only when its memory is known to stay alive and unchanged:
    it is ``bytes`` (immutable, referenced by the queued job) or lies inside one of the
    ``pinned`` arrays (the arrays being saved; torch hands out raw pointers into them).
    Anything else (a reused buffer, memory torch frees after the call) is hashed before
    ``write`` returns.
    """

    def __init__(self, f: BinaryIO, pool: ThreadPoolExecutor, pinned: Iterable[np.ndarray] = ()) -> None:
        self._f = f
        self._pool: ThreadPoolExecutor | None = pool
        self._sha = hashlib.sha256()
        self._small = bytearray()  # small writes (headers) batched into one hash job
        self._pending: list[Future[None]] = []
        self._pinned = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in pinned if a.nbytes]
        self.size = 0

    def _safe_to_defer(self, mv: memoryview) -> bool:
        if isinstance(mv.obj, bytes):  # immutable and kept alive by the memoryview
            return True
        start = np.frombuffer(mv, dtype=np.uint8).ctypes.data
        end = start + mv.nbytes
        return any(lo <= start and end <= hi for lo, hi in self._pinned)

    def _submit(self, buf: bytes | memoryview) -> Future[None] | None:
        """Queue a hash update in write order; None when it was done inline."""
        if self._pool is not None:
            try:
                return self._pool.submit(self._sha.update, buf)
            except RuntimeError:  # interpreter shutting down (a save flushed at exit): go inline
                self._pool = None
                self._wait_pending()
        self._sha.update(buf)
        return None

    def _wait_pending(self) -> None:
        for job in self._pending:
            job.result()
        self._pending.clear()

    def _flush_small(self) -> None:
        if self._small:
            job = self._submit(bytes(self._small))
            if job is not None:
                self._pending.append(job)
            self._small.clear()

    def write(self, data: Any) -> int:
        mv = memoryview(data)
        if not mv.c_contiguous:
            mv = memoryview(mv.tobytes())
        if mv.ndim != 1 or mv.format != "B":
            mv = mv.cast("B")
        n = mv.nbytes
        if n < _PARALLEL_HASH_MIN:
            self._small += mv
            if len(self._small) >= _PARALLEL_HASH_MIN:
                self._flush_small()
            self._f.write(mv)
        else:
            self._flush_small()
            job = self._submit(mv)
            self._f.write(mv)
            if job is not None and self._safe_to_defer(mv):
                self._pending.append(job)
            elif job is not None:
                job.result()  # the caller may free this memory once we return
        self.size += n
        if len(self._pending) > 64:
            self._reap()
        return n

    def _reap(self) -> None:
        done = [job for job in self._pending if job.done()]
        for job in done:
            job.result()  # re-raise a hashing error, if any
        self._pending = [job for job in self._pending if not job.done()]

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def hexdigest(self) -> str:
        """Wait for the hash jobs still queued and return the digest."""
        if not self._pending:  # small file (manifest, pointer): no helper thread needed
            self._sha.update(self._small)
            self._small.clear()
        self._flush_small()
        self._wait_pending()
        return self._sha.hexdigest()


def fsync_dir(directory: Path) -> None:
    """Make a rename durable. Not possible on Windows (directories cannot be opened)."""
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (e.g. certain network mounts) refuse; the data is fsynced
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], None],
    *,
    pinned: Iterable[np.ndarray] = (),
) -> FileInfo:
    """Write ``path`` via a temp file in the same directory, fsync, ``os.replace``, fsync dir.

    A crash leaves either the old file or the new one, never a torn one; the only possible
    leftover is a ``.tmp-*`` file that scanners ignore. Returns (sha256, size) of the bytes
    written, computed on the fly. ``pinned``: arrays that stay alive and unchanged during the
    call, whose memory ``write`` may pass as raw buffers (lets hashing overlap more).
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    # os.open with 0o666 (not mkstemp's 0o600) so the final file gets normal umask permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f, ThreadPoolExecutor(1, thread_name_prefix="ckpt-hash") as pool:
            hw = _HashingWriter(f, pool, pinned)
            write(hw)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())  # while the helper thread finishes hashing
            digest = hw.hexdigest()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    return digest, hw.size


def sha256_file(path: str | os.PathLike[str], chunk: int = 8 << 20) -> FileInfo:
    """(sha256, size) of a file on disk."""
    sha = hashlib.sha256()
    size = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            sha.update(view[:n])
            size += n
    return sha.hexdigest(), size


# ---------------------------------------------------------------------------------- writing


def _prepare(path: Path, arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: array names must be strings, got {type(key).__name__} {key!r}")
        arr = np.asarray(value)
        if not arr.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
            arr = arr.copy(order="C")
        if arr.dtype.hasobject:
            raise CheckpointError(
                f"{path}: array {key!r} has dtype object; only numeric arrays can be saved (no pickle)"
            )
        out[key] = arr
    return out


def _write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    # What np.savez does (uncompressed, zip64, one `<key>.npy` member per array), except that
    # the array bytes go out as a zero-copy view instead of np.save's chunked tobytes() copies.
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                header = np.lib.format.header_data_from_array_1_0(arr)
                try:
                    np.lib.format.write_array_header_1_0(member, header)
                except ValueError:  # header too long for format 1.0
                    np.lib.format.write_array_header_2_0(member, header)
                member.write(_byte_view(arr))


def _write_torch(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    import torch

    with warnings.catch_warnings():
        # Read-only arrays (e.g. straight from np.load) are fine: torch.save only reads them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        # torch has no byte-swapped dtypes: store big-endian arrays (rare) by value, native.
        native = {k: v if v.dtype.isnative else v.astype(v.dtype.newbyteorder("=")) for k, v in arrays.items()}
        state = {k: torch.from_numpy(v) for k, v in native.items()}
    torch.save(state, f)


# safetensors dtype codes in the order of the format's Dtype enum: the reference writer lays
# tensors out by descending dtype, then name, which keeps every tensor naturally aligned.
_ST_DTYPES: dict[str, str] = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "uint16": "U16", "float16": "F16",
    "int32": "I32", "uint32": "U32", "float32": "F32", "complex64": "C64", "float64": "F64",
    "int64": "I64", "uint64": "U64",
}  # fmt: skip
_ST_RANK = {code: i for i, code in enumerate(_ST_DTYPES.values())}


def _write_safetensors(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    # Streams the same bytes as safetensors.numpy.save(arrays, metadata) (a test checks this)
    # without first building the whole file in memory, which alone costs ~2x a raw write.
    entries = []
    for key, arr in arrays.items():
        code = _ST_DTYPES.get(arr.dtype.name)
        if code is None:
            raise CheckpointError(f"array {key!r}: dtype {arr.dtype} is not supported by safetensors")
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        entries.append((key, code, arr))
    entries.sort(key=lambda e: (-_ST_RANK[e[1]], e[0]))
    # The format sorts keys; remember the state_dict order in its string metadata.
    header: dict[str, Any] = {"__metadata__": {_ST_ORDER_KEY: json.dumps(list(arrays))}}
    offset = 0
    for key, code, arr in entries:
        header[key] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(len(raw).to_bytes(8, "little") + raw)
    for _, _, arr in entries:
        f.write(_byte_view(arr))


_WRITERS: dict[str, Callable[[BinaryIO, Mapping[str, np.ndarray]], None]] = {
    "npz": _write_npz,
    "torch": _write_torch,
    "safetensors": _write_safetensors,
}


def save_arrays(path: str | os.PathLike[str], arrays: Mapping[str, Any], fmt: str | None = None) -> FileInfo:
    """Atomically save named arrays (dtype and shape kept exactly); returns (sha256, size)."""
    path = Path(path)
    fmt = _check_format(fmt) if fmt is not None else format_from_path(path)
    prepared = _prepare(path, arrays)
    writer = _WRITERS[fmt]
    try:
        return atomic_write(path, lambda f: writer(f, prepared), pinned=prepared.values())
    except CheckpointError as e:
        raise e if str(e).startswith(str(path)) else CheckpointError(f"{path}: {e}") from e
    except OSError as e:
        raise CheckpointError(f"{path}: cannot write: {e.strerror or e}") from e
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. a dtype the format cannot store
        raise CheckpointError(f"{path}: cannot save as {fmt}: {_one_line(e)}") from e


# ---------------------------------------------------------------------------------- reading


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path}: not an .npz archive (a single .npy array)")
        return {key: npz[key] for key in npz.files}


def _load_torch(path: Path) -> dict[str, np.ndarray]:
    import pickle

    import torch

    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        # weights_only refuses (and never runs) anything but tensors and plain containers.
        raise CheckpointError(
            f"{path}: refused to load: the file contains pickled objects other than tensors "
            f"({_one_line(e).removeprefix('Weights only load failed. ')})"
        ) from e
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict (mapping of name -> tensor), got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is of type {type(value).__name__}, not a tensor")
        try:
            out[str(key)] = value.detach().cpu().numpy()
        except TypeError as e:  # e.g. bfloat16 has no numpy dtype
            raise CheckpointError(f"{path}: entry {key!r}: {_one_line(e)}") from e
    return out


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        keys = list(f.keys())
        order = (f.metadata() or {}).get(_ST_ORDER_KEY)
        if order is not None:
            stored = json.loads(order)
            if isinstance(stored, list) and sorted(stored) == sorted(keys):
                keys = stored
        return {key: f.get_tensor(key) for key in keys}


_LOADERS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    "npz": _load_npz,
    "torch": _load_torch,
    "safetensors": _load_safetensors,
}


def load_arrays(path: str | os.PathLike[str], fmt: str | None = None) -> dict[str, np.ndarray]:
    """Load named arrays in their stored order; never unpickles objects."""
    path = Path(path)
    fmt = _check_format(fmt) if fmt is not None else format_from_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return _LOADERS[fmt](path)
    except CheckpointError:
        raise
    except Exception as e:  # any parse error of a damaged file: one line, naming the file
        raise CheckpointError(f"{path}: cannot read as {fmt}: {_one_line(e)}") from e
