"""Flower ClientApp: local training and evaluation on one partition.

Runs inside Ray workers. Everything it needs arrives in the message's ConfigRecord as the
driver-resolved run config (JSON), so no Hydra resolver is ever evaluated here. Local
training is seeded from (seed, round, partition id): the same in every process and run.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from runner import task
from runner.dataset import client_split

RUN_CONFIG_KEY = "runner-config"
PARTITION_KEY = "partition-id"

app = ClientApp()


@lru_cache(maxsize=4)
def _parse(config_json: str) -> dict[str, Any]:
    return json.loads(config_json)


def _setup(msg: Message, context: Context) -> tuple[dict[str, Any], int, torch.nn.Module, torch.device]:
    config = msg.content["config"]
    run_cfg = _parse(str(config[RUN_CONFIG_KEY]))
    pid = int(context.node_config[PARTITION_KEY])
    # Same thread count in every worker: float summation order, hence bits, depend on it.
    torch.set_num_threads(max(1, int(run_cfg["backend"]["client_resources"]["num_cpus"])))
    model = task.build_model(run_cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return run_cfg, pid, model, task.pick_device(run_cfg["device"])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random per run)."""
    pid = int(context.node_config[PARTITION_KEY])
    return Message(RecordDict({"info": ConfigRecord({PARTITION_KEY: pid})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    run_cfg, pid, model, device = _setup(msg, context)
    if pid in run_cfg["fail_clients"]:
        raise RuntimeError(f"injected failure in client {pid} (fail_clients)")
    server_round = int(msg.content["config"]["server-round"])
    data, train_idx, _ = client_split(run_cfg, pid)
    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    seed = task.derive_seed(run_cfg["seed"], server_round, pid, "train")
    loss, acc = task.train(model, data, train_idx, run_cfg["train"], seed, device, proximal_mu=mu)
    metrics = MetricRecord(
        {
            "train_loss": loss,
            "train_accuracy": acc,
            "num-examples": len(train_idx),
        }
    )
    arrays = ArrayRecord(model.state_dict())
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    run_cfg, pid, model, device = _setup(msg, context)
    data, _, val_idx = client_split(run_cfg, pid)
    loss, acc = task.evaluate(model, data, val_idx, int(run_cfg["eval"]["batch_size"]), device)
    metrics = MetricRecord(
        {"eval_loss": loss, "eval_accuracy": acc, "num-examples": len(val_idx)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
