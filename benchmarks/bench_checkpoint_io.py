"""Checkpoint I/O benchmark: save/load time, file size and submit blocking per format.

    python benchmarks/bench_checkpoint_io.py              # ResNet-18 + MLP, 5 paired reps
    python benchmarks/bench_checkpoint_io.py --quick      # MLP only, 1 rep (CI smoke test)

Save time is compared with writing the same raw tensor bytes to a new file plus fsync,
measured in alternating pairs (raw, save, raw, save, ...) so that drift in disk or CPU speed
hits both alike; the reported ratio is the median of the per-pair ratios. Formats take turns
within each repetition (rotating order). CPU time per save is reported too: on a shared
machine it is steadier than wall time. Targets: save
<= 1.5x raw write, size <= 1.01x raw bytes, submit blocking <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.checkpoint.formats import FORMATS, load_arrays, save_arrays  # noqa: E402
from runner.checkpoint.policy import CheckpointPolicy  # noqa: E402
from runner.checkpoint.store import CheckpointData  # noqa: E402
from runner.checkpoint.writer import CheckpointWriter  # noqa: E402

TARGETS = {"save_vs_raw": 1.5, "size_vs_raw": 1.01, "submit_block_ms": 5.0}


def resnet18_state() -> dict[str, np.ndarray]:
    import torch
    import torchvision

    torch.manual_seed(0)
    return {k: v.numpy().copy() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}


def mlp_state() -> dict[str, np.ndarray]:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def raw_write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The floor: the tensors' bytes, written once to a new file and fsynced."""
    with open(path, "wb") as f:
        for arr in arrays.values():
            f.write(memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())


def timed(fn: Callable[[], Any], cpu: list[float] | None = None) -> float:
    """Wall seconds of fn(); appends its CPU seconds (all threads) to ``cpu`` if given."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(time.process_time() - c0)
    return wall


def bench_model(name: str, arrays: dict[str, np.ndarray], reps: int, work: Path) -> list[dict[str, Any]]:
    raw_bytes = sum(a.nbytes for a in arrays.values())
    keys = ("raw", "save", "ratio", "raw_cpu", "save_cpu", "load")
    samples: dict[str, dict[str, list[float]]] = {fmt: {k: [] for k in keys} for fmt in FORMATS}
    file_bytes: dict[str, int] = {}
    formats = list(FORMATS)
    for i in range(reps):
        # A B A B ...: each save paired with a raw write of the same bytes just before it.
        # The format order rotates per repetition so drift hits every format alike.
        for fmt in formats[i % len(formats) :] + formats[: i % len(formats)]:
            raw_path, save_path = work / "raw.bin", work / f"save{FORMATS[fmt]}"
            s = samples[fmt]
            a = timed(partial(raw_write, raw_path, arrays), s["raw_cpu"])
            b = timed(partial(save_arrays, save_path, arrays, fmt), s["save_cpu"])
            s["raw"].append(a)
            s["save"].append(b)
            s["ratio"].append(b / a)
            s["load"].append(timed(partial(load_arrays, save_path)))
            file_bytes[fmt] = save_path.stat().st_size
            # Recycle the page cache (on a VM, first-touched memory costs a host fault: with
            # files piling up, even the raw write got 4x slower) and let the deletions'
            # journal commit happen here, untimed, not inside the next pair's fsync.
            raw_path.unlink()
            save_path.unlink()
            os.sync()

    rows = []
    for fmt in formats:
        s = samples[fmt]
        with CheckpointWriter(work / f"ckpt-{fmt}", fmt, CheckpointPolicy(keep_last=1)) as writer:
            for rnd in range(1, reps + 1):
                writer.submit(CheckpointData(round=rnd, phase="fit", weights=arrays))
                writer.wait()  # the target is for a submit with the previous save finished
        rows.append(
            {
                "model": name,
                "format": fmt,
                "arrays": len(arrays),
                "raw_bytes": raw_bytes,
                "file_bytes": file_bytes[fmt],
                "size_vs_raw": file_bytes[fmt] / raw_bytes,
                "raw_write_s": statistics.median(s["raw"]),
                "save_s": statistics.median(s["save"]),
                "save_vs_raw": statistics.median(s["ratio"]),
                # CPU time (all threads): what a save costs however busy the machine is.
                "raw_write_cpu_s": statistics.median(s["raw_cpu"]),
                "save_cpu_s": statistics.median(s["save_cpu"]),
                "load_s": statistics.median(s["load"]),
                "submit_block_ms": statistics.median(writer.blocked_s) * 1e3,
                "writer_save_s": statistics.median(writer.save_s),
                "samples": {
                    "raw_write_s": s["raw"],
                    "save_s": s["save"],
                    "load_s": s["load"],
                    "submit_block_s": writer.blocked_s,
                },
            }
        )
    shutil.rmtree(work)
    work.mkdir()
    return rows


def machine() -> dict[str, Any]:
    import importlib.metadata as md

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        # Other work on the machine skews timings; record how busy it was.
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "torch": md.version("torch"),
        "safetensors": md.version("safetensors"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<9} {'format':<12} {'MB':>6} {'size/raw':>9} {'raw ms':>7} {'save ms':>8} "
        f"{'save/raw':>9} {'load ms':>8} {'submit ms':>10} {'cpu ms raw/save':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        flag = lambda ok: " " if ok else "!"  # noqa: E731
        lines.append(
            f"{r['model']:<9} {r['format']:<12} {r['raw_bytes'] / 1e6:>6.1f} "
            f"{r['size_vs_raw']:>8.4f}{flag(r['size_vs_raw'] <= TARGETS['size_vs_raw'])}"
            f"{r['raw_write_s'] * 1e3:>7.1f} {r['save_s'] * 1e3:>8.1f} "
            f"{r['save_vs_raw']:>8.2f}{flag(r['save_vs_raw'] <= TARGETS['save_vs_raw'])}"
            f"{r['load_s'] * 1e3:>8.1f} "
            f"{r['submit_block_ms']:>9.2f}{flag(r['submit_block_ms'] <= TARGETS['submit_block_ms'])}"
            f"{r['raw_write_cpu_s'] * 1e3:>8.1f}/{r['save_cpu_s'] * 1e3:<7.1f}"
        )
    lines.append(
        f"targets: save/raw <= {TARGETS['save_vs_raw']}, size/raw <= {TARGETS['size_vs_raw']}, "
        f"submit <= {TARGETS['submit_block_ms']} ms ('!' = missed); medians"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "checkpoint_io.json")
    parser.add_argument("--quick", action="store_true", help="1 repetition, small model only")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    models = {"mlp": mlp_state} if args.quick else {"resnet18": resnet18_state, "mlp": mlp_state}

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-", dir=args.dir) as tmp:
        work = Path(tmp)
        for name, build in models.items():
            arrays = build()
            # Untimed pass over every format first: imports, allocator and page-cache warm-up.
            # Without it the first format measured was ~2x slower, whichever it was.
            for _ in range(2):
                for fmt in FORMATS:
                    save_arrays(work / f"warmup{FORMATS[fmt]}", arrays, fmt)
                    load_arrays(work / f"warmup{FORMATS[fmt]}")
            rows += bench_model(name, arrays, reps, work)
    print(table(rows))
    result = {"machine": machine(), "reps": reps, "targets": TARGETS, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
