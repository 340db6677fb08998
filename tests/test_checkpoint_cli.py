"""``python -m runner.ckpt``, run as a user would: list, verify, export, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runner.checkpoint.policy import CheckpointPolicy
from runner.checkpoint.store import CheckpointData
from runner.checkpoint.writer import CheckpointWriter

ROOT = Path(__file__).resolve().parents[1]


def ckpt(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "runner.ckpt", *map(str, args)],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def model_state(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "0.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "0.bias": rng.standard_normal(16).astype(np.float32),
        "1.running_mean": rng.standard_normal(16).astype(np.float32),
        "1.num_batches_tracked": np.array(12, np.int64),
        "2.weight": rng.standard_normal((3, 16)).astype(np.float64),
        "2.empty": np.zeros((0, 4), np.float32),
    }


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    """outputs/<date>/<time>/checkpoints with rounds 1-3 (best: 2) in npz."""
    run = tmp_path / "outputs" / "2026-11-24" / "10-00-00"
    policy = CheckpointPolicy(monitor="centralized_accuracy")
    with CheckpointWriter(run / "checkpoints", "npz", policy) as writer:
        for rnd, acc in ((1, 0.5), (2, 0.8), (3, 0.7)):
            metrics = {"centralized_accuracy": acc, "centralized_loss": 1 - acc}
            writer.submit(
                CheckpointData(
                    round=rnd,
                    phase="evaluate",
                    weights=model_state(rnd),
                    metrics=metrics,
                    is_best=policy.update_best(rnd, metrics),
                )
            )
    return tmp_path / "outputs"


def run_dir(outputs: Path) -> Path:
    return outputs / "2026-11-24" / "10-00-00"


def test_list_and_verify(outputs: Path) -> None:
    proc = ckpt("list", outputs)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["run", "round", "phase", "format"]
    assert len(lines) == 4
    assert lines[2].split()[:4] == ["2026-11-24/10-00-00", "2", "evaluate", "npz"]
    assert "centralized_accuracy=0.8" in lines[2] and "valid" in lines[2] and lines[2].endswith("best")
    assert lines[3].endswith("last")

    proc = ckpt("verify", outputs)
    assert proc.returncode == 0 and proc.stdout.count("ok ") == 3 and "3 checked, 3 ok, 0 invalid" in proc.stdout

    weights = run_dir(outputs) / "checkpoints" / "round-0002.npz"
    data = bytearray(weights.read_bytes())
    data[-200] ^= 0xFF  # flip a byte inside the arrays
    weights.write_bytes(bytes(data))
    proc = ckpt("verify", outputs)
    assert proc.returncode == 1
    assert "INVALID" in proc.stdout and "round-0002.npz: checksum mismatch" in proc.stdout
    assert ckpt("verify", run_dir(outputs) / "checkpoints" / "round-0003.json").returncode == 0
    assert ckpt("verify", weights).returncode == 1  # a weights file is checked via its manifest

    records = [json.loads(line) for line in ckpt("list", outputs, "--json").stdout.splitlines()]
    assert [(r["round"], r["valid"], r["pointers"]) for r in records] == [
        (1, True, []),
        (2, False, ["best"]),
        (3, True, ["last"]),
    ]


def test_export_round_trips_between_all_formats(outputs: Path, tmp_path: Path) -> None:
    import safetensors.numpy
    import torch

    want = model_state(3)
    out = tmp_path / "exports"
    out.mkdir()
    # run dir (latest valid) -> torch -> safetensors -> npz
    assert ckpt("export", run_dir(outputs), "--to", "torch", cwd=out).returncode == 0
    assert (out / "round-0003.pt").exists()
    assert ckpt("export", out / "round-0003.pt", "--to", "safetensors", "-o", out / "b.safetensors").returncode == 0
    proc = ckpt("export", out / "b.safetensors", "--to", "npz", "-o", out / "c.npz")
    assert proc.returncode == 0 and "wrote" in proc.stdout and "6 arrays" in proc.stdout

    readers = {
        "round-0003.pt": lambda p: {k: v.numpy() for k, v in torch.load(p, weights_only=True).items()},
        "b.safetensors": safetensors.numpy.load_file,
        "c.npz": lambda p: dict(np.load(p)),
    }
    for name, read in readers.items():
        got = read(out / name)
        assert set(got) == set(want), name
        for key, arr in want.items():
            assert got[key].dtype == arr.dtype and got[key].shape == arr.shape, (name, key)
            assert got[key].tobytes() == arr.tobytes(), (name, key)
    assert list(dict(np.load(out / "c.npz"))) == list(want)  # state_dict order survives


def test_export_migrates_flower_howto_files(outputs: Path, tmp_path: Path) -> None:
    import torch

    trained = model_state(7)
    howto_npz = tmp_path / "round-5-weights.npz"
    np.savez(howto_npz, *trained.values())  # Flower how-to: positional arr_0, arr_1, ...

    ref = ("--reference", run_dir(outputs))
    proc = ckpt("export", howto_npz, "--to", "safetensors", "-o", tmp_path / "named.safetensors", *ref)
    assert proc.returncode == 0, proc.stderr
    from runner.checkpoint.formats import load_arrays

    named = load_arrays(tmp_path / "named.safetensors")
    assert list(named) == list(trained) and all(np.array_equal(named[k], trained[k]) for k in trained)

    proc = ckpt("export", howto_npz, "--to", "npz", "-o", tmp_path / "positional.npz")
    assert proc.returncode == 0 and "positional arrays" in proc.stderr and "--reference" in proc.stderr
    assert list(np.load(tmp_path / "positional.npz")) == [f"arr_{i}" for i in range(len(trained))]

    howto_pth = tmp_path / "model_round_5.pth"
    torch.save({k: torch.from_numpy(v) for k, v in trained.items()}, howto_pth)
    proc = ckpt("export", howto_pth, "--to", "npz", "-o", tmp_path / "from_pth.npz", *ref)
    assert proc.returncode == 0, proc.stderr
    got = dict(np.load(tmp_path / "from_pth.npz"))
    assert list(got) == list(trained) and all(np.array_equal(got[k], trained[k]) for k in trained)

    wrong = {**trained, "0.weight": np.zeros((4, 8), np.float32)}
    np.savez(tmp_path / "round-6-weights.npz", *wrong.values())
    proc = ckpt("export", tmp_path / "round-6-weights.npz", "--to", "npz", "-o", tmp_path / "x.npz", *ref)
    assert_one_line_error(proc, 1, "does not fit the model", "0.weight: expected float32[16, 8], got float32[4, 8]")
    assert not (tmp_path / "x.npz").exists()


def test_refuses_to_overwrite_and_errors_are_one_line(outputs: Path, tmp_path: Path) -> None:
    target = tmp_path / "w.npz"
    target.write_bytes(b"precious")
    source = run_dir(outputs) / "checkpoints" / "round-0001.json"
    assert_one_line_error(ckpt("export", source, "--to", "npz", "-o", target), 2, "exists", "--force")
    assert target.read_bytes() == b"precious"
    assert ckpt("export", source, "--to", "npz", "-o", target, "--force").returncode == 0
    assert list(np.load(target)) == list(model_state(1))

    assert_one_line_error(ckpt("export", source, "--to", "pickle"), 2, "invalid choice: 'pickle'")
    proc = ckpt("export", source, "--to", "torch", "-o", tmp_path / "w.npz")
    assert_one_line_error(proc, 2, "does not match --to torch")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    proc = ckpt("export", tmp_path / "weights.bin", "--to", "npz")
    assert_one_line_error(proc, 1, "weights.bin", "unknown checkpoint format '.bin'")
    assert_one_line_error(ckpt("verify", tmp_path / "missing"), 2, "no such file or directory")
    assert_one_line_error(ckpt("list"), 2, "path")
    (run_dir(outputs) / "checkpoints" / "round-0001.npz").write_bytes(b"torn")
    assert_one_line_error(ckpt("export", source, "--to", "npz", "-o", tmp_path / "y.npz"), 1, "checksum mismatch")
