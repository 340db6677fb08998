"""Flower how-to files onto a model's state_dict, and rebuilding a model from a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from runner.checkpoint.formats import CheckpointError  # noqa: E402
from runner.checkpoint.loading import load_model  # noqa: E402
from runner.checkpoint.migrate import is_positional, load_foreign_weights  # noqa: E402
from runner.checkpoint.store import CheckpointData, write_checkpoint  # noqa: E402


def make_model(config: dict | None = None) -> torch.nn.Module:  # type: ignore[type-arg]
    hidden = (config or {}).get("model", {}).get("hidden", 16)
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3)
    )


def state_of(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def trained_state() -> dict[str, np.ndarray]:
    return {k: v + 1 if v.dtype.kind == "f" else v + 3 for k, v in state_of(make_model()).items()}


def test_flower_howto_npz_positional_arrays_map_by_position(tmp_path: Path) -> None:
    reference = state_of(make_model())
    trained = trained_state()
    path = tmp_path / "round-3-weights.npz"
    np.savez(path, *trained.values())  # exactly what Flower's how-to strategy does
    weights = load_foreign_weights(path, reference)
    assert list(weights) == list(reference)
    for key in reference:
        assert weights[key].dtype == trained[key].dtype and np.array_equal(weights[key], trained[key])
    assert is_positional(dict(np.load(path)))


def test_flower_howto_pth_state_dict_maps_by_key(tmp_path: Path) -> None:
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(2.0)
    path = tmp_path / "model_round_3.pth"
    torch.save(model.state_dict(), path)  # Flower's PyTorch how-to
    weights = load_foreign_weights(path, state_of(make_model()))
    for key, value in model.state_dict().items():
        assert np.array_equal(weights[key], value.numpy())


def test_mismatch_names_keys_and_shapes_first_few_only(tmp_path: Path) -> None:
    reference = state_of(make_model())
    wide = state_of(make_model({"model": {"hidden": 32}}))
    path = tmp_path / "round-1-weights.npz"
    np.savez(path, *wide.values())
    with pytest.raises(CheckpointError) as err:
        load_foreign_weights(path, reference)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "0.weight: expected float32[16, 8], got float32[32, 8]" in msg
    assert "… and" in msg and msg.count("expected") == 3  # first few only

    np.savez(tmp_path / "short.npz", *list(reference.values())[:-1])
    with pytest.raises(CheckpointError, match=r"holds 8 positional arrays \(arr_0…\), the model has 9"):
        load_foreign_weights(tmp_path / "short.npz", reference)

    renamed = {("x." + k): v for k, v in reference.items()}
    torch.save({k: torch.from_numpy(v) for k, v in renamed.items()}, tmp_path / "renamed.pth")
    # same shapes in the same order under other names (issue 21): refused with the mapping it
    # would use, taken with init_weights_match=order
    with pytest.raises(CheckpointError, match=r"key names differ .* x\.0\.weight->0\.weight, x\.0\.bias->0\.bias"):
        load_foreign_weights(tmp_path / "renamed.pth", reference)
    taken = load_foreign_weights(tmp_path / "renamed.pth", reference, match="order")
    assert list(taken) == list(reference) and all(np.array_equal(taken[k], reference[k]) for k in reference)
    reordered = dict(reversed(list(renamed.items())))
    torch.save({k: torch.from_numpy(v) for k, v in reordered.items()}, tmp_path / "reordered.pth")
    with pytest.raises(CheckpointError, match="missing 0.weight"):  # shapes out of order: no mapping offered
        load_foreign_weights(tmp_path / "reordered.pth", reference, match="order")


def test_our_checkpoint_and_run_dir_as_source(tmp_path: Path) -> None:
    trained = trained_state()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    write_checkpoint(ckpt_dir, CheckpointData(round=2, phase="fit", weights=trained), "safetensors")
    for source in (tmp_path / "run", ckpt_dir / "round-0002.json", ckpt_dir / "round-0002.safetensors"):
        weights = load_foreign_weights(source, state_of(make_model()))
        assert all(np.array_equal(weights[k], trained[k]) for k in trained)


def test_load_model_loads_into_the_callers_model(tmp_path: Path) -> None:
    config = {"model": {"_target_": "my_pkg.Net", "hidden": 16}, "seed": 0}
    trained = trained_state()
    ckpt_dir = tmp_path / "run" / "checkpoints"
    write_checkpoint(ckpt_dir, CheckpointData(round=4, phase="evaluate", weights=trained, config=config), "torch")
    model = load_model(tmp_path / "run", model=make_model())
    assert not model.training
    for key, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), trained[key])
    with pytest.raises(CheckpointError, match="do not fit the model") as err:
        load_model(ckpt_dir / "round-0004.pt", model=make_model({"model": {"hidden": 32}}))
    assert "\n" not in str(err.value)


def test_load_model_never_imports_what_a_manifest_names(tmp_path: Path) -> None:
    """A manifest whose model config names os.system: nothing runs, the message says why."""
    marker = tmp_path / "pwned"
    config = {"model": {"_target_": "os.system", "_args_": [f"touch {marker}"]}, "seed": 0}
    ckpt_dir = tmp_path / "run" / "checkpoints"
    write_checkpoint(ckpt_dir, CheckpointData(round=1, phase="fit", weights=trained_state(), config=config), "npz")
    with pytest.raises(CheckpointError, match="refusing to import code named by the checkpoint") as err:
        load_model(tmp_path / "run")
    assert "os.system" in str(err.value) and "trust_config=True" in str(err.value)
    # nested targets count too
    nested = {"model": {"_target_": "runner.models.MLP", "act": {"_target_": "os.system", "_args_": ["x"]}}}
    write_checkpoint(ckpt_dir, CheckpointData(round=2, phase="fit", weights=trained_state(), config=nested), "npz")
    with pytest.raises(CheckpointError, match="model.act: os.system"):
        load_model(ckpt_dir / "round-0002.json")
    assert not marker.exists()


def test_load_model_rebuilds_builtin_models_from_the_manifest(tmp_path: Path) -> None:
    from runner.runtime import build_model, state_to_numpy

    config = {"model": {"_target_": "runner.models.MLP", "input_shape": [1, 8, 8], "num_classes": 10}, "seed": 0}
    weights = {k: v + 1 for k, v in state_to_numpy(build_model(config)).items()}
    ckpt_dir = tmp_path / "run" / "checkpoints"
    write_checkpoint(ckpt_dir, CheckpointData(round=1, phase="fit", weights=weights, config=config), "safetensors")
    model = load_model(tmp_path / "run")
    assert all(np.array_equal(v.numpy(), weights[k]) for k, v in model.state_dict().items())
