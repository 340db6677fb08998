"""Weight files: exact round trips, plain-library reads, no pickle, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from runner.checkpoint.formats import (
    FORMATS,
    CheckpointError,
    atomic_write,
    format_from_path,
    load_arrays,
    save_arrays,
    sha256_file,
)


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "fc.bias": rng.standard_normal(5),  # float64
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),  # 0-d, as in BatchNorm
        "empty": np.zeros((0, 3), dtype=np.float32),
        "a.first_by_name_but_last_in_order": np.arange(6, dtype=np.int32).reshape(2, 3),
        "flags": np.array([True, False, True]),
        "half": np.linspace(-1, 1, 4).astype(np.float16),
        "bytes": np.arange(5, dtype=np.uint8),
    }


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)  # key order preserved
    for key, arr in want.items():
        assert got[key].dtype == arr.dtype, key
        assert got[key].shape == arr.shape, key
        assert got[key].tobytes() == arr.tobytes(), key  # bit for bit (NaN payloads included)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_round_trip_bit_for_bit(tmp_path: Path, fmt: str) -> None:
    arrays = sample_arrays()
    arrays["fc.bias"][1] = np.nan
    arrays["fc.bias"][2] = -np.inf
    path = tmp_path / f"w{FORMATS[fmt]}"
    sha, size = save_arrays(path, arrays, fmt)
    assert (sha, size) == sha256_file(path)  # hash computed while writing is the file's
    assert format_from_path(path) == fmt
    assert_same(load_arrays(path), arrays)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_non_contiguous_and_big_arrays_round_trip(tmp_path: Path) -> None:
    big = np.random.default_rng(1).standard_normal((600, 700)).astype(np.float32)  # > 1 MiB
    arrays = {"t": big.T, "strided": big[::2, ::3], "big": big}
    for fmt, ext in FORMATS.items():
        sha, size = save_arrays(tmp_path / f"w{ext}", arrays, fmt)
        assert (sha, size) == sha256_file(tmp_path / f"w{ext}")
        back = load_arrays(tmp_path / f"w{ext}")
        for key, arr in arrays.items():
            np.testing.assert_array_equal(back[key], arr)


def test_npz_reads_with_plain_numpy(tmp_path: Path) -> None:
    arrays = sample_arrays()
    save_arrays(tmp_path / "w.npz", arrays, "npz")
    with open(tmp_path / "w.npz", "rb") as f:
        plain = dict(np.load(f, allow_pickle=False))
    assert_same(plain, arrays)


def test_torch_file_is_a_plain_state_dict(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")

    def net() -> torch.nn.Module:
        nn = torch.nn
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))

    model = net()
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    state = {k: v + 1 if v.dtype.kind == "f" else v for k, v in state.items()}
    save_arrays(tmp_path / "w.pt", state, "torch")
    with open(tmp_path / "w.pt", "rb") as f:
        loaded = torch.load(f, weights_only=True)
    assert list(loaded) == list(state)
    assert loaded["1.num_batches_tracked"].dim() == 0
    fresh = net()
    fresh.load_state_dict(loaded, strict=True)
    for key, value in fresh.state_dict().items():
        assert np.array_equal(value.numpy(), state[key])


def test_safetensors_reads_with_plain_library_and_matches_reference_bytes(tmp_path: Path) -> None:
    import safetensors.numpy
    import safetensors.torch

    arrays = sample_arrays()
    path = tmp_path / "w.safetensors"
    save_arrays(path, arrays, "safetensors")
    plain = safetensors.numpy.load_file(path)
    assert set(plain) == set(arrays)
    for key, arr in arrays.items():
        assert plain[key].dtype == arr.dtype and plain[key].shape == arr.shape
        assert plain[key].tobytes() == arr.tobytes()
    as_torch = safetensors.torch.load_file(path)
    assert tuple(as_torch["bn.num_batches_tracked"].shape) == ()
    # We stream the file instead of building it in memory: it must be the library's bytes.
    reference = safetensors.numpy.save(arrays, metadata={"key_order": json.dumps(list(arrays))})
    assert path.read_bytes() == reference


def test_torch_pickled_object_is_refused_and_never_executed(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": Evil()}, path)
    with pytest.raises(CheckpointError) as err:
        load_arrays(path)
    assert str(err.value).startswith(str(path))
    assert "\n" not in str(err.value)
    assert "refused" in str(err.value)
    assert not marker.exists()


def test_torch_non_tensor_values_are_refused(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"weight": torch.zeros(2), "epoch": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="'epoch' is of type int, not a tensor"):
        load_arrays(tmp_path / "mixed.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_arrays(tmp_path / "list.pt")


def test_npz_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="obj.npz"):
        load_arrays(tmp_path / "obj.npz")
    with pytest.raises(CheckpointError, match="dtype object"):
        save_arrays(tmp_path / "out.npz", {"x": np.array([None], dtype=object)})
    assert not (tmp_path / "out.npz").exists()


def test_unknown_format_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        format_from_path(tmp_path / "weights.bin")
    assert "weights.bin" in str(err.value) and "'.bin'" in str(err.value) and "\n" not in str(err.value)
    assert format_from_path("model_round_3.pth") == "torch"  # Flower how-to name
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'pickle'"):
        save_arrays(tmp_path / "w.npz", {"x": np.zeros(1)}, "pickle")


def test_damaged_file_is_one_line_error_naming_it(tmp_path: Path) -> None:
    for fmt, ext in FORMATS.items():
        path = tmp_path / f"w{ext}"
        save_arrays(path, sample_arrays(), fmt)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(CheckpointError) as err:
            load_arrays(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_atomic_write_removes_temp_file_and_keeps_old_content_on_error(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")

    def failing(f):  # type: ignore[no-untyped-def]
        f.write(b"partial new content")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]

    sha, size = atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new" and size == 3 and (sha, size) == sha256_file(path)


def test_hash_is_right_when_the_writer_reuses_its_buffers(tmp_path: Path) -> None:
    # Hashing overlaps the writes; a buffer changed right after write() must not leak into it.
    buf = np.zeros(3 << 20, dtype=np.uint8)
    raw = bytearray(2 << 20)

    def write(f):  # type: ignore[no-untyped-def]
        for value in range(4):
            buf[:] = value
            f.write(buf)
            raw[:] = bytes([value + 10]) * len(raw)
            f.write(raw)
            f.write(memoryview(buf).cast("B")[: 1 << 20])

    sha, size = atomic_write(tmp_path / "reused.bin", write)
    assert (sha, size) == sha256_file(tmp_path / "reused.bin")
