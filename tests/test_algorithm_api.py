"""Issue 17: the plumbing of the client-algorithm API, in process: how the task's
``ctx.penalty`` / ``ctx.before_step`` combine the algorithms' hooks, the task's overrides
(``local_epochs``, ``max_steps``, ``transform``), which algorithms a config selects, and
the conflicts that are setting errors before round 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from runner.algorithms import ClientAlgorithm
from runner.algorithms.compose import check_algorithms, client_algorithms, personal_algorithm
from runner.algorithms.optimizer_state import KeepOptimizerState
from runner.algorithms.personalization import FedPer
from runner.algorithms.scaffold import ScaffoldClient
from runner.config import ConfigError
from runner.data import Split
from runner.datasets import ArrayData
from runner.tasks import Classification, TrainContext
from tests.helpers import FAST, run_cli


def test_penalty_is_exactly_zero_the_single_term_or_the_sum() -> None:
    model = nn.Linear(2, 2)
    assert TrainContext().penalty(model) == 0.0 and type(TrainContext().penalty(model)) is float
    term = torch.tensor(1.5)
    one = TrainContext(loss_terms=[lambda m, x, y: term])
    assert one.penalty(model) is term  # not 0 + term: the bits of a single term stay as they are
    skipped = TrainContext(loss_terms=[lambda m, x, y: None, lambda m, x, y: term])
    assert skipped.penalty(model) is term
    two = TrainContext(loss_terms=[lambda m, x, y: term, lambda m, x, y: torch.tensor(2.0)])
    assert float(two.penalty(model)) == 3.5 and two.penalty_calls == 1
    seen: list[object] = []
    ctx = TrainContext(loss_terms=[lambda m, x, y: seen.append((x, y))])
    ctx.penalty(model, "inputs", "outputs")
    assert seen == [("inputs", "outputs")]


def test_before_step_runs_every_hook_and_counts_steps() -> None:
    calls: list[int] = []
    ctx = TrainContext(step_hooks=[lambda m: calls.append(1), lambda m: calls.append(2)])
    ctx.before_step(nn.Linear(1, 1))
    ctx.before_step(nn.Linear(1, 1))
    assert calls == [1, 2, 1, 2] and ctx.steps == 2


def _split(n: int = 40) -> Split:
    rng = np.random.default_rng(0)
    data = ArrayData(rng.normal(size=(n, 3)).astype(np.float32), (np.arange(n) % 2).astype(np.int64))
    return Split(data, np.arange(n))


def _task(**kwargs: object) -> Classification:
    return Classification(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), local_epochs=3, batch_size=8, **kwargs)


def test_classification_honours_local_epochs_and_max_steps_overrides() -> None:
    task, data = _task(), _split()  # 40 samples, batch 8: 5 steps per epoch
    for overrides, steps in [({}, 15), ({"local_epochs": 1}, 5), ({"max_steps": 7}, 7), ({"max_steps": 0}, 0)]:
        ctx = TrainContext(generator=torch.Generator().manual_seed(0), **overrides)  # type: ignore[arg-type]
        model = nn.Linear(3, 2)
        task.train(model, task.configure_optimizer(model), data, ctx)
        assert ctx.steps == steps, overrides


def test_transform_is_applied_to_each_training_batch_and_the_default_changes_nothing() -> None:
    seen: list[int] = []

    def transform(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen.append(len(y))
        return x * 0, y

    weights = []
    for task in (_task(), _task(transform=None), _task(transform=transform)):
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        ctx = TrainContext(generator=torch.Generator().manual_seed(0), local_epochs=1)
        task.train(model, task.configure_optimizer(model), _split(), ctx)
        weights.append(model.weight.detach().clone())
    assert seen == [8] * 5
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])
    with pytest.raises(TypeError, match="transform"):
        _task(transform=3)


def _cfg(**over: object) -> dict:
    cfg: dict = {"personalization": {"layers": []}, "train": {"keep_optimizer_state": False}, "strategy": {}}
    cfg.update(over)
    return cfg


def test_the_config_selects_the_built_in_features_first_then_the_strategys_client_half() -> None:
    assert client_algorithms(_cfg()) == []
    algorithms = client_algorithms(
        _cfg(
            personalization={"layers": ["head.*"]},
            train={"keep_optimizer_state": True},
            strategy={"client": {"_target_": "runner.algorithms.scaffold.ScaffoldClient"}},
        )
    )
    assert [type(a) for a in algorithms] == [FedPer, KeepOptimizerState, ScaffoldClient]
    check_algorithms(algorithms)  # distinct state keys: they compose
    assert isinstance(personal_algorithm(algorithms), FedPer)


class _Twin(ClientAlgorithm):
    state_keys = ("personal",)


class _Fit(ClientAlgorithm):
    def fit(self, ctx):  # type: ignore[no-untyped-def]
        return ctx.train()


class _Personal(ClientAlgorithm):
    personal = True


@pytest.mark.parametrize(
    "algorithms, message",
    [
        ([FedPer(["head.*"]), _Twin()], "both keep client state 'personal'"),
        ([_Fit(), _Fit()], "both override fit()"),
        ([FedPer(["head.*"]), _Personal()], "both have a personal model"),
    ],
)
def test_algorithms_that_cannot_run_together_are_a_setting_error(algorithms: list, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_algorithms(algorithms)


def test_a_client_half_that_is_not_a_client_algorithm_exits_2(tmp_path: Path) -> None:
    proc = run_cli([*FAST, "num_rounds=1", "+strategy.client._target_=collections.OrderedDict"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "strategy.client._target_" in proc.stderr and "not a runner.algorithms.ClientAlgorithm" in proc.stderr


def test_scaffold_stays_importable_from_runner_strategies() -> None:
    from runner.algorithms.scaffold import Scaffold
    from runner.strategies import Scaffold as Alias

    assert Alias is Scaffold


def test_client_app_holds_no_code_for_any_one_algorithm() -> None:
    """No built-in algorithm's names in the ClientApp: it only calls hooks."""
    source = (Path(__file__).resolve().parents[1] / "runner" / "client_app.py").read_text().lower()
    for word in ("scaffold", "proximal", "fedprox", "fedper", "personalization", "keep_optimizer_state", "momentum"):
        assert word not in source, word
