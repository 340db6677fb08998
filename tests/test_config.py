"""Every option of every config group composes and instantiates; bad values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runner.build import build
from runner.config import ConfigError, to_container, validate
from runner.data import client_split, partitions, server_test_split
from runner.datasets import DatasetNotFound, mnist
from runner.runtime import build_model
from runner.strategies import build_strategy
from tests.helpers import CONF, compose_cfg, run_cli


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


PARTITIONERS = [
    "continuous",
    "dirichlet",
    "exponential",
    "grouped_natural_id",
    "iid",
    "inner_dirichlet",
    "linear",
    "natural_id",
    "pathological",
    "shard",
    "size",
    "square",
]


def test_every_group_has_its_options():
    assert len(options("strategy")) == 22  # Flower's, SCAFFOLD, and the zoo of issue 17
    assert options("model") == ["cnn", "cnn_bn", "mlp", "resnet18"]
    assert options("dataset") == ["cifar10", "digits", "hf", "mnist"]
    assert options("partitioner") == PARTITIONERS
    assert options("dp") == ["client_adaptive", "client_fixed", "server_adaptive", "server_fixed"]
    assert options("optimizer") == ["adam", "adamw", "sgd"]
    assert "classification" in options("task") and "simulation" in options("engine")


@pytest.mark.parametrize("name", options("strategy"))
def test_every_strategy_instantiates(name: str):
    import flwr.serverapp.strategy as flwr_strategies

    cfg = to_container(compose_cfg([f"strategy={name}"]))
    validate(cfg)
    strategy = build_strategy(cfg)
    assert isinstance(strategy, flwr_strategies.Strategy)
    assert type(strategy).__name__.lower() == name


@pytest.mark.parametrize("dp", options("dp"))
@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_every_dp_wrapper_wraps_the_selected_strategy(dp: str, strategy: str):
    cfg = to_container(compose_cfg([f"strategy={strategy}", f"dp={dp}", "strategy.fraction_train=0.5"]))
    validate(cfg)
    if strategy == "fedadam" and dp.endswith("fixed"):  # Flower's accountant needs FedAvg aggregation
        with pytest.raises(ConfigError, match=r"^dp.accountant: .*dp.accountant=null"):
            build_strategy(cfg)
        cfg["dp"]["accountant"] = None
    wrapped = build_strategy(cfg)
    assert type(wrapped).__name__.startswith("DifferentialPrivacy")
    assert type(wrapped.strategy).__name__.lower() == strategy
    assert wrapped.strategy.weighted_by_key == "unit-weight"
    assert wrapped.num_sampled_clients == 5  # 10 clients x fraction_train 0.5


@pytest.mark.parametrize("model", options("model"))
@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10"])
def test_every_model_fits_every_dataset(model: str, dataset: str):
    cfg = to_container(compose_cfg([f"model={model}", f"dataset={dataset}"]))
    validate(cfg)
    net = build_model(cfg)
    channels, size = {"digits": (1, 8), "mnist": (1, 28), "cifar10": (3, 32)}[dataset]
    out = net.eval()(torch.zeros(2, channels, size, size))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_every_partitioner_splits_digits(partitioner: str):
    overrides = [f"partitioner={partitioner}", "num_clients=10"]
    if "natural_id" in partitioner:  # needs a dataset with a client-id column
        overrides.append("dataset._target_=tests.fixture_data.digits_with_writers")
    if partitioner in ("grouped_natural_id", "exponential"):  # 10 exponential sizes do not fit 1437 samples
        overrides[1] = "num_clients=5"
    cfg = to_container(compose_cfg(overrides))
    validate(cfg)
    n = cfg["num_clients"]
    test = server_test_split(cfg)
    pool = set(range(len(test.data.y))) - set(test.idx.tolist())
    seen: set[int] = set()
    for pid in range(n):
        train, val = client_split(cfg, pid)
        part = set(train.idx.tolist()) | set(val.idx.tolist())
        assert len(train) > 0, (partitioner, pid)
        assert not part & seen and part <= pool, "client data overlaps the test split or another client"
        seen |= part
        if partitioner == "pathological":
            assert len(set(test.data.y[list(part)].tolist())) <= 2
        if partitioner == "natural_id":  # one writer per client
            assert len(set(test.data.columns["client_id"][list(part)].tolist())) == 1
    if partitioner not in ("pathological", "size", "shard"):  # those may leave samples unassigned
        assert seen == pool, "every sample of the pool goes to exactly one client"
    else:
        assert len(seen) > 0.5 * len(pool)


def test_digits_is_the_offline_default():
    cfg = to_container(compose_cfg())
    assert cfg["dataset"]["_target_"] == "runner.datasets.digits"
    data = partitions(cfg).data
    assert data.x.shape == (1797, 1, 8, 8) and data.num_classes == 10


def test_missing_mnist_says_where_to_put_files(tmp_path: Path):
    with pytest.raises(DatasetNotFound, match="MNIST/raw"):
        mnist(root=str(tmp_path / "nowhere"))


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
        ("data_cache.enabled=maybe", "data_cache.enabled"),
        ("data_cache.dir=[a]", "data_cache.dir"),
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
        build_strategy(cfg)


@pytest.mark.parametrize(
    "node, message",
    [
        ({"_target_": "no_such_pkg.Net"}, r"^model._target_: cannot import 'no_such_pkg.Net' \(ModuleNotFoundError"),
        (
            {"_target_": "runner.models.MLP", "input_shape": [4], "num_classes": 3, "depth": 2},
            r"^model: runner.models.MLP: .*'depth'",
        ),
        ({"hidden": 3}, r"^model: expected a config with _target_"),
    ],
)
def test_a_target_that_does_not_build_is_one_line(node: dict, message: str):
    with pytest.raises(ConfigError, match=message) as err:
        build(node, "model")
    assert "\n" not in str(err.value)


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
