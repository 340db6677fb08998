"""Every option of every config group composes and instantiates; bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runner.config import ConfigError, to_container, validate
from runner.dataset import DatasetNotFound, client_split, load_dataset, server_test_split
from runner.model import build_model
from runner.strategy import build_strategy
from tests.helpers import CONF, compose_cfg, run_cli


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_every_group_has_its_options():
    assert len(options("strategy")) == 12
    assert options("model") == ["cnn", "mlp", "resnet18"]
    assert options("dataset") == ["cifar10", "digits", "mnist"]
    assert options("partitioner") == ["dirichlet", "iid", "pathological"]


@pytest.mark.parametrize("name", options("strategy"))
def test_every_strategy_instantiates(name: str):
    import flwr.serverapp.strategy as flwr_strategies

    cfg = to_container(compose_cfg([f"strategy={name}"]))
    validate(cfg)
    strategy = build_strategy(cfg["strategy"])
    assert isinstance(strategy, flwr_strategies.Strategy)
    assert type(strategy).__name__.lower() == name


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10"])
def test_every_model_fits_every_dataset(model: str, dataset: str):
    cfg = to_container(compose_cfg([f"model={model}", f"dataset={dataset}"]))
    validate(cfg)
    net = build_model(cfg)
    channels, size = {"digits": (1, 8), "mnist": (1, 28), "cifar10": (3, 32)}[dataset]
    out = net.eval()(torch.zeros(2, channels, size, size))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("partitioner", options("partitioner"))
def test_every_partitioner_splits_digits(partitioner: str):
    cfg = to_container(compose_cfg([f"partitioner={partitioner}", "num_clients=5"]))
    validate(cfg)
    data, test_idx = server_test_split(cfg)
    seen = set(test_idx.tolist())
    total = 0
    for pid in range(5):
        _, train_idx, val_idx = client_split(cfg, pid)
        part = set(train_idx.tolist()) | set(val_idx.tolist())
        assert len(train_idx) > 0 and len(val_idx) > 0
        assert not part & seen, "client data overlaps the server test split or another client"
        seen |= part
        total += len(part)
        if partitioner == "pathological":
            assert len(set(data.y[train_idx].tolist()) | set(data.y[val_idx].tolist())) <= 2
    if partitioner != "pathological":  # pathological may leave whole classes unassigned
        assert len(seen) == len(data.y)  # every sample is used exactly once


def test_digits_is_the_offline_default():
    cfg = to_container(compose_cfg())
    assert cfg["dataset"]["name"] == "digits"
    data = load_dataset(cfg["dataset"])
    assert data.x.shape == (1797, 1, 8, 8) and data.num_classes == 10


def test_missing_mnist_says_where_to_put_files(tmp_path: Path):
    with pytest.raises(DatasetNotFound, match="MNIST/raw"):
        load_dataset({"name": "mnist", "root": str(tmp_path / "nowhere"), "download": False})


@pytest.mark.parametrize(
    "override, key",
    [
        ("num_rounds=abc", "num_rounds"),
        ("num_rounds=-1", "num_rounds"),
        ("num_clients=0", "num_clients"),
        ("train.lr=0", "train.lr"),
        ("checkpoint.format=pickle", "checkpoint.format"),
        ("checkpoint.phase=later", "checkpoint.phase"),
        ("strategy.fraction_train=1.5", "strategy.fraction_train"),
        ("strategy.min_available_nodes=50", "strategy.min_available_nodes"),
        ("device=tpu", "device"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str):
    with pytest.raises(ConfigError) as err:
        validate(to_container(compose_cfg([override])))
    assert str(err.value).startswith(f"{key}:")
    assert "\n" not in str(err.value)


def test_bad_dirichlet_alpha():
    with pytest.raises(ConfigError, match=r"^partitioner.alpha: must be > 0"):
        validate(to_container(compose_cfg(["partitioner=dirichlet", "partitioner.alpha=-1"])))


def test_unknown_strategy_argument_is_one_line():
    cfg = to_container(compose_cfg(["+strategy.bogus=1"]))
    with pytest.raises(ConfigError, match=r"^strategy: .*bogus"):
        build_strategy(cfg["strategy"])


@pytest.mark.parametrize(
    "override, needle",
    [
        ("strategy=nope", "strategy"),
        ("num_rounds=abc", "num_rounds"),
        ("num_rounds=-1", "num_rounds"),
        ("partitioner=dirichlet partitioner.alpha=-1", "partitioner.alpha"),
        ("dataset=mnist dataset.root=/nonexistent-dir", "MNIST/raw"),
    ],
)
def test_cli_bad_override_is_short_and_without_traceback(tmp_path: Path, override: str, needle: str):
    proc = run_cli(override.split(), cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr
    assert needle in err
    assert "Traceback" not in err and "Traceback" not in proc.stdout
    assert not list(tmp_path.glob("outputs/**/checkpoints/*")), "nothing must be written"


def test_a_run_dir_that_holds_a_run_is_never_reused(tmp_path: Path):
    used = tmp_path / "outputs" / "x"
    used.mkdir(parents=True)
    (used / "metrics.jsonl").write_text('{"round": 0}\n')
    proc = run_cli(["hydra.run.dir=outputs/x"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: hydra.run.dir:")
    assert (used / "metrics.jsonl").read_text() == '{"round": 0}\n'
