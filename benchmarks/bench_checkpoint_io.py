"""Checkpoint I/O benchmark: save/load time, file size and submit blocking per format.

    python benchmarks/bench_checkpoint_io.py              # ResNet-18 + MLP, 5 paired reps
    python benchmarks/bench_checkpoint_io.py --quick      # MLP only, 1 rep (CI smoke test)

Save time is compared with writing the same raw tensor bytes to a new file plus fsync,
measured in alternating pairs (raw, save, raw, save, ...) so that drift in disk or CPU speed
hits both alike; the reported ratio is the median of the per-pair ratios. Targets: save
<= 1.5x raw write, size <= 1.01x raw bytes, submit blocking <= 5 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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


def bench(name: str, arrays: dict[str, np.ndarray], fmt: str, reps: int, work: Path) -> dict[str, Any]:
    raw_bytes = sum(a.nbytes for a in arrays.values())
    ext = FORMATS[fmt]
    raw_s, save_s, ratios, raw_cpu, save_cpu = [], [], [], [], []  # type: ignore[var-annotated]
    for i in range(reps):  # A B A B ...: each save paired with a raw write just before it
        raw_path, save_path = work / f"raw-{i}.bin", work / f"save-{i}{ext}"
        a = timed(lambda: raw_write(raw_path, arrays), raw_cpu)
        b = timed(lambda: save_arrays(save_path, arrays, fmt), save_cpu)
        raw_s.append(a)
        save_s.append(b)
        ratios.append(b / a)
        raw_path.unlink()
    file_bytes = (work / f"save-0{ext}").stat().st_size
    load_s = [timed(lambda: load_arrays(work / f"save-{i}{ext}")) for i in range(reps)]

    blocked, background = [], []
    ckpt_dir = work / f"ckpt-{fmt}"
    with CheckpointWriter(ckpt_dir, fmt, CheckpointPolicy(keep_last=1)) as writer:
        for rnd in range(1, reps + 1):
            writer.submit(CheckpointData(round=rnd, phase="fit", weights=arrays))
            writer.wait()  # the target is for a submit with the previous save finished
        blocked, background = writer.blocked_s, writer.save_s
    for p in work.iterdir():
        if p.is_file():
            p.unlink()
    return {
        "model": name,
        "format": fmt,
        "arrays": len(arrays),
        "raw_bytes": raw_bytes,
        "file_bytes": file_bytes,
        "size_vs_raw": file_bytes / raw_bytes,
        "raw_write_s": statistics.median(raw_s),
        "save_s": statistics.median(save_s),
        "save_vs_raw": statistics.median(ratios),
        # CPU time (all threads): what a save costs regardless of how busy the machine is.
        "raw_write_cpu_s": statistics.median(raw_cpu),
        "save_cpu_s": statistics.median(save_cpu),
        "load_s": statistics.median(load_s),
        "submit_block_ms": statistics.median(blocked) * 1e3,
        "writer_save_s": statistics.median(background),
        "samples": {"raw_write_s": raw_s, "save_s": save_s, "load_s": load_s, "submit_block_s": blocked},
    }


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
            for fmt in FORMATS:
                rows.append(bench(name, arrays, fmt, reps, work))
    print(table(rows))
    result = {"machine": machine(), "reps": reps, "targets": TARGETS, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
