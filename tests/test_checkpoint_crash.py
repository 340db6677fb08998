"""Crash safety: SIGKILL in the middle of a save never leaves a torn checkpoint that looks valid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from runner.checkpoint.formats import FORMATS, TMP_PREFIX, load_arrays
from runner.checkpoint.store import load_checkpoint, read_pointer, scan, verify

ROOT = Path(__file__).resolve().parents[1]

# Saves 16 MB checkpoints forever (keep_last=2); round r's weights are all equal to r.
CHILD = """
import sys
import numpy as np
from runner.checkpoint.policy import CheckpointPolicy
from runner.checkpoint.store import CheckpointData
from runner.checkpoint.writer import CheckpointWriter

ckpt_dir, fmt = sys.argv[1], sys.argv[2]
with CheckpointWriter(ckpt_dir, fmt, CheckpointPolicy(keep_last=2)) as writer:
    for rnd in range(1, 1_000_000):
        w = np.full((2048, 2048), rnd, dtype=np.float32)
        writer.submit(CheckpointData(
            round=rnd, phase="fit", weights={"w": w, "n": np.array(rnd, np.int64)},
            state_arrays={"m_t/w": w * 2}, state={"round": rnd}, metrics={"loss": 1.0 / rnd},
        ))
"""


def _wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.0005)
    return False


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_sigkill_mid_save_leaves_only_valid_checkpoints(tmp_path: Path, fmt: str) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt_dir), fmt], cwd=ROOT, env=env)
    try:
        assert _wait_for(lambda: (ckpt_dir / "round-0003.json").exists() or child.poll() is not None, 60)
        assert child.poll() is None, "writer process died on its own"
        # Kill the moment a weights/state temp file shows up: in the middle of a 16 MB write.
        torn = f"{TMP_PREFIX}round-"
        caught = _wait_for(lambda: any(n.startswith(torn) and FORMATS[fmt] in n for n in os.listdir(ckpt_dir)), 10)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL

    infos = scan(ckpt_dir)
    assert len(infos) >= 1
    valid_files = {"last.json", "best.json"}
    for info in infos:  # every manifest present verifies, and holds what was saved
        assert verify(info.path) == [], info.path
        loaded = load_checkpoint(info.path)
        assert np.all(loaded.weights["w"] == info.round) and int(loaded.weights["n"]) == info.round
        assert np.all(loaded.state_arrays["m_t/w"] == 2 * info.round)
        files = info.manifest["files"].values()  # type: ignore[index]
        valid_files |= {info.path.name, *(e["name"] for e in files if e)}
    last = read_pointer(ckpt_dir, "last")
    assert last is not None and last["manifest"] in {i.path.name for i in infos}

    leftovers = sorted(n for n in os.listdir(ckpt_dir) if n.startswith(TMP_PREFIX))
    others = sorted(set(os.listdir(ckpt_dir)) - valid_files - set(leftovers))
    # Files of the save in flight that were already renamed into place have no manifest, so
    # they are not a checkpoint; being renamed only when complete, they are not torn either.
    for name in others:
        assert name.startswith(f"round-{last['round'] + 1:04d}."), others
        arrays = load_arrays(ckpt_dir / name)
        assert np.all(arrays[next(iter(arrays))] != 0)
    print(
        f"\n{fmt}: killed {'during a file write' if caught else 'between files'}; "
        f"{len(infos)} valid checkpoints, leftovers {leftovers}, orphans {others}"
    )

    scan(ckpt_dir, cleanup=True)
    assert not any(n.startswith(TMP_PREFIX) for n in os.listdir(ckpt_dir))
    assert [verify(i.path) for i in scan(ckpt_dir)] == [[] for _ in infos]
