"""The math of FedNova, FedDyn, MOON and Ditto on tiny models, hooks called directly with a
ClientContext built here (no runner, no Flower engine); and the heterogeneity draws.
End to end (stop/resume, every algorithm through ``python -m runner``) is tests/test_zoo_exact.py."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from runner.algorithms.base import ClientAlgorithm, ClientContext
from runner.algorithms.ditto import DittoClient
from runner.algorithms.feddyn import PARAMS, FedDyn, FedDynClient
from runner.algorithms.fednova import TAU, FedNova, FedNovaClient, norm_a
from runner.algorithms.moon import MoonClient
from runner.config import ConfigError
from runner.heterogeneity import dropped, straggler_limits
from tests.helpers import ROOT


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Task:
    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=0.1)


def _data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def _loop(ctx: ClientContext, algorithms: list[ClientAlgorithm], epochs: int = 2) -> Any:
    """The runner's training loop in miniature: loss terms, step hooks, step count."""

    def train(model: nn.Module | None, optimizer: torch.optim.Optimizer | None) -> dict[str, float]:
        model = ctx.model if model is None else model
        optimizer = ctx.optimizer if optimizer is None else optimizer
        assert optimizer is not None
        x, y = ctx.train_data
        steps, last = 0, 0.0
        for _ in range(ctx.local_epochs or epochs):
            for i in range(0, len(x), 4):
                xb, yb = x[i : i + 4], y[i : i + 4]
                optimizer.zero_grad()
                out = model(xb)
                loss = nn.functional.cross_entropy(out, yb)
                for a in algorithms:
                    term = a.loss_term(ctx, model, xb, out)
                    if term is not None:
                        loss = loss + term
                loss.backward()
                for a in algorithms:
                    a.after_backward(ctx, model)
                optimizer.step()
                steps += 1
                last = float(loss.detach())
                if ctx.max_steps is not None and steps >= ctx.max_steps:
                    ctx.steps = steps
                    return {"loss": last}
        ctx.steps = steps
        return {"loss": last}

    return train


def _ctx(
    model: nn.Module, state: dict[str, Any] | None = None, momentum: float = 0.0, message: str = "train"
) -> ClientContext:
    ctx = ClientContext(
        round=1,
        partition_id=0,
        seed=0,
        device=torch.device("cpu"),
        config={},
        run_config={},
        model=model,
        global_weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        state=state if state is not None else {},
        payload={},
        task=Task(),
        train_data=_data(),
        val_data=_data(),
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum),
        message=message,
    )
    return ctx


def _run(algorithm: ClientAlgorithm, ctx: ClientContext, epochs: int = 2) -> dict[str, float]:
    """One train message: setup -> fit -> (send_weights) -> finish."""
    torch.manual_seed(0)
    ctx.train_fn = _loop(ctx, [algorithm], epochs)
    algorithm.setup(ctx)
    metrics = algorithm.fit(ctx)
    ctx.send_weights = {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()}
    algorithm.finish(ctx)
    return metrics


@pytest.fixture
def flower_identity() -> Iterator[None]:
    """Flower's Message wants a task identity (set by its runtime)."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = before


def _reply(weights: dict[str, Any], n: int, extra: dict[str, dict[str, Any]] | None = None) -> Any:
    from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

    sent = Message(RecordDict({}), dst_node_id=7, message_type="train")
    content: dict[str, Any] = {
        "arrays": ArrayRecord({k: Array(v) for k, v in weights.items()}),
        "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0}),
    }
    for name, arrays in (extra or {}).items():
        content[name] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return Message(RecordDict(content), reply_to=sent)


def _record(weights: dict[str, Any]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(v) for k, v in weights.items()})


# ----------------------------------------------------------------------------- FedNova


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.9])
def test_fednova_norm_a_is_the_total_step_of_local_sgd_under_a_constant_gradient(momentum: float):
    """With a constant gradient c, tau steps of SGD(lr, momentum) move w by lr*||a||_1*c."""
    w = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    c = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt = torch.optim.SGD([w], lr=0.01, momentum=momentum)
    for _ in range(7):
        opt.zero_grad()
        (w * c).sum().backward()
        opt.step()
    assert torch.allclose(-w.detach(), 0.01 * norm_a(7, momentum) * c, rtol=1e-12)
    assert norm_a(7, 0.0) == 7.0


def test_fednova_client_reports_its_steps_and_a(monkeypatch: pytest.MonkeyPatch):
    ctx = _ctx(Tiny(), momentum=0.9)
    _run(FedNovaClient(), ctx, epochs=2)
    sent = ctx.reply[TAU.name]
    assert all(isinstance(v, np.ndarray) for v in sent.values())  # what a Flower Array takes
    assert int(sent["tau"]) == 6 == ctx.steps  # 12 examples, batches of 4, 2 epochs
    assert float(sent["a"]) == pytest.approx(norm_a(6, 0.9))
    assert ctx.metrics["local_steps"] == 6.0


def test_fednova_client_refuses_optimizers_without_a_closed_form():
    ctx = _ctx(Tiny())
    ctx.optimizer = torch.optim.Adam(ctx.model.parameters())
    with pytest.raises(TypeError, match="torch.optim.SGD"):
        FedNovaClient().setup(ctx)


def test_fednova_server_normalizes_by_tau(flower_identity: None):
    x: dict[str, np.ndarray] = {"w": np.array([1.0, 2.0], dtype=np.float32), "count": np.array(5, dtype=np.int64)}
    y1: dict[str, np.ndarray] = {"w": np.array([0.0, 2.0], dtype=np.float32), "count": np.array(5, dtype=np.int64)}
    y2: dict[str, np.ndarray] = {"w": np.array([1.0, 0.0], dtype=np.float32), "count": np.array(5, dtype=np.int64)}
    strategy = FedNova()
    strategy._sent = _record(x)
    replies = [
        _reply(y1, 30, {TAU.name: {"a": np.float64(2.0), "tau": np.int64(2)}}),
        _reply(y2, 10, {TAU.name: {"a": np.float64(8.0), "tau": np.int64(8)}}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    p = np.array([0.75, 0.25])
    tau_eff = 0.75 * 2 + 0.25 * 8
    d = p[0] * (x["w"] - y1["w"]) / 2 + p[1] * (x["w"] - y2["w"]) / 8
    np.testing.assert_allclose(arrays["w"].numpy(), x["w"] - tau_eff * d, rtol=1e-6)
    assert arrays["w"].numpy().dtype == np.float32
    assert int(arrays["count"].numpy()) == 5  # non-float arrays: FedAvg's
    assert TAU.name not in replies[0].content  # taken before aggregation


def test_fednova_with_equal_steps_is_fedavg(flower_identity: None):
    from flwr.serverapp.strategy import FedAvg

    x = {"w": np.array([1.0, 2.0, 3.0], dtype=np.float32)}
    ys = [{"w": np.array([0.5, 1.0, 4.0], dtype=np.float32)}, {"w": np.array([2.0, 0.0, 1.0], dtype=np.float32)}]
    tau = {TAU.name: {"a": np.float64(5.0), "tau": np.int64(5)}}
    nova = FedNova()
    nova._sent = _record(x)
    got, _ = nova.aggregate_train(1, [_reply(ys[0], 3, tau), _reply(ys[1], 9, tau)])
    want, _ = FedAvg().aggregate_train(1, [_reply(ys[0], 3), _reply(ys[1], 9)])
    assert got is not None and want is not None
    np.testing.assert_allclose(got["w"].numpy(), want["w"].numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- FedDyn


def test_feddyn_loss_term_gradient_and_linear_term_update():
    alpha = 0.3
    model = Tiny()
    g0 = {n: torch.randn_like(p).numpy() for n, p in model.named_parameters()}
    algorithm = FedDynClient(alpha=alpha)
    ctx = _ctx(model, state={"feddyn_grad": {k: v.copy() for k, v in g0.items()}})
    algorithm.setup(ctx)
    # at the global weights the regularizer's gradient is -g (the quadratic term vanishes)
    model.zero_grad()
    algorithm.loss_term(ctx, model, None, None).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None
        np.testing.assert_allclose(p.grad.numpy(), -g0[n], rtol=1e-6)
    # after training: g <- g - alpha * (theta_k - theta_global); the server learns which arrays are parameters
    ctx = _ctx(model := Tiny(), state={"feddyn_grad": {k: v.copy() for k, v in g0.items()}})
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _run(algorithm, ctx)
    for n, p in model.named_parameters():
        want = g0[n] - alpha * (p.detach() - start[n]).numpy()
        np.testing.assert_allclose(ctx.state["feddyn_grad"][n], want, rtol=1e-5, atol=1e-7)
    assert sorted(ctx.reply[PARAMS.name]) == sorted(n for n, _ in model.named_parameters())


def test_feddyn_first_round_starts_with_a_zero_linear_term():
    ctx = _ctx(Tiny())
    algorithm = FedDynClient(alpha=0.1)
    _run(algorithm, ctx)
    assert set(ctx.state["feddyn_grad"]) == {n for n, _ in ctx.model.named_parameters()}


def test_feddyn_server_h_and_model_update_and_its_state_round_trips(flower_identity: None):
    alpha = 0.5
    x = {"w": np.array([1.0, -1.0], dtype=np.float32), "bn": np.array([2.0], dtype=np.float32)}
    ys = [
        {"w": np.array([2.0, 0.0], dtype=np.float32), "bn": np.array([4.0], dtype=np.float32)},
        {"w": np.array([0.0, 1.0], dtype=np.float32), "bn": np.array([0.0], dtype=np.float32)},
    ]
    params = {PARAMS.name: {"w": np.zeros((), np.uint8)}}  # "bn" is a buffer
    strategy = FedDyn(alpha=alpha)
    strategy.num_nodes = 4
    strategy._sent = _record(x)
    arrays, _ = strategy.aggregate_train(1, [_reply(ys[0], 10, params), _reply(ys[1], 30, params)])
    assert arrays is not None and strategy.h is not None
    h = -(alpha / 4) * ((ys[0]["w"] - x["w"]) + (ys[1]["w"] - x["w"]))
    np.testing.assert_allclose(strategy.h["w"], h, rtol=1e-6)
    np.testing.assert_allclose(arrays["w"].numpy(), (ys[0]["w"] + ys[1]["w"]) / 2 - h / alpha, rtol=1e-6)
    np.testing.assert_allclose(arrays["bn"].numpy(), [1.0])  # buffers: FedAvg's weighted average
    assert "bn" not in strategy.h
    # h is the server's state between rounds
    again = FedDyn(alpha=alpha)
    again.load_state_dict(copy.deepcopy(strategy.state_dict()))
    assert again.h is not None and np.array_equal(again.h["w"], strategy.h["w"]) and again.num_nodes == 4


# ----------------------------------------------------------------------------- MOON


def test_moon_contrastive_term_matches_the_paper_formula():
    mu, temp = 2.0, 0.5
    model = Tiny()
    prev = Tiny()
    prev_state = {k: v.detach().numpy().copy() for k, v in prev.state_dict().items()}
    glob = copy.deepcopy(model)
    algorithm = MoonClient(mu=mu, temperature=temp)
    ctx = _ctx(model, state={"moon_prev": prev_state})
    algorithm.setup(ctx)
    x, _ = _data(4)
    out = model(x)
    term = algorithm.loss_term(ctx, model, x, out)
    z, zg, zp = model.body(x), glob.body(x), prev.body(x)
    sg = nn.functional.cosine_similarity(z, zg, dim=-1) / temp
    sp = nn.functional.cosine_similarity(z, zp, dim=-1) / temp
    want = mu * (-torch.log(torch.exp(sg) / (torch.exp(sg) + torch.exp(sp)))).mean()
    assert torch.allclose(term, want, rtol=1e-5)
    term.backward()  # the term trains the local model ...
    grad = next(model.body.parameters()).grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_moon_keeps_the_trained_model_as_its_previous_model_and_removes_its_hook():
    model = Tiny()
    algorithm = MoonClient()
    ctx = _ctx(model)
    _run(algorithm, ctx)  # first round: no previous model, no term
    assert len(model.head._forward_pre_hooks) == 0
    first = ctx.state["moon_prev"]
    assert all(np.array_equal(first[k], v.detach().numpy()) for k, v in model.state_dict().items())
    ctx2 = _ctx(model, state={"moon_prev": first})
    algorithm.setup(ctx2)
    x, _ = _data(4)
    assert algorithm.loss_term(ctx2, model, x, model(x)) is not None
    algorithm.setup(ctx2)  # a message that died mid-training left its hook: the next setup removes it
    assert len(model.head._forward_pre_hooks) == 1
    algorithm.finish(ctx2)
    assert len(model.head._forward_pre_hooks) == 0


def test_moon_without_previous_model_adds_nothing_and_needs_the_batch():
    model = Tiny()
    algorithm = MoonClient()
    ctx = _ctx(model)
    algorithm.setup(ctx)
    x, _ = _data(4)
    assert algorithm.loss_term(ctx, model, x, model(x)) is None
    algorithm.finish(ctx)
    algorithm.setup(ctx := _ctx(model, state={"moon_prev": ctx.state["moon_prev"]}))
    with pytest.raises(RuntimeError, match="needs the batch"):
        algorithm.loss_term(ctx, model, None, None)


def test_moon_model_without_head_is_a_one_line_error_naming_model():
    with pytest.raises(ConfigError) as info:
        MoonClient().setup(_ctx(nn.Sequential(nn.Linear(3, 2))))
    assert str(info.value).startswith("model: MOON needs a model with a `head`") and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- Ditto


def test_ditto_trains_a_personal_model_pulled_to_the_global_one():
    base = Tiny()
    results = {}
    for lam in (0.0, 1.0, 5.0):  # lr * lam < 2: the pull itself is stable
        ctx = _ctx(copy.deepcopy(base))
        algorithm = DittoClient(lam=lam)
        metrics = _run(algorithm, ctx)
        personal = ctx.state["ditto_personal"]
        start = {k: v.numpy() for k, v in ctx.global_weights.items()}
        results[lam] = sum(float(np.sum((personal[k] - start[k]) ** 2)) for k in start)
        assert "personal_loss" in ctx.metrics and "loss" in metrics
        if lam == 0:  # without the pull, v_k trains like w on the same data, but from its own RNG draw
            trained = {k: v.detach().numpy() for k, v in ctx.model.state_dict().items()}
            assert any(not np.array_equal(trained[k], start[k]) for k in start)
    assert results[0.0] > results[1.0] > results[5.0], results  # the stronger the pull, the nearer v_k stays to w^t


def test_ditto_personal_model_persists_and_is_the_one_evaluated():
    ctx = _ctx(Tiny())
    algorithm = DittoClient(lam=0.1)
    _run(algorithm, ctx)
    saved = ctx.state["ditto_personal"]
    ctx2 = _ctx(Tiny(), state={"ditto_personal": saved})
    _run(algorithm, ctx2)  # the second round trains on from the saved personal model
    assert any(not np.array_equal(saved[k], ctx2.state["ditto_personal"][k]) for k in saved)
    ev = _ctx(Tiny(), state={"ditto_personal": ctx2.state["ditto_personal"]}, message="evaluate")
    algorithm.setup_evaluate(ev)
    model = algorithm.personal_model(ev)
    assert model is not ev.model
    assert all(np.array_equal(v.numpy(), ctx2.state["ditto_personal"][k]) for k, v in model.state_dict().items())
    fresh = _ctx(Tiny(), message="evaluate")
    algorithm.setup_evaluate(fresh)
    assert algorithm.personal_model(fresh) is fresh.model  # never trained: the global model


def test_ditto_personal_epochs_and_stragglers():
    calls: list[int | None] = []
    ctx = _ctx(Tiny())
    algorithm = DittoClient(lam=0.1, personal_epochs=3)
    algorithm.setup(ctx)
    inner = _loop(ctx, [algorithm])

    def spy(model: Any, optimizer: Any) -> dict[str, float]:
        calls.append(ctx.local_epochs)
        return inner(model, optimizer)

    ctx.train_fn = spy
    algorithm.fit(ctx)
    assert calls == [None, 3] and ctx.local_epochs is None
    calls.clear()
    ctx.local_epochs = 1  # a straggler: both models train the shorter time
    algorithm.setup(ctx)
    algorithm.fit(ctx)
    assert calls == [1, 1]


# ----------------------------------------------------------------------------- heterogeneity


def _cfg(**clients: Any) -> dict[str, Any]:
    base = {"straggler_fraction": 0.0, "straggler_epochs": 1, "straggler_steps": None, "dropout": 0.0}
    return {"seed": 3, "clients": {**base, **clients}}


def test_heterogeneity_draws_follow_the_fractions():
    pids, rounds = range(50), range(1, 21)
    draws = [dropped(_cfg(dropout=0.3), r, p) for r in rounds for p in pids]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    assert not any(dropped(_cfg(dropout=0.0), r, p) for r in rounds for p in pids)
    assert all(dropped(_cfg(dropout=1.0), r, p) for r in rounds for p in pids)
    limits = [straggler_limits(_cfg(straggler_fraction=0.5, straggler_epochs=2), r, p) for r in rounds for p in pids]
    assert set(limits) == {(None, None), (2, None)}
    assert 0.45 < limits.count((2, None)) / len(limits) < 0.55
    assert straggler_limits(_cfg(straggler_fraction=1.0, straggler_steps=3), 1, 0) == (None, 3)
    # stragglers and dropouts are independent draws, and differ between rounds
    a = [dropped(_cfg(dropout=0.5), 1, p) for p in pids]
    b = [straggler_limits(_cfg(straggler_fraction=0.5), 1, p)[0] is not None for p in pids]
    c = [dropped(_cfg(dropout=0.5), 2, p) for p in pids]
    assert a != b and a != c


def test_heterogeneity_draws_are_the_same_in_another_process():
    code = (
        "from runner.heterogeneity import dropped, straggler_limits;"
        "c={'seed':3,'clients':{'straggler_fraction':0.4,'straggler_epochs':1,'straggler_steps':None,'dropout':0.4}};"
        "print([(dropped(c,r,p), straggler_limits(c,r,p)) for r in range(1,6) for p in range(8)])"
    )
    env = {"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    c = _cfg(straggler_fraction=0.4, dropout=0.4)
    assert out.strip() == str([(dropped(c, r, p), straggler_limits(c, r, p)) for r in range(1, 6) for p in range(8)])


@pytest.mark.parametrize(
    "override, key",
    [
        ("clients.dropout=1.5", "clients.dropout"),
        ("clients.straggler_fraction=-0.1", "clients.straggler_fraction"),
        ("clients.straggler_epochs=0", "clients.straggler_epochs"),
        ("clients.straggler_steps=0", "clients.straggler_steps"),
    ],
)
def test_clients_keys_are_validated_with_one_line_naming_the_key(override: str, key: str):
    from runner.config import to_container, validate
    from tests.helpers import compose_cfg

    validate(to_container(compose_cfg(["clients.dropout=1", "clients.straggler_fraction=0"])))  # the bounds are in
    with pytest.raises(ConfigError) as info:
        validate(to_container(compose_cfg([override])))
    assert str(info.value).startswith(f"{key}: ") and "\n" not in str(info.value)
