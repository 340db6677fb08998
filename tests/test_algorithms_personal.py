"""The personalized algorithms of the zoo (FedRep, FedBN, APFL, local, fine-tuning), hook by
hook on tiny models: each client half is called as the runner calls it (setup, fit,
finish; setup_evaluate, personal_model) with a ClientContext built here, and each server
half aggregates hand-made replies. End-to-end runs: tests/test_algorithms_personal_e2e.py
and the exact-resume sweep (tests/test_zoo_exact.py)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from torch import nn

from runner.algorithms._shared import KeepUnchanged, train_epochs
from runner.algorithms.apfl import APFLClient, _Mixture
from runner.algorithms.base import ClientContext
from runner.algorithms.fedbn import FedBN, FedBNClient, norm_keys
from runner.algorithms.fedrep import FedRepClient
from runner.algorithms.finetune import FineTuneClient
from runner.algorithms.local import Local, LocalClient
from runner.config import ConfigError
from runner.data import Split
from runner.datasets import ArrayData
from runner.models import CNN, MLP
from runner.tasks import Classification, TrainContext

CPU = torch.device("cpu")


def _data(n: int = 48, shape: tuple[int, ...] = (1, 4, 4), seed: int = 0) -> tuple[Split, Split]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = (x.reshape(n, -1)[:, 0] > 0).astype(np.int64) + 2 * (x.reshape(n, -1)[:, 1] > 0).astype(np.int64)
    data = ArrayData(x, y)
    idx = np.arange(n)
    return Split(data, idx[: n * 3 // 4]), Split(data, idx[n * 3 // 4 :])


def _task(epochs: int = 1, lr: float = 0.1) -> Classification:
    return Classification(
        optimizer=lambda params: torch.optim.SGD(params, lr=lr, momentum=0.9), local_epochs=epochs, batch_size=8
    )


def _ctx(model: nn.Module, task: Any, state: dict[str, Any] | None = None, rnd: int = 1, pid: int = 0) -> ClientContext:
    """A client's context as the runner builds it: global weights loaded into ``model``."""
    train, val = _data()
    ctx = ClientContext(
        round=rnd,
        partition_id=pid,
        seed=1234 + rnd,
        device=CPU,
        config={"server-round": rnd},
        run_config={},
        model=model,
        global_weights={k: v.detach().clone() for k, v in model.state_dict().items()},
        state=state if state is not None else {},
        payload={},
        task=task,
        train_data=train,
        val_data=val,
        generator=torch.Generator().manual_seed(1234 + rnd),
        optimizer=task.configure_optimizer(model),
    )

    def train_fn(m: nn.Module | None, o: torch.optim.Optimizer | None) -> dict[str, float]:
        m = ctx.model if m is None else m
        o = ctx.optimizer if o is None else o
        assert o is not None
        tctx = TrainContext(
            device=CPU,
            seed=ctx.seed,
            round=rnd,
            partition_id=pid,
            generator=ctx.generator,
            local_epochs=ctx.local_epochs,
            max_steps=ctx.max_steps,
        )
        metrics = dict(task.train(m, o, ctx.train_data, tctx))
        ctx.steps = tctx.steps
        return metrics

    ctx.train_fn = train_fn
    return ctx


def _train_round(algo: Any, ctx: ClientContext) -> dict[str, float]:
    algo.setup(ctx)
    metrics = algo.fit(ctx)
    algo.finish(ctx)
    return metrics


def _sent(ctx: ClientContext) -> dict[str, torch.Tensor]:
    return ctx.send_weights if ctx.send_weights is not None else dict(ctx.model.state_dict())


def _mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(input_shape=[1, 4, 4], num_classes=4, hidden=[8])


def _equal(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))


# ------------------------------------------------------------------------------------ FedRep
def test_fedrep_trains_the_head_with_the_body_frozen_then_the_body_and_keeps_the_head():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    ctx = _ctx(model, _task())
    FedRepClient(head_epochs=1, body_epochs=0).fit(ctx)
    after = model.state_dict()
    assert all(_equal(after[k], before[k]) for k in before if not k.startswith("head."))  # body frozen
    assert not _equal(after["head.weight"], before["head.weight"])
    assert all(p.requires_grad for p in model.parameters())  # the cached model is unfrozen again

    model = _mlp()
    ctx = _ctx(model, _task())
    FedRepClient(head_epochs=0, body_epochs=1).fit(ctx)
    after = model.state_dict()
    assert _equal(after["head.weight"], before["head.weight"]) and _equal(after["head.bias"], before["head.bias"])
    assert not _equal(after["body.1.weight"], before["body.1.weight"])


def test_fedrep_sends_the_body_keeps_the_head_and_evaluates_its_own_head():
    algo = FedRepClient(head_epochs=2, body_epochs=1)
    ctx = _ctx(_mlp(), _task())
    _train_round(algo, ctx)
    sent, trained = _sent(ctx), ctx.model.state_dict()
    assert _equal(sent["head.weight"], ctx.global_weights["head.weight"])  # the server gets back what it sent
    assert _equal(sent["body.1.weight"], trained["body.1.weight"]) and not _equal(
        sent["body.1.weight"], ctx.global_weights["body.1.weight"]
    )
    head = ctx.state["fedrep_head"]
    assert sorted(head) == ["head.bias", "head.weight"] and _equal(head["head.weight"], trained["head.weight"])

    # next round: a new global model arrives; the client's head replaces the global head
    other = _mlp(seed=5)
    ctx2 = _ctx(other, _task(), state=ctx.state, rnd=2)
    algo.setup(ctx2)
    assert _equal(other.state_dict()["head.weight"], head["head.weight"])
    personal = algo.personal_model(_ctx(_mlp(seed=7), _task(), state=ctx.state, rnd=2))
    glob = _mlp(seed=7).state_dict()
    assert _equal(personal.state_dict()["head.weight"], head["head.weight"])
    assert _equal(personal.state_dict()["body.1.weight"], glob["body.1.weight"])


def test_fedrep_settings_are_checked():
    with pytest.raises(ConfigError, match=r"^strategy.client.head: .* matches no parameter"):
        FedRepClient(head=["classifier.*"]).fit(_ctx(_mlp(), _task()))
    with pytest.raises(ConfigError, match=r"^strategy.client.head_epochs: expected an integer >= 0"):
        FedRepClient(head_epochs=-1)
    with pytest.raises(ConfigError, match=r"^strategy.client.head_epochs: .*at least 1"):
        FedRepClient(head_epochs=0, body_epochs=0)


def test_train_epochs_runs_that_many_epochs_and_restores_the_context():
    task = _task(epochs=5)
    ctx = _ctx(_mlp(), task)
    ctx.local_epochs = 3  # e.g. a straggler's
    epochs = []
    ctx.train_fn = lambda m, o: epochs.append(ctx.local_epochs) or {"loss": 0.0}
    train_epochs(ctx, None, None, 2)
    assert epochs == [2] and ctx.local_epochs == 3 and task.local_epochs == 5
    assert train_epochs(ctx, None, None, 0) == {} and epochs == [2]

    def boom(m: Any, o: Any) -> dict[str, float]:
        raise RuntimeError("boom")

    ctx.train_fn = boom
    with pytest.raises(RuntimeError):
        train_epochs(ctx, None, None, 3)
    assert ctx.local_epochs == 3


def test_epoch_counts_reach_the_tasks_loop():
    """The task's loop runs head_epochs + body_epochs epochs (steps counted by before_step)."""
    train, _ = _data()
    per_epoch = -(-len(train) // 8)
    ctx = _ctx(_mlp(), _task(epochs=5))
    steps = []
    inner = ctx.train_fn
    assert inner is not None

    def counting(m: Any, o: Any) -> dict[str, float]:
        metrics = inner(m, o)
        steps.append(ctx.steps)
        return metrics

    ctx.train_fn = counting
    FedRepClient(head_epochs=3, body_epochs=2).fit(ctx)
    assert steps == [3 * per_epoch, 2 * per_epoch] and per_epoch > 1


# ------------------------------------------------------------------------------------- FedBN
def _old_cnn(input_shape: list[int], num_classes: int) -> nn.Module:
    """The CNN as it was before the norm option (runner/models at 971c439)."""

    class Old(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(input_shape[0], 32, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, 64, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.AdaptiveAvgPool2d(4),
            )
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU())
            self.head = nn.Linear(128, num_classes)

    return Old()


def test_cnn_without_norm_is_todays_cnn_bit_for_bit():
    torch.manual_seed(3)
    new = CNN([1, 8, 8], 10).state_dict()
    torch.manual_seed(3)
    old = _old_cnn([1, 8, 8], 10).state_dict()
    assert list(new) == list(old)
    assert all(_equal(new[k], old[k]) for k in old)
    assert norm_keys(CNN([1, 8, 8], 10)) == []


def test_cnn_batch_norm_option():
    model = CNN([1, 8, 8], 10, norm="batch")
    keys = norm_keys(model)
    assert (
        "features.1.running_mean" in keys and "features.1.weight" in keys and "features.4.num_batches_tracked" in keys
    )
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)  # a batch of one trains (BatchNorm2d only)
    with pytest.raises(ValueError, match="norm"):
        CNN([1, 8, 8], 10, norm="layer")


def test_fedbn_keeps_the_norm_layers_local_and_sends_back_the_rest():
    torch.manual_seed(0)
    model = CNN([1, 4, 4], 4, channels=(4, 4), hidden=8, norm="batch")
    algo = FedBNClient()
    ctx = _ctx(model, _task())
    _train_round(algo, ctx)
    sent, trained, keys = _sent(ctx), model.state_dict(), norm_keys(model)
    kept = ctx.state["fedbn_norm"]
    assert sorted(kept) == sorted(keys)
    for k in keys:
        assert _equal(sent[k], ctx.global_weights[k])  # never averaged
        assert _equal(kept[k], trained[k])
    assert not _equal(kept["features.1.running_mean"], ctx.global_weights["features.1.running_mean"])
    assert int(kept["features.1.num_batches_tracked"]) > 0
    assert _equal(sent["features.0.weight"], trained["features.0.weight"])
    personal = algo.personal_model(_ctx(copy.deepcopy(model), _task(), state=ctx.state))
    assert _equal(personal.state_dict()["features.1.running_var"], kept["features.1.running_var"])


def test_fedbn_refuses_a_model_without_normalization_layers():
    with pytest.raises(ConfigError, match=r"^model: strategy=fedbn .* model=cnn_bn"):
        FedBNClient().setup(_ctx(_mlp(), _task()))
    arrays = ArrayRecord({k: Array(v.numpy()) for k, v in _mlp().state_dict().items()})
    with pytest.raises(ConfigError, match=r"^model: strategy=fedbn"):
        FedBN().configure_train(1, arrays, None, None)  # type: ignore[arg-type]


# --------------------------------------------------------------- server halves (aggregation)
def _reply(arrays: dict[str, np.ndarray], n: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord({"num-examples": n, "train_loss": 1.0}),
        }
    )
    meta = Metadata(
        run_id=1,
        message_id="",
        src_node_id=1,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=600.0,
        message_type="train",
    )
    return Message(content=content, metadata=meta)


@pytest.fixture
def in_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds a strategy's messages for the run of the process (set by its engine)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class _Grid:
    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def test_keep_unchanged_returns_what_it_sent_for_arrays_no_client_changed(in_a_run: None):
    rng = np.random.default_rng(0)
    sent = {"head": rng.normal(size=(7, 5)).astype(np.float32), "body": rng.normal(size=(3,)).astype(np.float32)}
    replies = [_reply({"head": sent["head"], "body": sent["body"] + i}, n) for i, n in enumerate((1, 3, 7))]
    strategy = KeepUnchanged(fraction_train=1.0, min_available_nodes=1, min_train_nodes=1)
    list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in sent.items()}), _config(), _Grid()))
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is not None and metrics is not None
    assert np.array_equal(arrays["head"].numpy(), sent["head"])  # bit for bit
    expected = sum(w / 11 * (sent["body"] + i) for i, w in enumerate((1, 3, 7)))
    assert np.allclose(arrays["body"].numpy(), expected) and not np.allclose(arrays["body"].numpy(), sent["body"])


def _config() -> ConfigRecord:
    return ConfigRecord({})


def test_local_server_keeps_the_global_model_and_aggregates_metrics(in_a_run: None):
    sent = {"w": np.arange(6, dtype=np.float32)}
    strategy = Local(fraction_train=1.0, min_available_nodes=1, min_train_nodes=1)
    record = ArrayRecord({k: Array(v) for k, v in sent.items()})
    list(strategy.configure_train(1, record, _config(), _Grid()))
    arrays, metrics = strategy.aggregate_train(1, [_reply({"w": sent["w"] + 1}, 2), _reply({"w": sent["w"] * 3}, 5)])
    assert arrays is not None and np.array_equal(arrays["w"].numpy(), sent["w"])
    assert metrics is not None and metrics["train_loss"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------- local
def test_local_client_trains_its_own_model_from_round_to_round():
    algo = LocalClient()
    init = _mlp()
    ctx = _ctx(copy.deepcopy(init), _task())
    assert _equal(algo.personal_model(ctx).state_dict()["head.weight"], init.state_dict()["head.weight"])
    _train_round(algo, ctx)
    own = ctx.state["local_model"]
    assert all(_equal(_sent(ctx)[k], ctx.global_weights[k]) for k in own)  # nothing to aggregate
    assert not _equal(own["head.weight"], init.state_dict()["head.weight"])

    ctx2 = _ctx(copy.deepcopy(init), _task(), state=ctx.state, rnd=2)  # the server's model never moved
    algo.setup(ctx2)
    assert all(_equal(ctx2.model.state_dict()[k], own[k]) for k in own)  # continues from its own
    algo.fit(ctx2)
    algo.finish(ctx2)
    assert not _equal(ctx2.state["local_model"]["head.weight"], own["head.weight"])
    personal = algo.personal_model(_ctx(copy.deepcopy(init), _task(), state=ctx2.state, rnd=2))
    assert _equal(personal.state_dict()["head.weight"], ctx2.state["local_model"]["head.weight"])


# -------------------------------------------------------------------------------------- APFL
def test_apfl_mixture_gradients_are_the_papers():
    """grad_v = alpha * grad f(v_bar) and grad_alpha = <v - w, grad f(v_bar)> (Deng et al., eq. 5-6)."""
    torch.manual_seed(0)
    v, w = _mlp(1), _mlp(2)
    x, y = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 3, 0])
    mixture = _Mixture(v, {k: t.numpy() for k, t in v.state_dict().items()}, dict(w.state_dict()), 0.3, True)
    nn.functional.cross_entropy(mixture(x), y).backward()
    bar = _mlp(3)
    with torch.no_grad():
        for p, pv, pw in zip(bar.parameters(), v.parameters(), w.parameters(), strict=True):
            p.copy_(0.3 * pv + 0.7 * pw)
    nn.functional.cross_entropy(bar(x), y).backward()
    grads = {n: p.grad for n, p in bar.named_parameters()}
    for n, p in mixture.v.named_parameters():
        assert p.grad is not None and torch.allclose(p.grad, 0.3 * grads[n], atol=1e-6), n
    dalpha = sum(((pv - pw) * grads[n]).sum() for (n, pv), pw in zip(v.named_parameters(), w.parameters(), strict=True))
    assert mixture.alpha.grad is not None and torch.allclose(mixture.alpha.grad, dalpha, atol=1e-5)


def test_apfl_client_round_keeps_v_and_alpha_and_sends_w():
    algo = APFLClient(alpha=0.5, adaptive_alpha=True)
    ctx = _ctx(_mlp(), _task())
    plain = _ctx(_mlp(), _task())
    metrics = _train_round(algo, ctx)
    assert metrics == plain.train()  # w trains exactly as FedAvg's local model (same data order)
    assert all(_equal(_sent(ctx)[k], plain.model.state_dict()[k]) for k in _sent(ctx))
    alpha = ctx.state["apfl_alpha"]
    assert 0.0 <= alpha <= 1.0 and alpha != 0.5 and ctx.metrics["apfl_alpha"] == alpha
    v = ctx.state["apfl_v"]
    assert not _equal(v["head.weight"], ctx.global_weights["head.weight"])

    # personal model: alpha * v + (1 - alpha) * w with the current global w
    new_global = _mlp(seed=9)
    personal = algo.personal_model(_ctx(copy.deepcopy(new_global), _task(), state=ctx.state, rnd=2))
    a = torch.tensor(alpha, dtype=torch.float32)
    for k, p in new_global.state_dict().items():
        assert _equal(personal.state_dict()[k], a * torch.from_numpy(v[k]) + (1 - a) * p), k


def test_apfl_fixed_alpha_zero_never_moves_v_and_a_new_client_is_the_global_model():
    algo = APFLClient(alpha=0.0, adaptive_alpha=False)
    ctx = _ctx(_mlp(), _task())
    assert _equal(algo.personal_model(ctx).state_dict()["head.weight"], ctx.global_weights["head.weight"])
    _train_round(algo, ctx)
    assert ctx.state["apfl_alpha"] == 0.0
    assert all(_equal(ctx.state["apfl_v"][k], ctx.global_weights[k]) for k in ctx.global_weights)
    with pytest.raises(ConfigError, match=r"^strategy.client.alpha"):
        APFLClient(alpha=1.5)


# -------------------------------------------------------------------------------- fine-tuning
def test_finetune_evaluates_a_seeded_fine_tuned_copy_and_keeps_nothing():
    task = _task(epochs=5)
    algo = FineTuneClient(finetune_epochs=1)
    ctx = _ctx(_mlp(), task)
    glob = copy.deepcopy(ctx.model.state_dict())
    algo.setup_evaluate(ctx)
    first = algo.personal_model(ctx)
    second = algo.personal_model(ctx)
    assert all(_equal(first.state_dict()[k], second.state_dict()[k]) for k in glob)  # seeded
    assert not _equal(first.state_dict()["head.weight"], glob["head.weight"])
    assert all(_equal(ctx.model.state_dict()[k], glob[k]) for k in glob)  # the global model is untouched
    assert ctx.state == {} and ctx.local_epochs is None

    task3 = _task(epochs=5)
    epochs_run = []
    task3.train = lambda m, o, d, c: epochs_run.append(c.local_epochs) or {}  # type: ignore[method-assign]
    FineTuneClient(finetune_epochs=3).personal_model(_ctx(_mlp(), task3))
    assert epochs_run == [3]  # finetune_epochs, not the task's local_epochs
    assert FineTuneClient(finetune_epochs=0).personal_model(ctx).state_dict()["head.weight"].equal(glob["head.weight"])
