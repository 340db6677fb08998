"""The checkpoint I/O benchmark's CI smoke mode runs and writes its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_quick_mode(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_checkpoint_io.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["reps"] == 1
    rows = result["results"]
    assert [(r["model"], r["format"]) for r in rows] == [("mlp", "npz"), ("mlp", "torch"), ("mlp", "safetensors")]
    for r in rows:
        assert r["file_bytes"] >= r["raw_bytes"] > 0
        assert r["save_s"] > 0 and r["raw_write_s"] > 0 and r["load_s"] > 0 and r["submit_block_ms"] >= 0
    assert "save/raw" in proc.stdout
