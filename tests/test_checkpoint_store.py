"""Checkpoint dir layout: manifest, pointers, verify, scan, load, remove."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

from runner.checkpoint.formats import FORMATS, CheckpointError, load_arrays
from runner.checkpoint.store import (
    CheckpointData,
    find_checkpoint_dirs,
    latest_valid,
    load_checkpoint,
    manifest_for,
    read_manifest,
    read_pointer,
    remove_checkpoint,
    resolve_manifest,
    round_stem,
    scan,
    verify,
    write_checkpoint,
    write_pointer,
)


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.standard_normal((8, 4)).astype(np.float32),
        "fc.bias": rng.standard_normal(8).astype(np.float32),
        "bn.num_batches_tracked": np.array(seed, dtype=np.int64),
    }


def data(rnd: int, **kw) -> CheckpointData:  # type: ignore[no-untyped-def]
    fields = dict(
        round=rnd,
        phase="evaluate",
        weights=weights(rnd),
        state_arrays={"m_t/fc.weight": np.full((8, 4), 0.5, np.float32), "v_t/fc.weight": np.ones((8, 4))},
        state={"rng": {"python": [3, [1, 2, 3], None]}, "history": [{"round": rnd, "loss": float("nan")}]},
        metrics={"centralized_accuracy": 0.5 + rnd / 100, "centralized_loss": float("nan"), "x": float("inf")},
        fingerprint="abc123",
        config={"seed": 0, "model": {"name": "mlp"}},
        resumed_from=None,
        is_best=False,
    )
    fields.update(kw)
    return CheckpointData(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_write_checkpoint_layout_and_manifest(tmp_path: Path, fmt: str) -> None:
    ext = FORMATS[fmt]
    path = write_checkpoint(tmp_path, data(3), fmt)
    assert path == tmp_path / "round-0003.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["round-0003.json", f"round-0003{ext}", f"round-0003.state{ext}"]
    )
    m = read_manifest(path)
    assert m["schema"] == 1 and m["round"] == 3 and m["phase"] == "evaluate" and m["format"] == fmt
    assert m["files"]["weights"]["name"] == f"round-0003{ext}"
    assert m["files"]["weights"]["size"] == (tmp_path / f"round-0003{ext}").stat().st_size
    assert len(m["files"]["weights"]["sha256"]) == 64
    assert m["files"]["state"]["name"] == f"round-0003.state{ext}"
    assert m["fingerprint"] == "abc123" and m["config"] == {"seed": 0, "model": {"name": "mlp"}}
    assert m["resumed_from"] is None and "T" in m["created"]
    assert set(m["versions"]) == {"runner", "flwr", "torch", "numpy", "python"}
    assert m["metrics"]["centralized_accuracy"] == 0.53
    assert math.isnan(m["metrics"]["centralized_loss"]) and m["metrics"]["x"] == math.inf
    assert math.isnan(m["state"]["history"][0]["loss"])
    assert m["state"]["rng"] == {"python": [3, [1, 2, 3], None]}
    assert verify(path) == []

    loaded = load_checkpoint(path)
    assert list(loaded.weights) == list(weights(3))
    for key, arr in weights(3).items():
        assert loaded.weights[key].dtype == arr.dtype and np.array_equal(loaded.weights[key], arr)
    assert list(loaded.state_arrays) == ["m_t/fc.weight", "v_t/fc.weight"]
    assert loaded.state_arrays["v_t/fc.weight"].dtype == np.float64


def test_no_state_file_when_no_state_arrays_and_callable_weights(tmp_path: Path) -> None:
    calls = []

    def lazy() -> dict[str, np.ndarray]:
        calls.append(1)
        return weights(1)

    path = write_checkpoint(tmp_path, data(1, weights=lazy, state_arrays={}), "npz")
    assert calls == [1]
    assert read_manifest(path)["files"]["state"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round-0001.json", "round-0001.npz"]
    assert load_checkpoint(path).state_arrays == {}


def test_round_names_are_zero_padded_and_grow() -> None:
    assert round_stem(3) == "round-0003"
    assert round_stem(9999) == "round-9999"
    assert round_stem(12345) == "round-12345"


def test_verify_catches_truncation_and_flipped_byte(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, data(2), "npz")
    wfile = tmp_path / "round-0002.npz"
    good = wfile.read_bytes()

    wfile.write_bytes(good[:-10])  # truncated
    problems = verify(path)
    assert len(problems) == 1 and "round-0002.npz" in problems[0] and "checksum mismatch" in problems[0]
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)

    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x01  # same size, one bit differs inside the array bytes
    wfile.write_bytes(bytes(flipped))
    problems = verify(path)
    assert len(problems) == 1 and "checksum mismatch" in problems[0] and "sha256" in problems[0]
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="CRC"):  # unverified, npz's own CRC still catches it
        load_checkpoint(path, verify=False)

    wfile.write_bytes(good)
    assert verify(path) == []
    (tmp_path / "round-0002.state.npz").unlink()
    assert verify(path) == ["round-0002.state.npz: missing"]


def test_verify_rejects_bad_manifests(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, data(1), "npz")
    m = json.loads(path.read_text())
    for change, expect in [
        ({"schema": 99}, "unknown manifest schema 99"),
        ({"format": "pickle"}, "format 'pickle'"),
        ({"files": {"weights": {"name": "../../etc/passwd", "sha256": "0", "size": 1}}}, "not a plain file name"),
        ({"round": "3"}, "round is not"),
    ]:
        path.write_text(json.dumps({**m, **change}))
        problems = verify(path)
        assert len(problems) == 1 and expect in problems[0], problems
    path.write_text('{"schema": 1, "round": 1,')  # torn JSON
    assert "not valid JSON" in verify(path)[0]


def test_scan_sorted_by_manifest_round_ignores_and_cleans_temp_files(tmp_path: Path) -> None:
    for rnd in (10, 2, 1):
        write_checkpoint(tmp_path, data(rnd), "npz")
    (tmp_path / ".tmp-round-0011.npz.1234abcd").write_bytes(b"torn")
    (tmp_path / ".tmp-round-0011.json.deadbeef").write_bytes(b"{")
    (tmp_path / "round-0005.json").write_text("{not json")  # listed, with its error
    (tmp_path / "notes.json").write_text("{}")  # not a round manifest
    infos = scan(tmp_path)
    assert [i.round for i in infos] == [1, 2, 5, 10]
    assert infos[2].manifest is None and "not valid JSON" in (infos[2].error or "")
    assert infos[3].phase == "evaluate" and infos[3].format == "npz" and infos[3].size > 0
    assert len(list(tmp_path.glob(".tmp-*"))) == 2  # not cleaned unless asked

    old = time.time() - 60
    for p in tmp_path.glob(".tmp-*"):
        os.utime(p, (old, old))
    scan(tmp_path, cleanup=True)
    assert list(tmp_path.glob(".tmp-*")) == []
    assert latest_valid(tmp_path) == tmp_path / "round-0010.json"


def test_pointers(tmp_path: Path) -> None:
    assert read_pointer(tmp_path, "last") is None
    write_pointer(tmp_path, "last", 7)
    assert read_pointer(tmp_path, "last") == {"round": 7, "manifest": "round-0007.json"}
    assert json.loads((tmp_path / "last.json").read_text()) == {"round": 7, "manifest": "round-0007.json"}
    (tmp_path / "best.json").write_text('{"round": 1, "manifest": "../x.json"}')
    assert read_pointer(tmp_path, "best") is None
    assert not any(p.is_symlink() for p in tmp_path.iterdir())


def test_remove_checkpoint_removes_manifest_and_files_only_of_that_round(tmp_path: Path) -> None:
    for rnd in (3, 30):
        write_checkpoint(tmp_path, data(rnd), "safetensors")
    remove_checkpoint(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "round-0030.json",
        "round-0030.safetensors",
        "round-0030.state.safetensors",
    ]
    remove_checkpoint(tmp_path, 3)  # idempotent


def test_find_dirs_and_resolve_manifest(tmp_path: Path) -> None:
    run_a = tmp_path / "outputs" / "2026-11-24" / "10-00-00"
    run_b = tmp_path / "multirun" / "2026-11-24" / "11-00-00" / "0"
    for run, rounds in ((run_a, (1, 2)), (run_b, (4,))):
        for rnd in rounds:
            write_checkpoint(run / "checkpoints", data(rnd), "npz")
    (run_a / ".hydra").mkdir()
    assert find_checkpoint_dirs(tmp_path) == [run_b / "checkpoints", run_a / "checkpoints"]
    assert find_checkpoint_dirs(run_a / "checkpoints") == [run_a / "checkpoints"]

    ck = run_a / "checkpoints"
    assert resolve_manifest(run_a) == ck / "round-0002.json"
    assert resolve_manifest(ck) == ck / "round-0002.json"
    assert resolve_manifest(ck / "round-0001.npz") == ck / "round-0001.json"
    assert manifest_for(ck / "round-0001.state.npz") == ck / "round-0001.json"
    (ck / "round-0002.npz").write_bytes(b"garbage")  # newest is corrupt: fall back, by round
    assert resolve_manifest(run_a) == ck / "round-0001.json"
    with pytest.raises(CheckpointError, match="2 checkpoints/ dirs"):
        resolve_manifest(tmp_path)
    lone = tmp_path / "round-3-weights.npz"
    np.savez(lone, np.zeros(2))
    with pytest.raises(CheckpointError, match="no manifest beside it"):
        resolve_manifest(lone)
    assert list(load_arrays(lone)) == ["arr_0"]


def test_saving_a_round_again_replaces_it_without_a_stale_manifest(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, data(4), "torch")
    seen: list[bool] = []

    def lazy() -> dict[str, np.ndarray]:  # runs before any file of the new save is written
        seen.append((tmp_path / "round-0004.json").exists())
        return weights(40)

    path = write_checkpoint(tmp_path, data(4, weights=lazy, state_arrays={}), "torch")
    assert seen == [False]
    assert verify(path) == [] and not (tmp_path / "round-0004.state.pt").exists()
    assert int(load_checkpoint(path).weights["bn.num_batches_tracked"]) == 40
