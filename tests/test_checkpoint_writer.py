"""Background writer: pointers, retention, error propagation, submit latency."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runner.checkpoint.formats import CheckpointError
from runner.checkpoint.policy import CheckpointPolicy
from runner.checkpoint.store import CheckpointData, read_pointer, scan, verify
from runner.checkpoint.writer import CheckpointWriter


def resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision resnet18's state_dict keys and shapes, in order (checked against
    torchvision once; spelled out so the tests need not import it)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    c_in = 64
    for layer, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            p = f"layer{layer}.{block}"
            first = block == 0
            shapes[f"{p}.conv1.weight"] = (c, c_in if first else c, 3, 3)
            bn(f"{p}.bn1", c)
            shapes[f"{p}.conv2.weight"] = (c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if first and c != c_in:
                shapes[f"{p}.downsample.0.weight"] = (c, c_in, 1, 1)
                bn(f"{p}.downsample.1", c)
        c_in = c
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


def resnet18_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: np.array(5, np.int64) if s == () else rng.standard_normal(s, dtype=np.float32)
        for k, s in resnet18_shapes().items()
    }


def small(seed: int) -> dict[str, np.ndarray]:
    return {"w": np.full((3, 2), seed, np.float32), "n": np.array(seed, np.int64)}


def ckpt(rnd: int, acc: float = 0.0, **kw) -> CheckpointData:  # type: ignore[no-untyped-def]
    fields = dict(round=rnd, phase="evaluate", weights=small(rnd), metrics={"acc": acc}, config={"seed": 0})
    fields.update(kw)
    return CheckpointData(**fields)  # type: ignore[arg-type]


def rounds(ckpt_dir: Path) -> list[int]:
    return [i.round for i in scan(ckpt_dir)]


def test_resnet18_shapes_are_real() -> None:
    shapes = resnet18_shapes()
    assert len(shapes) == 122
    assert sum(4 * int(np.prod(s)) for s in shapes.values() if s) == 46_796_448  # float32
    assert sum(1 for s in shapes.values() if s == ()) == 20  # BatchNorm num_batches_tracked


def test_pointers_retention_best_and_final(tmp_path: Path) -> None:
    policy = CheckpointPolicy(keep_last=2, monitor="acc")
    accs = [0.1, 0.9, 0.3, 0.4, 0.5]
    with CheckpointWriter(tmp_path, "npz", policy) as writer:
        for rnd, acc in enumerate(accs, start=1):
            is_best = policy.update_best(rnd, {"acc": acc})
            writer.submit(ckpt(rnd, acc, is_best=is_best))
    assert rounds(tmp_path) == [2, 4, 5]  # the last two plus the best
    assert read_pointer(tmp_path, "last") == {"round": 5, "manifest": "round-0005.json"}
    assert read_pointer(tmp_path, "best") == {"round": 2, "manifest": "round-0002.json"}
    assert all(verify(i.path) == [] for i in scan(tmp_path))
    assert len(writer.blocked_s) == 5 and len(writer.save_s) == 5


def test_callable_weights_run_on_the_writer_thread(tmp_path: Path) -> None:
    seen = []

    def convert() -> dict[str, np.ndarray]:
        seen.append(threading.current_thread().name)
        return small(1)

    with CheckpointWriter(tmp_path, "safetensors") as writer:
        writer.submit(ckpt(1, weights=convert))
    assert len(seen) == 1 and seen[0].startswith("ckpt-writer") and seen[0] != threading.main_thread().name


def test_error_is_reraised_at_next_submit_and_previous_checkpoint_survives(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path, "npz", CheckpointPolicy(keep_last=1))
    writer.submit(ckpt(1))

    def broken() -> dict[str, np.ndarray]:
        raise RuntimeError("conversion failed")

    writer.submit(ckpt(2, weights=broken))
    with pytest.raises(RuntimeError, match="conversion failed"):
        writer.submit(ckpt(3))
    # The failed round 2 must not have cost us round 1 (keep_last=1 notwithstanding).
    assert rounds(tmp_path) == [1] and verify(tmp_path / "round-0001.json") == []
    assert read_pointer(tmp_path, "last")["round"] == 1  # type: ignore[index]
    writer.submit(ckpt(3))
    writer.close()
    assert rounds(tmp_path) == [3]


def test_error_is_reraised_at_close(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path, "torch")
    writer.submit(ckpt(1, weights={"bad": np.array([object()], dtype=object)}))
    with pytest.raises(CheckpointError, match="dtype object"):
        writer.close()
    writer.close()  # the error is reported once
    with pytest.raises(CheckpointError, match="closed"):
        writer.submit(ckpt(2))


def test_unwritable_dir_fails_at_construction(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(CheckpointError) as err:
        CheckpointWriter(blocker / "checkpoints", "npz")
    msg = str(err.value)
    assert "not writable" in msg and "checkpoints" in msg and "\n" not in msg
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        CheckpointWriter(tmp_path / "ck", "pickle")


def test_mark_best_for_a_fit_phase_checkpoint(tmp_path: Path) -> None:
    policy = CheckpointPolicy(keep_last=1, monitor="acc")
    with CheckpointWriter(tmp_path, "npz", policy) as writer:
        writer.submit(ckpt(1, phase="fit"))
        policy.update_best(1, {"acc": 0.9})
        writer.mark_best(1)  # possibly still in flight: applied when the save completes
        writer.wait()
        assert read_pointer(tmp_path, "best")["round"] == 1  # type: ignore[index]
        writer.submit(ckpt(2, phase="fit"))
        writer.wait()
        policy.update_best(2, {"acc": 0.95})
        writer.mark_best(2)  # already on disk: pointer written now
        assert read_pointer(tmp_path, "best")["round"] == 2  # type: ignore[index]
        writer.submit(ckpt(3, phase="fit"))
    assert rounds(tmp_path) == [2, 3]


def test_protected_and_resumed_from_rounds_are_kept(tmp_path: Path) -> None:
    with CheckpointWriter(tmp_path, "npz", CheckpointPolicy(keep_last=1)) as writer:
        for rnd in (1, 2, 3):
            writer.submit(ckpt(rnd))
    assert rounds(tmp_path) == [3]
    # A run resumed from round 3 into the same dir, also told to keep round 1 safe.
    with CheckpointWriter(tmp_path, "npz", CheckpointPolicy(keep_last=1), protected_rounds={1}) as writer:
        for rnd in (4, 5):
            writer.submit(ckpt(rnd, resumed_from=str(tmp_path / "round-0003.json")))
    assert rounds(tmp_path) == [3, 5]
    assert json.loads((tmp_path / "round-0005.json").read_text())["resumed_from"].endswith("round-0003.json")


def test_submit_blocking_time_for_resnet18_sized_state(tmp_path: Path) -> None:
    state = resnet18_state()
    with CheckpointWriter(tmp_path, "npz") as writer:
        writer.submit(ckpt(1, weights=state))
        writer.wait()
        writer.submit(ckpt(2, weights=state))  # previous save finished: should not block
        t0 = time.perf_counter()
        writer.submit(ckpt(3, weights=state))  # previous save in flight: waits for it
        waited = time.perf_counter() - t0
    assert len(writer.blocked_s) == 3 and all(b >= 0 for b in writer.blocked_s)
    assert writer.blocked_s[2] <= waited
    print(
        f"\nResNet-18 sized state ({sum(a.nbytes for a in state.values()) / 1e6:.1f} MB): "
        f"submit blocked {writer.blocked_s[1] * 1e3:.2f} ms with no save in flight, "
        f"{writer.blocked_s[2] * 1e3:.1f} ms behind one; background save {np.median(writer.save_s) * 1e3:.0f} ms"
    )
    assert verify(tmp_path / "round-0003.json") == []


def test_exit_without_close_flushes_the_save_and_does_not_hang(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    child = (
        "import sys, numpy as np\n"
        "from runner.checkpoint.store import CheckpointData\n"
        "from runner.checkpoint.writer import CheckpointWriter\n"
        "w = CheckpointWriter(sys.argv[1], 'npz')\n"
        "w.submit(CheckpointData(round=1, phase='fit', weights={'w': np.ones((1024, 1024))}))\n"
        "raise SystemExit('crashed after submit, never closed')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-c", child, str(tmp_path)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 1 and b"never closed" in proc.stderr
    assert verify(tmp_path / "round-0001.json") == []
    assert read_pointer(tmp_path, "last") == {"round": 1, "manifest": "round-0001.json"}
