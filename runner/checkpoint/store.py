"""On-disk layout of one run's ``checkpoints/`` directory.

Round k is ``round-000k.<ext>`` (model weights), ``round-000k.state.<ext>`` (strategy
server-state arrays, only when there are any) and ``round-000k.json``, the manifest. Client
states are content-addressed blobs in ``blobs/`` (:mod:`runner.checkpoint.blobs`), shared
between rounds and referenced by each manifest. The manifest is written last and is the
commit marker: a checkpoint exists iff its manifest does, and the manifest carries the size
and sha256 of every file and blob it names. ``last.json`` and ``best.json`` point at
manifests (plain files, no symlinks, so every OS works).
"""

from __future__ import annotations

import datetime as _dt
import functools
import importlib.metadata
import json
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runner.checkpoint.blobs import BLOBS_DIR, blob_entries, blobs_problem, referenced_blobs, write_records
from runner.checkpoint.formats import (
    FORMATS,
    TMP_PREFIX,
    CheckpointError,
    FileInfo,
    atomic_write,
    fsync_dir,
    load_arrays,
    save_arrays,
    sha256_file,
)
from runner.client_state import BLOBS_TAG

__all__ = [
    "SCHEMA",
    "CheckpointData",
    "LoadedCheckpoint",
    "ManifestInfo",
    "check_sizes",
    "copy_checkpoint",
    "file_entries",
    "find_checkpoint_dirs",
    "latest_valid",
    "load_checkpoint",
    "manifest_name",
    "manifest_for",
    "read_manifest",
    "read_pointer",
    "remove_checkpoint",
    "resolve_manifest",
    "round_stem",
    "scan",
    "verify",
    "write_checkpoint",
    "write_pointer",
]

SCHEMA = 1
CHECKPOINTS_DIR = "checkpoints"
POINTERS = ("last", "best")
_MANIFEST_RE = re.compile(r"^round-(\d{4,})\.json$")


@dataclass
class CheckpointData:
    """Everything one checkpoint holds; built by the round loop, written by the writer."""

    round: int
    phase: str  # "fit" | "evaluate"
    # A callable is evaluated on the writer thread, so the round loop does not pay for the
    # conversion. Arrays must not be modified after submitting them (they are not copied).
    weights: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]]
    state_arrays: Mapping[str, np.ndarray] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # JSON-able, stored in the manifest
    metrics: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    resumed_from: str | None = None
    is_best: bool = False
    code_digest: dict[str, str] = field(default_factory=dict)  # issue 21: {user module: sha256 of its source}
    # Every client's state (``ClientStateStore.records()``): written as blobs, only those not
    # on disk yet, and referenced as ``state.components.clients``; None: no client state.
    clients: Mapping[int, Any] | None = None


@dataclass
class LoadedCheckpoint:
    path: Path  # the manifest
    manifest: dict[str, Any]
    weights: dict[str, np.ndarray]
    state_arrays: dict[str, np.ndarray]


@dataclass
class ManifestInfo:
    """One ``round-*.json`` found by :func:`scan`; ``error`` is set when it does not parse."""

    path: Path
    round: int
    manifest: dict[str, Any] | None
    error: str | None = None

    @property
    def phase(self) -> str | None:
        return self.manifest.get("phase") if self.manifest else None

    @property
    def format(self) -> str | None:
        return self.manifest.get("format") if self.manifest else None

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.manifest.get("metrics") or {}) if self.manifest else {}

    @property
    def size(self) -> int:
        """Bytes of the array files and client-state blobs the manifest lists (0 if unknown):
        what a self-contained copy of this round holds."""
        files = (self.manifest or {}).get("files") or {}
        return sum(int(f.get("size", 0)) for f in files.values() if isinstance(f, dict)) + self.blob_size

    @property
    def blob_size(self) -> int:
        """Bytes of the client-state blobs the manifest references (shared with other rounds)."""
        blobs = (self.manifest or {}).get("blobs") or {}
        return sum(int(b.get("size", 0)) for b in blobs.values() if isinstance(b, dict))


# ----------------------------------------------------------------------------------- names


def round_stem(rnd: int) -> str:
    """``round-0003``; more digits once the round needs them (``round-12345``)."""
    if rnd < 0:
        raise CheckpointError(f"invalid round {rnd}: rounds are >= 0")
    return f"round-{rnd:04d}"


def manifest_name(rnd: int) -> str:
    return round_stem(rnd) + ".json"


def _round_from_name(name: str) -> int | None:
    m = _MANIFEST_RE.match(name)
    return int(m.group(1)) if m else None


# -------------------------------------------------------------------------------- manifest


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "unknown"

    # Metadata lookups only: no need to import torch or flwr to record their versions.
    return {
        "runner": version("flower-hydra-runner"),
        "flwr": version("flwr"),
        "torch": version("torch"),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def _dumps(obj: Any, path: Path) -> bytes:
    try:
        # allow_nan (the default): NaN/Infinity metrics survive as JSON's common extension,
        # which json.loads reads back as float("nan") / float("inf").
        return (json.dumps(obj, indent=2, default=_json_default) + "\n").encode()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot write manifest: {e}") from e


def _write_json(path: Path, obj: Any) -> FileInfo:
    data = _dumps(obj, path)
    return atomic_write(path, lambda f: f.write(data))  # type: ignore[arg-type]


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a manifest and check its structure (not its files; see :func:`verify`)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such manifest") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read manifest: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: manifest is not valid JSON ({e})") from e
    problem = _manifest_problem(manifest)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return manifest


def _file_entry_problem(entry: Any, what: str) -> str | None:
    if not isinstance(entry, dict):
        return f"manifest entry files.{what} is not an object"
    name = entry.get("name")
    # Plain names only: a manifest must never make us read or delete outside its directory.
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        return f"manifest entry files.{what}.name is not a plain file name: {name!r}"
    if not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("size"), int):
        return f"manifest entry files.{what} lacks sha256/size"
    return None


def _manifest_problem(manifest: Any) -> str | None:
    if not isinstance(manifest, dict):
        return "manifest is not a JSON object"
    schema = manifest.get("schema")
    if schema != SCHEMA:
        return f"unknown manifest schema {schema!r} (this version reads schema {SCHEMA})"
    rnd = manifest.get("round")
    if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 0:
        return f"manifest round is not a non-negative integer: {rnd!r}"
    if manifest.get("format") not in FORMATS:
        return f"manifest format {manifest.get('format')!r} is not one of {', '.join(FORMATS)}"
    files = manifest.get("files")
    if not isinstance(files, dict) or "weights" not in files:
        return "manifest has no files.weights entry"
    for what, entry in files.items():
        if entry is None and what != "weights":
            continue
        problem = _file_entry_problem(entry, what)
        if problem:
            return problem
    return blobs_problem(manifest)


def write_checkpoint(ckpt_dir: str | os.PathLike[str], data: CheckpointData, fmt: str) -> Path:
    """Write weights, state arrays, then the manifest (the commit marker); returns its path."""
    ckpt_dir = Path(ckpt_dir)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if data.phase not in ("fit", "evaluate"):
        raise CheckpointError(f"round {data.round}: phase must be 'fit' or 'evaluate', got {data.phase!r}")
    ext = FORMATS[fmt]
    stem = round_stem(data.round)
    path = ckpt_dir / f"{stem}.json"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    if path.exists():  # an earlier save of this round must not vouch for files being replaced
        path.unlink()
        _fsync_dir_quiet(ckpt_dir)

    weights = data.weights() if callable(data.weights) else data.weights
    if not weights:
        raise CheckpointError(f"{ckpt_dir / (stem + ext)}: no weights to save")
    state = data.state
    blobs: dict[str, dict[str, Any]] | None = None
    if data.clients:  # client states first: blobs not on disk yet, each atomically
        refs, blobs = write_records(ckpt_dir, data.clients, fmt)
        components = {**state.get("components", {}), "clients": {BLOBS_TAG: refs}}
        state = {**state, "components": components}
    files: dict[str, dict[str, Any] | None] = {"weights": _save(ckpt_dir / f"{stem}{ext}", weights, fmt)}
    state_path = ckpt_dir / f"{stem}.state{ext}"
    if data.state_arrays:
        files["state"] = _save(state_path, data.state_arrays, fmt)
    else:
        files["state"] = None
        state_path.unlink(missing_ok=True)  # left over from an earlier save of this round

    manifest = {
        "schema": SCHEMA,
        "round": int(data.round),
        "phase": data.phase,
        "format": fmt,
        "files": files,
        "metrics": dict(data.metrics),
        "fingerprint": data.fingerprint,
        "config": data.config,
        "state": state,
        "versions": _versions(),
        "resumed_from": data.resumed_from,
        "code_digest": dict(data.code_digest),  # issue 21: compared on resume, never imported
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"),
    }
    if blobs is not None:
        manifest["blobs"] = blobs
    _write_json(path, manifest)
    return path


def _save(path: Path, arrays: Mapping[str, np.ndarray], fmt: str) -> dict[str, Any]:
    sha, size = save_arrays(path, arrays, fmt)
    return {"name": path.name, "sha256": sha, "size": size, "arrays": len(arrays)}


# -------------------------------------------------------------------------------- pointers


def write_pointer(ckpt_dir: str | os.PathLike[str], name: str, rnd: int) -> Path:
    """Atomically point ``last.json``/``best.json`` at round ``rnd``'s manifest."""
    if name not in POINTERS:
        raise ValueError(f"pointer must be one of {POINTERS}, got {name!r}")
    path = Path(ckpt_dir) / f"{name}.json"
    _write_json(path, {"round": int(rnd), "manifest": manifest_name(rnd)})
    return path


def read_pointer(ckpt_dir: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """``{"round", "manifest"}`` of a pointer, or None when it is missing or unreadable."""
    try:
        data = json.loads((Path(ckpt_dir) / f"{name}.json").read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("round"), int):
        return None
    manifest = data.get("manifest")
    if not isinstance(manifest, str) or manifest != Path(manifest).name:
        return None
    return data


# ------------------------------------------------------------------------ verify and load


def _check_file(ckpt_dir: Path, entry: Mapping[str, Any], full: bool) -> tuple[Path, str | None]:
    path = ckpt_dir / entry["name"]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return path, "missing"
    except OSError as e:
        return path, f"cannot stat: {e.strerror or e}"
    if size != entry["size"]:
        return path, f"checksum mismatch (size {size} bytes, manifest says {entry['size']}; truncated or modified)"
    if full:
        try:
            sha, _ = sha256_file(path)
        except OSError as e:
            return path, f"cannot read: {e.strerror or e}"
        if sha != entry["sha256"]:
            return path, f"checksum mismatch (sha256 {sha[:12]}…, manifest says {entry['sha256'][:12]}…)"
    return path, None


def file_entries(manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(what, entry) of every array file a manifest lists (``entry["name"]`` is in its dir)."""
    return [(what, e) for what, e in manifest["files"].items() if e is not None]


def verify(
    manifest_path: str | os.PathLike[str],
    *,
    load: bool = True,
    blobs: str = "full",
    memo: dict[tuple[str, str], str | None] | None = None,
) -> list[str]:
    """Problems with a checkpoint (empty list = valid).

    Checks that the manifest parses with a known schema, every file it lists exists with the
    recorded size and sha256, and (``load=True``) that the arrays load. Client-state blobs:
    ``blobs="full"`` checks the size and sha256 of every blob the manifest references,
    ``"size"`` only that each exists with its size (resume: each blob's sha256 is checked
    when the round loop reads it). ``memo`` shares blob results between manifests (blobs
    are shared between rounds).
    """
    manifest_path = Path(manifest_path)
    try:
        manifest = read_manifest(manifest_path)
    except CheckpointError as e:
        return [str(e)]
    problems = []
    for name, blob in blob_entries(manifest):
        key = (str(manifest_path.parent / blob["name"]), blob["sha256"] + blobs)
        if memo is not None and key in memo:
            problem = memo[key]
        else:
            _, problem = _check_file(manifest_path.parent, blob, full=blobs == "full")
            if memo is not None:
                memo[key] = problem
        if problem:
            problems.append(f"{BLOBS_DIR}/{name}: {problem}")
    for _, entry in file_entries(manifest):
        path, problem = _check_file(manifest_path.parent, entry, full=True)
        if problem:
            problems.append(f"{path.name}: {problem}")
            continue
        if load:
            try:
                arrays = load_arrays(path, manifest["format"])
            except CheckpointError as e:
                problems.append(str(e))
                continue
            if "arrays" in entry and len(arrays) != entry["arrays"]:
                problems.append(f"{path.name}: holds {len(arrays)} arrays, manifest says {entry['arrays']}")
    return problems


def check_sizes(manifest_path: str | os.PathLike[str]) -> list[str]:
    """Cheap check right after writing: every listed file exists with the recorded size."""
    manifest_path = Path(manifest_path)
    try:
        manifest = read_manifest(manifest_path)
    except CheckpointError as e:
        return [str(e)]
    entries = [e for _, e in file_entries(manifest)] + [e for _, e in blob_entries(manifest)]
    checks = ((e["name"], _check_file(manifest_path.parent, e, full=False)[1]) for e in entries)
    return [f"{name}: {problem}" for name, problem in checks if problem]


def load_checkpoint(
    manifest_path: str | os.PathLike[str], verify: bool = True, clients: str = "merge"
) -> LoadedCheckpoint:
    """Manifest, weights and state arrays; with ``verify``, sizes and sha256 are checked first.

    Client states stored as blobs (layout 3): ``clients="merge"`` reads every blob and gives
    the logical checkpoint, as the older layout stored it (``state.components.clients`` the
    skeleton ``{pid: state}``, its arrays under ``clients/<pid>/...`` in ``state_arrays``);
    ``"refs"`` reads none and resolves each client's reference instead
    (``{"__blobs__": {pid: {"blob", "path", "sha256", "size", "format", "arrays"}}}``, what
    ``ClientStateStore.load_state_dict`` takes); ``"skip"`` leaves the manifest as it is.
    """
    manifest_path = Path(manifest_path)
    manifest = read_manifest(manifest_path)
    loaded: dict[str, dict[str, np.ndarray]] = {"weights": {}, "state": {}}
    for what, entry in file_entries(manifest):
        path, problem = _check_file(manifest_path.parent, entry, full=verify)
        if problem:
            raise CheckpointError(f"{path}: {problem}")
        loaded[what] = load_arrays(path, manifest["format"])
    state_arrays = loaded.get("state", {})
    refs = referenced_blobs(manifest)
    if refs and clients != "skip":
        entries = dict(blob_entries(manifest))
        resolved = {}
        for pid, name in refs.items():
            entry = entries[name]
            path, problem = _check_file(manifest_path.parent, entry, full=verify and clients == "merge")
            if problem:
                raise CheckpointError(f"{path}: {problem}")
            resolved[pid] = {**{k: v for k, v in entry.items() if k != "name"}, "blob": name, "path": str(path)}
        if clients == "merge":
            from runner.checkpoint.blobs import read_state_blob
            from runner.stateful import pack

            cache: dict[str, dict[str, Any]] = {}
            states = {}
            for pid in sorted(resolved, key=int):
                ref = resolved[pid]
                if ref["blob"] not in cache:
                    cache[ref["blob"]] = read_state_blob(Path(ref["path"]), ref)
                states[pid] = cache[ref["blob"]]
            skeleton, client_arrays = pack(states, prefix="clients")
            state_arrays = {**state_arrays, **client_arrays}
            component: Any = skeleton
        else:
            component = {BLOBS_TAG: resolved}
        state = manifest["state"]
        manifest = {**manifest, "state": {**state, "components": {**state["components"], "clients": component}}}
    return LoadedCheckpoint(manifest_path, manifest, loaded["weights"], state_arrays)


# ------------------------------------------------------------------------------ discovery


def scan(ckpt_dir: str | os.PathLike[str], cleanup: bool = False) -> list[ManifestInfo]:
    """All ``round-*.json`` manifests of a checkpoints dir, sorted by round.

    Temp files (``.tmp-*``) are never listed; ``cleanup=True`` removes the ones older than
    this scan (left behind by a crash; a writer running right now keeps its newer ones).
    """
    ckpt_dir = Path(ckpt_dir)
    started = time.time()
    infos = []
    try:
        entries = list(os.scandir(ckpt_dir))
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CheckpointError(f"{ckpt_dir}: cannot list: {e.strerror or e}") from e
    for entry in entries:
        rnd = _round_from_name(entry.name)
        if rnd is None or not entry.is_file():
            continue
        path = Path(entry.path)
        try:
            manifest = read_manifest(path)
            infos.append(ManifestInfo(path, int(manifest["round"]), manifest))
        except CheckpointError as e:
            infos.append(ManifestInfo(path, rnd, None, str(e)))
    if cleanup:
        for entry in entries:
            if entry.name.startswith(TMP_PREFIX):
                try:
                    if entry.stat().st_mtime < started:
                        os.unlink(entry.path)
                except OSError:
                    pass
    return sorted(infos, key=lambda i: (i.round, i.path.name))


def find_checkpoint_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Every ``checkpoints/`` dir under an outputs root (or the root itself), sorted."""
    root = Path(root)
    if root.name == CHECKPOINTS_DIR and root.is_dir():
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        if CHECKPOINTS_DIR in dirnames:
            found.append(Path(dirpath) / CHECKPOINTS_DIR)
        # Do not descend into checkpoint dirs or hidden dirs (.hydra, .git, ...).
        dirnames[:] = sorted(d for d in dirnames if d != CHECKPOINTS_DIR and not d.startswith("."))
    return sorted(found)


def manifest_for(path: str | os.PathLike[str]) -> Path | None:
    """The manifest of a weights/state file (``round-0003.state.pt`` -> ``round-0003.json``)."""
    path = Path(path)
    if path.suffix == ".json":
        return path
    candidate = path.with_name(path.name.split(".", 1)[0] + ".json")
    if _round_from_name(candidate.name) is not None and candidate.is_file():
        return candidate
    return None


def latest_valid(ckpt_dir: str | os.PathLike[str], *, load: bool = True) -> Path | None:
    """The manifest of the highest round that verifies (by manifest round, never file time)."""
    for info in reversed(scan(ckpt_dir)):
        if info.manifest is not None and not verify(info.path, load=load, blobs="size"):
            return info.path
    return None


def resolve_manifest(path: str | os.PathLike[str]) -> Path:
    """Manifest of a manifest, a weights file beside its manifest, a checkpoints dir or a run
    dir (its latest valid checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_dir():
        dirs = [path] if path.name == CHECKPOINTS_DIR else [path / CHECKPOINTS_DIR]
        if not dirs[0].is_dir():
            dirs = find_checkpoint_dirs(path)
            if len(dirs) != 1:
                what = "no checkpoints/ dir" if not dirs else f"{len(dirs)} checkpoints/ dirs; name one run"
                raise CheckpointError(f"{path}: {what}")
        found = latest_valid(dirs[0])
        if found is None:
            raise CheckpointError(f"{dirs[0]}: no valid checkpoint")
        return found
    manifest = manifest_for(path)
    if manifest is None:
        raise CheckpointError(f"{path}: no manifest beside it ({path.name.split('.', 1)[0]}.json)")
    return manifest


def copy_checkpoint(manifest_path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[str]:
    """A self-contained checkpoints dir of one round: its files, the client-state blobs it
    references and its manifest (last, the commit marker), plus ``last.json``. Every file is
    copied atomically and its sha256 compared with the manifest's. Returns the names written
    (relative to ``out_dir``)."""
    import shutil

    manifest_path = Path(manifest_path)
    out = Path(out_dir)
    manifest = read_manifest(manifest_path)
    entries = [e for _, e in blob_entries(manifest)] + [e for _, e in file_entries(manifest)]
    (out / BLOBS_DIR).mkdir(parents=True, exist_ok=True)
    written = []
    for entry in entries:
        src, dst = manifest_path.parent / entry["name"], out / entry["name"]
        with open(src, "rb") as f:
            sha, _ = atomic_write(dst, lambda w: shutil.copyfileobj(f, w, 8 << 20))
        if sha != entry["sha256"]:
            raise CheckpointError(f"{src}: checksum mismatch while copying it")
        written.append(entry["name"])
    with open(manifest_path, "rb") as f:
        atomic_write(out / manifest_path.name, lambda w: shutil.copyfileobj(f, w))
    written.append(manifest_path.name)
    written.append(write_pointer(out, "last", int(manifest["round"])).name)
    return written


# -------------------------------------------------------------------------------- removal


def remove_checkpoint(ckpt_dir: str | os.PathLike[str], round: int) -> None:
    """Remove round ``round``: the manifest first, so a half-removed checkpoint never looks valid."""
    ckpt_dir = Path(ckpt_dir)
    stem = round_stem(round)
    manifest_path = ckpt_dir / f"{stem}.json"
    names = {f"{stem}{ext}" for ext in FORMATS.values()} | {f"{stem}.state{ext}" for ext in FORMATS.values()}
    try:
        names |= {e["name"] for _, e in file_entries(read_manifest(manifest_path))}
    except CheckpointError:
        pass
    manifest_path.unlink(missing_ok=True)
    _fsync_dir_quiet(ckpt_dir)  # the manifest is gone on disk before its data goes
    for name in sorted(names):
        (ckpt_dir / name).unlink(missing_ok=True)


def _fsync_dir_quiet(directory: Path) -> None:
    try:
        fsync_dir(directory)
    except OSError:
        pass
