"""Flower ClientApp: local training and evaluation of one partition with the run's task.

Runs inside Ray workers (simulation) or SuperNodes (deployment). Everything it needs
arrives in the message: the driver-resolved run config as JSON (so no Hydra resolver runs
here), the global arrays, and this client's state when the run keeps any
(:mod:`runner.client_state`). Local training is seeded from (seed, round, partition id):
the same in every process and every run.

What a client does beyond the task's plain loop comes from the run's client algorithms
(:mod:`runner.algorithms`: the ``strategy.client`` node plus the built-in features); this
module only calls their hooks, in the order :mod:`runner.algorithms.base` documents, and
carries their state and payload records. It holds no code for any one algorithm.

Client-side DP (``dp=client_fixed|client_adaptive``) uses Flower's own mods,
``fixedclipping_mod`` / ``adaptiveclipping_mod``; they expect exactly one ArrayRecord and one
ConfigRecord, so :func:`dp_mod` hands them the message without the runner's side records
(client state, algorithm payloads) and puts those back afterwards.
"""

from __future__ import annotations

import json
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from runner.client_state import CLIENT_STATE_KEY
from runner.records import array_numpy, arrays_of, config_of, torch_state_dict

if TYPE_CHECKING:
    import torch

    from runner.algorithms.base import ClientAlgorithm, ClientContext

# Flower's deployment runtime starts a fresh process for every message, and node discovery
# (query) needs none of torch, the model, the task or the data: those are imported by the
# handlers that use them, so a query process costs flwr's import and nothing more.

RUN_CONFIG_KEY = "runner-config"
PARTITION_KEY = "partition-id"
_FLOWER_KEYS = ("arrays", "config", "metrics", CLIENT_STATE_KEY)  # records that are not algorithm payloads


@lru_cache(maxsize=4)
def _parse(config_json: str) -> dict[str, Any]:
    return dict(json.loads(config_json))


def run_config(msg: Message) -> dict[str, Any]:
    return _parse(str(config_of(msg.content)[RUN_CONFIG_KEY]))


def client_dp_mode(run_cfg: dict[str, Any]) -> str | None:
    target = str((run_cfg.get("dp") or {}).get("_target_", ""))
    if "ClientSideFixedClipping" in target:
        return "fixed"
    if "ClientSideAdaptiveClipping" in target:
        return "adaptive"
    return None


def dp_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Apply Flower's client-side clipping mod when the run's ``dp`` asks for it."""
    if msg.metadata.message_type != "train" or "config" not in msg.content:
        return call_next(msg, context)
    mode = client_dp_mode(run_config(msg))
    if mode is None:
        return call_next(msg, context)
    from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

    flower_mod = fixedclipping_mod if mode == "fixed" else adaptiveclipping_mod
    side_in = _take_side_records(msg.content, keep=("arrays", "config"))
    side_out: dict[str, Any] = {}

    def inner(m: Message, c: Context) -> Message:
        m.content.update(side_in)
        reply = call_next(m, c)
        if not reply.has_error():
            side_out.update(_take_side_records(reply.content, keep=("arrays", "metrics")))
        return reply

    reply = flower_mod(msg, context, inner)
    if not reply.has_error():
        reply.content.update(side_out)
    return reply


def _take_side_records(content: RecordDict, keep: tuple[str, ...]) -> dict[str, Any]:
    side = {k: content[k] for k in list(content.keys()) if k not in keep}
    for k in side:
        del content[k]
    return side


app = ClientApp(mods=[dp_mod])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random per run)."""
    pid = int(context.node_config[PARTITION_KEY])
    return Message(RecordDict({"info": ConfigRecord({PARTITION_KEY: pid})}), reply_to=msg)


def _metric_record(metrics: dict[str, float], n: int) -> MetricRecord:
    record: dict[str, Any] = {k: float(v) for k, v in metrics.items()}
    record["num-examples"] = n
    record["unit-weight"] = 1  # equal client weights, for DP accounting (weighted_by_key: unit-weight)
    return MetricRecord(record)


def _context(msg: Message, context: Context, kind: str) -> tuple[ClientContext, tuple[ClientAlgorithm, ...]]:
    """The algorithms' view of this message: global weights loaded, this client's state."""
    import torch

    from runner.algorithms.base import ClientContext
    from runner.algorithms.compose import cached_algorithms
    from runner.client_state import from_record
    from runner.data import client_split
    from runner.lean_torch import eager_optimizers
    from runner.runtime import cached_model, cached_task, derive_seed, pick_device

    eager_optimizers()  # before the first optimizer: no torch._dynamo import in a process that never compiles
    run_cfg = run_config(msg)
    pid = int(context.node_config[PARTITION_KEY])
    # Same thread count in every worker: float summation order, hence bits, depend on it.
    torch.set_num_threads(max(1, int(run_cfg["backend"]["client_resources"]["num_cpus"])))
    device = pick_device(run_cfg["device"])
    config = dict(config_of(msg.content))
    rnd = int(str(config["server-round"]))
    global_weights = torch_state_dict(arrays_of(msg.content, "arrays"))
    model = cached_model(run_cfg)
    model.load_state_dict(global_weights)
    state = from_record(arrays_of(msg.content, CLIENT_STATE_KEY)) if CLIENT_STATE_KEY in msg.content else {}
    payload = {
        k: {n: array_numpy(a) for n, a in arrays_of(msg.content, k).items()}
        for k in msg.content.keys()
        if k not in _FLOWER_KEYS and isinstance(msg.content[k], ArrayRecord)
    }
    train_data, val_data = client_split(run_cfg, pid)
    seed = derive_seed(run_cfg["seed"], rnd, pid, kind)
    ctx = ClientContext(
        round=rnd,
        partition_id=pid,
        seed=seed,
        device=device,
        config={k: v for k, v in config.items() if k != RUN_CONFIG_KEY},
        run_config=run_cfg,
        model=model.to(device),
        global_weights=global_weights,
        state=dict(state),
        payload=payload,
        task=cached_task(run_cfg),
        train_data=train_data,
        val_data=val_data,
        message=kind,
    )
    return ctx, cached_algorithms(run_cfg)


def _overrides(algorithm: ClientAlgorithm, hook: str) -> bool:
    from runner.algorithms.base import ClientAlgorithm

    return getattr(type(algorithm), hook) is not getattr(ClientAlgorithm, hook)


def _train_fn(ctx: ClientContext, algorithms: tuple[ClientAlgorithm, ...]) -> Any:
    """``ctx.train``: the task's loop on a model, with every algorithm's loss terms and step
    hooks; checks that the task called the hooks the algorithms rely on."""
    from runner.tasks import TrainContext

    def train(model: torch.nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        model = ctx.model if model is None else model
        optimizer = ctx.optimizer if optimizer is None else optimizer
        tctx = TrainContext(
            device=ctx.device,
            seed=ctx.seed,
            round=ctx.round,
            partition_id=ctx.partition_id,
            generator=ctx.generator,
            config=ctx.config,
            local_epochs=ctx.local_epochs,
            max_steps=ctx.max_steps,
            loss_terms=[partial(a.loss_term, ctx) for a in algorithms if _overrides(a, "loss_term")],
            step_hooks=[partial(a.after_backward, ctx) for a in algorithms if _overrides(a, "after_backward")],
        )
        metrics = dict(ctx.task.train(model, optimizer, ctx.train_data, tctx))
        ctx.steps = tctx.steps
        target = ctx.run_config["task"].get("_target_")
        for a in algorithms:
            if a.uses_loss_term and tctx.penalty_calls == 0:
                raise RuntimeError(
                    f"task {target} never calls ctx.penalty(model): {type(a).__name__}'s loss term would be ignored"
                )
            if a.uses_step_hook and tctx.steps == 0:
                raise RuntimeError(
                    f"task {target} never calls ctx.before_step(model): {type(a).__name__}'s step hook would be ignored"
                )
        return metrics

    return train


@app.train()
def train(msg: Message, context: Context) -> Message:
    import torch

    from runner.client_state import to_record
    from runner.heterogeneity import straggler_limits
    from runner.runtime import seed_torch

    ctx, algorithms = _context(msg, context, "train")
    if ctx.partition_id in ctx.run_config["fail_clients"]:
        raise RuntimeError(f"injected failure in client {ctx.partition_id} (fail_clients)")
    for a in algorithms:
        missing = [p.name for p in a.down if p.name not in ctx.payload]
        if missing:
            raise RuntimeError(
                f"{type(a).__name__} expects the record {missing[0]!r} from its server half, and the train message "
                f"has none: does strategy._target_ ({ctx.run_config['strategy'].get('_target_')}) match it?"
            )
    ctx.optimizer = ctx.task.configure_optimizer(ctx.model)
    seed_torch(ctx.seed, ctx.device)
    ctx.generator = torch.Generator().manual_seed(ctx.seed)
    ctx.train_fn = _train_fn(ctx, algorithms)
    # clients.straggler_fraction: this client's shorter training this round (same draw in every run)
    ctx.local_epochs, ctx.max_steps = straggler_limits(ctx.run_config, ctx.round, ctx.partition_id)
    for a in algorithms:
        a.setup(ctx)
    fit = next((a for a in algorithms if _overrides(a, "fit")), None)
    metrics = fit.fit(ctx) if fit is not None else ctx.train()
    ctx.send_weights = {k: v.detach().cpu() for k, v in ctx.model.state_dict().items()}
    for a in algorithms:
        a.finish(ctx)
    content: dict[str, Any] = {}
    for a in algorithms:
        for p in a.up:
            if p.name not in ctx.reply:
                raise RuntimeError(f"{type(a).__name__} declares the record {p.name!r} but did not put it in ctx.reply")
    for name, arrays in ctx.reply.items():
        content[name] = ArrayRecord(
            {k: Array(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in arrays.items()}
        )
    content["arrays"] = ArrayRecord(ctx.send_weights)
    content["metrics"] = _metric_record(
        {f"train_{k}": v for k, v in {**metrics, **ctx.metrics}.items()}, len(ctx.train_data)
    )
    if ctx.state or any(a.state_keys for a in algorithms):
        content[CLIENT_STATE_KEY] = to_record(ctx.state)
    return Message(RecordDict(content), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The global model on this client's held-out split (``eval_<m>``), and, when an
    algorithm has a personal model, that model too (``eval_personal_<m>``). State changed
    here is not kept: only train replies carry client state."""
    import torch

    from runner.algorithms.compose import personal_algorithm
    from runner.runtime import seed_torch
    from runner.tasks import EvalContext

    ctx, algorithms = _context(msg, context, "evaluate")
    data = ctx.val_data
    metrics = {f"eval_{k}": v for k, v in ctx.task.evaluate(ctx.model, data, EvalContext(device=ctx.device)).items()}
    personal = personal_algorithm(algorithms)
    if personal is not None:
        seed_torch(ctx.seed, ctx.device)  # fine-tuning before personal evaluation draws from here
        ctx.generator = torch.Generator().manual_seed(ctx.seed)
        ctx.optimizer = ctx.task.configure_optimizer(ctx.model)
        ctx.train_fn = _train_fn(ctx, algorithms)
        for a in algorithms:
            a.setup_evaluate(ctx)
        model = personal.personal_model(ctx)
        if model is not None:
            own = ctx.task.evaluate(model, data, EvalContext(device=ctx.device))
            metrics.update({f"eval_personal_{k}": v for k, v in own.items()})
    return Message(RecordDict({"metrics": _metric_record(metrics, len(data))}), reply_to=msg)
