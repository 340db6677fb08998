"""``python -m runner.ckpt``: list, verify and export checkpoints.

Every error is one line on stderr (``error: …``) with exit code 2 for bad usage and 1 for
invalid data; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from runner.checkpoint.blobs import BLOBS_DIR, blob_entries, referenced_blobs
from runner.checkpoint.formats import FORMATS, TMP_PREFIX, CheckpointError, format_from_path, load_arrays, save_arrays
from runner.checkpoint.migrate import is_positional, load_any_weights, match_reference
from runner.checkpoint.store import (
    ManifestInfo,
    copy_checkpoint,
    find_checkpoint_dirs,
    manifest_for,
    read_pointer,
    resolve_manifest,
    scan,
    verify,
)

__all__ = ["main"]

EXIT_INVALID = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command line (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse prints usage + error; we want one line
        raise UsageError(f"{message} (see {self.prog} --help)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m runner.ckpt", description="List, verify and export checkpoints.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("list", help="one row per checkpoint under a run dir or an outputs root")
    p.add_argument("path", type=Path, help="run dir, checkpoints dir or outputs root")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")

    p = sub.add_parser("verify", help="check manifests, sizes, sha256 and that arrays load")
    p.add_argument("path", type=Path, help="manifest, weights file, run dir or outputs root")

    p = sub.add_parser(
        "export", help="convert a checkpoint's weights to another format, or copy one round (--round-dir)"
    )
    p.add_argument("source", type=Path, help="manifest, weights file, run dir, or a Flower how-to file")
    p.add_argument("--to", choices=list(FORMATS), help="output format of the weights file")
    p.add_argument(
        "--round-dir",
        action="store_true",
        help="write a self-contained checkpoints dir of this one round (manifest, files, its client-state "
        "blobs) to -o DIR: verifiable, and resumable with resume=DIR",
    )
    p.add_argument("-o", "--output", type=Path, help="output file (default: <name>.<ext> in the current dir)")
    p.add_argument(
        "--reference", type=Path, help="checkpoint or run dir whose key names/order positional arrays map onto"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser


# -------------------------------------------------------------------------------- helpers


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return str(v) if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _main_metrics(metrics: dict[str, Any], monitor: str | None, limit: int = 3) -> str:
    # The run's monitored metric, then accuracy and loss: what a researcher scans a list for.
    keys = sorted(metrics, key=lambda k: (k != monitor, not k.endswith("accuracy"), not k.endswith("loss"), k))
    return " ".join(f"{k}={_fmt_value(metrics[k])}" for k in keys[:limit])


def _monitor(info: ManifestInfo) -> str | None:
    checkpoint_cfg = ((info.manifest or {}).get("config") or {}).get("checkpoint") or {}
    monitor = checkpoint_cfg.get("monitor") if isinstance(checkpoint_cfg, dict) else None
    return monitor if isinstance(monitor, str) else None


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _existing(path: Path) -> Path:
    if not path.exists():
        raise UsageError(f"{path}: no such file or directory")
    return path


def _run_label(ckpt_dir: Path, root: Path) -> str:
    run_dir = ckpt_dir.parent
    try:
        rel = run_dir.resolve().relative_to(root.resolve())
        return str(rel) if str(rel) != "." else str(root)
    except ValueError:
        return str(run_dir)


def _pointer_rounds(ckpt_dir: Path) -> dict[str, int | None]:
    return {name: (p or {}).get("round") for name in ("last", "best") for p in [read_pointer(ckpt_dir, name)]}


def _dirs_under(path: Path) -> list[Path]:
    if path.is_file():
        raise UsageError(f"{path}: expected a run dir, checkpoints dir or outputs root, got a file")
    return find_checkpoint_dirs(path)


# ------------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    root = _existing(args.path)
    dirs = _dirs_under(root)
    records = []
    memo: dict[tuple[str, str], str | None] = {}  # blobs are shared between rounds: check each once
    totals = []
    for ckpt_dir in dirs:
        pointers = _pointer_rounds(ckpt_dir)
        for info in scan(ckpt_dir):
            problems = verify(info.path, memo=memo)
            records.append(_record(info, ckpt_dir, root, pointers, problems))
        totals.append((_run_label(ckpt_dir, root), _dir_size(ckpt_dir)))
    if args.json:
        for rec in records:
            print(json.dumps(rec))
        return 0
    if not records:
        print(f"no checkpoints under {root}", file=sys.stderr)
        return 0
    headers = ["run", "round", "phase", "format", "metrics", "size", "clients", "status", "pointer"]
    rows = [
        [
            r["run"],
            str(r["round"]),
            r["phase"] or "?",
            r["format"] or "?",
            _main_metrics(r["metrics"], r["monitor"]),
            _human(r["size"]),
            f"{r['clients']} in {r['blobs']} blobs ({_human(r['blob_size'])})" if r["blobs"] else "-",
            "valid" if r["valid"] else f"INVALID: {r['problems'][0]}",
            ",".join(r["pointers"]),
        ]
        for r in records
    ]
    print(_table(headers, rows))
    if any(r["blobs"] for r in records):  # rounds share blobs: the sizes above overlap
        for run, size in totals:
            print(f"{run}: {_human(size)} on disk (each shared client-state blob once)")
    return 0


def _dir_size(ckpt_dir: Path) -> int:
    """Bytes of a checkpoints dir on disk (each shared client-state blob once)."""
    total = 0
    for d in (ckpt_dir, ckpt_dir / BLOBS_DIR):
        if d.is_dir():
            total += sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    return total


def _record(
    info: ManifestInfo, ckpt_dir: Path, root: Path, pointers: dict[str, int | None], problems: list[str]
) -> dict[str, Any]:
    return {
        "run": _run_label(ckpt_dir, root),
        "manifest": str(info.path),
        "round": info.round,
        "phase": info.phase,
        "format": info.format,
        "metrics": info.metrics,
        "monitor": _monitor(info),
        "size": info.size,  # weights, state and every client-state blob it references
        "blob_size": info.blob_size,
        "blobs": len(blob_entries(info.manifest or {})),
        "clients": len(referenced_blobs(info.manifest or {})),
        "valid": not problems,
        "problems": problems,
        "pointers": [name for name, rnd in pointers.items() if rnd == info.round],
    }


def cmd_verify(args: argparse.Namespace) -> int:
    path = _existing(args.path)
    results: list[tuple[Path, list[str]]] = []
    if path.is_file():
        manifest = manifest_for(path)
        if manifest is None:  # a bare weights file: structure only
            try:
                arrays = load_arrays(path)
            except CheckpointError as e:
                results.append((path, [str(e)]))
            else:
                print(f"ok       {path} ({len(arrays)} arrays; no manifest, so no checksum to compare)")
                return 0
        else:
            results.append((manifest, verify(manifest)))
    else:
        dirs = _dirs_under(path)
        memo: dict[tuple[str, str], str | None] = {}
        for ckpt_dir in dirs:
            infos = scan(ckpt_dir)
            names = {info.path.name for info in infos}
            for info in infos:
                results.append((info.path, verify(info.path, memo=memo)))
            for name in ("last", "best"):
                pointer_path = ckpt_dir / f"{name}.json"
                if pointer_path.exists():
                    pointer = read_pointer(ckpt_dir, name)
                    if pointer is None or pointer["manifest"] not in names:
                        target = pointer["manifest"] if pointer else "?"
                        results.append((pointer_path, [f"points at {target}, which is not a checkpoint here"]))
            blob_dir = ckpt_dir / BLOBS_DIR
            leftovers = [p.name for p in ckpt_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
            if blob_dir.is_dir():
                leftovers += [p.name for p in blob_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
                referenced = {n for i in infos for n, _ in blob_entries(i.manifest or {})}
                orphans = [
                    p for p in blob_dir.iterdir() if not p.name.startswith(TMP_PREFIX) and p.name not in referenced
                ]
                if orphans and all(i.manifest is not None for i in infos):
                    print(
                        f"note     {blob_dir}: {len(orphans)} client-state blob(s) no checkpoint references "
                        "(an interrupted save or clean-up; removed after the next save in this dir)"
                    )
            if leftovers:
                print(f"note     {ckpt_dir}: {len(leftovers)} leftover temp file(s) from an interrupted save")
        if not results:
            raise CheckpointError(f"{path}: no checkpoints found")
    bad = 0
    for target, problems in results:
        if problems:
            bad += 1
            print(f"INVALID  {target}: {'; '.join(problems)}")
        else:
            print(f"ok       {target}")
    if len(results) > 1 or bad:
        print(f"{len(results)} checked, {len(results) - bad} ok, {bad} invalid")
    return EXIT_INVALID if bad else 0


def cmd_export(args: argparse.Namespace) -> int:
    source = _existing(args.source)
    if args.round_dir:
        return _export_round_dir(source, args)
    if args.to is None:
        raise UsageError("export needs --to FORMAT (a weights file) or --round-dir -o DIR (a copy of one round)")
    ext = FORMATS[args.to]
    if args.output is not None:
        out = args.output
        try:
            out_fmt = format_from_path(out)
        except CheckpointError:
            out_fmt = None
        if out_fmt != args.to:
            raise UsageError(f"-o {out}: extension does not match --to {args.to} (use {ext})")
    else:
        out = Path.cwd() / f"{_export_stem(source)}{ext}"
    if out.exists() and out.resolve() == source.resolve():
        raise UsageError(f"{out}: output and source are the same file")
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; pass --force to overwrite it")
    if args.reference is not None:
        _existing(args.reference)

    arrays, manifest = load_any_weights(source)
    if args.reference is not None:
        reference, _ = load_any_weights(args.reference)
        arrays = match_reference(arrays, reference, source)
    elif manifest is None and is_positional(arrays):
        print(
            f"note: {source} holds positional arrays (arr_0 … arr_{len(arrays) - 1}); keeping those names "
            "(pass --reference <checkpoint or run dir> to use the model's state_dict keys)",
            file=sys.stderr,
        )
    _, size = save_arrays(out, arrays, args.to)
    print(f"wrote {out} ({args.to}, {len(arrays)} arrays, {_human(size)})")
    return 0


def _export_round_dir(source: Path, args: argparse.Namespace) -> int:
    if args.output is None:
        raise UsageError("--round-dir needs -o DIR (a new or empty directory)")
    if args.to is not None or args.reference is not None:
        raise UsageError("--round-dir copies the round as it is: --to and --reference do not apply")
    out: Path = args.output
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"-o {out}: exists and is not an empty directory")
    manifest = resolve_manifest(source)
    problems = verify(manifest)
    if problems:
        raise CheckpointError(f"{manifest}: not exported, it does not verify: {'; '.join(problems)}")
    written = copy_checkpoint(manifest, out)
    size = sum((out / n).stat().st_size for n in written)
    print(f"wrote {out} (round {manifest.stem.removeprefix('round-')}: {len(written)} files, {_human(size)})")
    return 0


def _export_stem(source: Path) -> str:
    if source.is_dir():  # run dir: name the file after the run and its latest round
        return resolve_manifest(source).stem
    return source.name.split(".", 1)[0] if manifest_for(source) else source.stem


# ----------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    commands = {"list": cmd_list, "verify": cmd_verify, "export": cmd_export}
    try:
        args = _build_parser().parse_args(argv)
        return commands[args.command](args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
