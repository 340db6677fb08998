"""Flower ClientApp: local training and evaluation of one partition with the run's task.

Runs inside Ray workers (simulation) or SuperNodes (deployment). Everything it needs
arrives in the message: the driver-resolved run config as JSON (so no Hydra resolver runs
here), the global arrays, and this client's state when the run keeps any
(:mod:`runner.client_state`). Local training is seeded from (seed, round, partition id):
the same in every process and every run.

Client-side DP (``dp=client_fixed|client_adaptive``) uses Flower's own mods,
``fixedclipping_mod`` / ``adaptiveclipping_mod``; they expect exactly one ArrayRecord and one
ConfigRecord, so :func:`dp_mod` hands them the message without the runner's side records
(client state, SCAFFOLD's control variate) and puts those back afterwards.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from runner.client_state import CLIENT_STATE_KEY, from_record, personal_keys, personal_patterns, to_record
from runner.data import client_split
from runner.records import arrays_of, config_of
from runner.runtime import cached_model, cached_task, derive_seed, pick_device
from runner.tasks import EvalContext, TrainContext

RUN_CONFIG_KEY = "runner-config"
PARTITION_KEY = "partition-id"
SCAFFOLD_C = "scaffold-c"  # server -> client: the server control variate
SCAFFOLD_DC = "scaffold-dc"  # client -> server: the change of the client's control variate


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


def _setup(msg: Message, context: Context) -> tuple[dict[str, Any], int, torch.nn.Module, torch.device, dict[str, Any]]:
    run_cfg = run_config(msg)
    pid = int(context.node_config[PARTITION_KEY])
    # Same thread count in every worker: float summation order, hence bits, depend on it.
    torch.set_num_threads(max(1, int(run_cfg["backend"]["client_resources"]["num_cpus"])))
    device = pick_device(run_cfg["device"])
    model = cached_model(run_cfg)
    model.load_state_dict(arrays_of(msg.content, "arrays").to_torch_state_dict())
    state = from_record(arrays_of(msg.content, CLIENT_STATE_KEY)) if CLIENT_STATE_KEY in msg.content else {}
    patterns = personal_patterns(run_cfg)
    if patterns and "personal" in state:
        personal = {k: torch.from_numpy(v) for k, v in state["personal"].items()}
        model.load_state_dict(personal, strict=False)
    return run_cfg, pid, model.to(device), device, state


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random per run)."""
    pid = int(context.node_config[PARTITION_KEY])
    return Message(RecordDict({"info": ConfigRecord({PARTITION_KEY: pid})}), reply_to=msg)


def _metric_record(prefix: str, metrics: dict[str, float], n: int) -> MetricRecord:
    record: dict[str, Any] = {f"{prefix}_{k}": float(v) for k, v in metrics.items()}
    record["num-examples"] = n
    record["unit-weight"] = 1  # equal client weights, for DP accounting (weighted_by_key: unit-weight)
    return MetricRecord(record)


@app.train()
def train(msg: Message, context: Context) -> Message:
    run_cfg, pid, model, device, state = _setup(msg, context)
    if pid in run_cfg["fail_clients"]:
        raise RuntimeError(f"injected failure in client {pid} (fail_clients)")
    config = config_of(msg.content)
    rnd = int(str(config["server-round"]))
    data, _ = client_split(run_cfg, pid)
    task = cached_task(run_cfg)
    optimizer = task.configure_optimizer(model)
    keep_opt = bool(run_cfg["train"].get("keep_optimizer_state"))
    if keep_opt and "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    seed = derive_seed(run_cfg["seed"], rnd, pid, "train")
    torch.manual_seed(seed)
    ctx = TrainContext(
        device=device,
        seed=seed,
        round=rnd,
        partition_id=pid,
        generator=torch.Generator().manual_seed(seed),
        proximal_mu=float(str(config.get("proximal-mu", 0.0))),
    )
    scaffold = _Scaffold(msg, model, state, device) if SCAFFOLD_C in msg.content else None
    if scaffold is not None:
        ctx.correction = scaffold.correction
    ctx.start(model)
    metrics = task.train(model, optimizer, data, ctx)
    _check_hooks(run_cfg, ctx)
    global_arrays = arrays_of(msg.content, "arrays")
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    patterns = personal_patterns(run_cfg)
    content: dict[str, Any] = {}
    new_state: dict[str, Any] = dict(state)
    if patterns:
        keys = personal_keys(list(weights), patterns)
        new_state["personal"] = {k: weights[k].numpy().copy() for k in keys}
        for k in keys:  # personal layers stay here: the server gets back what it sent
            weights[k] = torch.from_numpy(global_arrays[k].numpy())
    if keep_opt:
        new_state["optimizer"] = optimizer.state_dict()
    if scaffold is not None:
        dc, new_state["scaffold_ci"] = scaffold.update(model, ctx, optimizer)
        content[SCAFFOLD_DC] = ArrayRecord({k: Array(v) for k, v in dc.items()})
    content["arrays"] = ArrayRecord(weights)
    content["metrics"] = _metric_record("train", metrics, len(data))
    if patterns or keep_opt or scaffold is not None:
        content[CLIENT_STATE_KEY] = to_record(new_state)
    return Message(RecordDict(content), reply_to=msg)


def _check_hooks(run_cfg: dict[str, Any], ctx: TrainContext) -> None:
    target = run_cfg["task"].get("_target_")
    if ctx.proximal_mu > 0 and ctx.penalty_calls == 0:
        raise RuntimeError(f"task {target} never calls ctx.penalty(model): FedProx's proximal term would be ignored")
    if ctx.correction is not None and ctx.steps == 0:
        raise RuntimeError(f"task {target} never calls ctx.before_step(model): SCAFFOLD's correction would be ignored")


class _Scaffold:
    """The client half of SCAFFOLD (Karimireddy et al. 2020, option II)."""

    def __init__(self, msg: Message, model: torch.nn.Module, state: dict[str, Any], device: torch.device) -> None:
        c = arrays_of(msg.content, SCAFFOLD_C)
        self.names = [n for n, _ in model.named_parameters()]
        self.c = {n: torch.from_numpy(c[n].numpy()).to(device) for n in self.names}
        ci = state.get("scaffold_ci") or {}
        self.ci = {
            n: torch.from_numpy(ci[n]).to(device) if n in ci else torch.zeros_like(self.c[n]) for n in self.names
        }
        self.x = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.correction = {n: self.c[n] - self.ci[n] for n in self.names}

    def update(
        self, model: torch.nn.Module, ctx: TrainContext, optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """(delta c_i for the server, new c_i): c_i+ = c_i - c + (x - y_i) / (K * lr)."""
        lr = float(optimizer.param_groups[0]["lr"])
        scale = 1.0 / (max(ctx.steps, 1) * lr)
        params = dict(model.named_parameters())
        dc, ci_new = {}, {}
        for n in self.names:
            new = self.ci[n] - self.c[n] + (self.x[n] - params[n].detach()) * scale
            dc[n] = (new - self.ci[n]).cpu().numpy()
            ci_new[n] = new.cpu().numpy()
        return dc, ci_new


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    run_cfg, pid, model, device, _ = _setup(msg, context)
    _, data = client_split(run_cfg, pid)
    metrics = cached_task(run_cfg).evaluate(model, data, EvalContext(device=device))
    return Message(RecordDict({"metrics": _metric_record("eval", metrics, len(data))}), reply_to=msg)
