"""Bare Flower: the runner's default experiment written the way Flower's docs write it.

Message-API ``ServerApp`` with ``@app.main()`` calling ``FedAvg.start(grid=...,
initial_arrays=..., num_rounds=..., evaluate_fn=...)``; ``evaluate_fn`` does centralized
evaluation and ``torch.save``s the global model every round (Flower's how-to for saving
models); a ``ClientApp`` with ``@app.train()``/``@app.evaluate()``; and
``flwr.simulation.run_simulation``. Same data, partitions, model and local training as the
runner (``runner.dataset``, ``runner.task``), same number of clients and rounds, same Ray
client resources. No Hydra, no checkpoint manifests, no exact-resume machinery.

    python benchmarks/bare_flower.py [--num-rounds 5] [--num-clients 10] [--local-epochs 5]

Models are written to ./models (cwd), one ``model_round_N.pth`` per round.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from runner import task
from runner.dataset import client_split, server_test_split

# The runner's defaults (conf/config.yaml + conf/{model,dataset,partitioner,strategy}/ defaults);
# benchmarks/bench_overhead.py checks that they still match the composed Hydra config.
DEFAULTS = {
    "seed": 0,
    "num_rounds": 5,
    "num_clients": 10,
    "model": {"name": "mlp", "hidden": [128]},
    "dataset": {"name": "digits"},
    "partitioner": {"name": "iid"},
    "train": {"local_epochs": 5, "batch_size": 16, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0},
    "eval": {"val_fraction": 0.2, "test_fraction": 0.2, "batch_size": 256},
    "strategy": {"fraction_train": 0.5, "fraction_evaluate": 0.5, "min_train_nodes": 2, "min_evaluate_nodes": 2, "min_available_nodes": 2},
    "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
}

CFG: dict = json.loads(json.dumps(DEFAULTS))  # set from the command line in main()
DEVICE = torch.device("cpu")

# -- ClientApp -------------------------------------------------------------------------------
client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    cfg = json.loads(str(msg.content["config"]["cfg"]))
    model = task.build_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data, train_idx, _ = client_split(cfg, pid)
    seed = task.derive_seed(cfg["seed"], int(msg.content["config"]["server-round"]), pid, "train")
    loss, acc = task.train(model, data, train_idx, cfg["train"], seed, DEVICE)
    metrics = MetricRecord({"train_loss": loss, "train_accuracy": acc, "num-examples": len(train_idx)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    cfg = json.loads(str(msg.content["config"]["cfg"]))
    model = task.build_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data, _, val_idx = client_split(cfg, pid)
    loss, acc = task.evaluate(model, data, val_idx, int(cfg["eval"]["batch_size"]), DEVICE)
    metrics = MetricRecord({"eval_loss": loss, "eval_accuracy": acc, "num-examples": len(val_idx)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


# -- ServerApp -------------------------------------------------------------------------------
server = ServerApp()


@server.main()
def main_server(grid: Grid, context: Context) -> None:
    from flwr.app import ConfigRecord

    torch.manual_seed(CFG["seed"])
    model = task.build_model(CFG)
    test_data, test_idx = server_test_split(CFG)
    models = Path("models")
    models.mkdir(exist_ok=True)

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, test_data, test_idx, int(CFG["eval"]["batch_size"]), DEVICE)
        if server_round > 0:
            torch.save(model.state_dict(), models / f"model_round_{server_round}.pth")
        return MetricRecord({"accuracy": acc, "loss": loss})

    strategy = FedAvg(**CFG["strategy"])
    config = ConfigRecord({"cfg": json.dumps(CFG)})
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(CFG["num_rounds"]),
        train_config=config,
        evaluate_config=config,
        evaluate_fn=central_evaluate,
    )
    final = result.evaluate_metrics_serverapp[int(CFG["num_rounds"])]
    print(f"bare flower: {CFG['num_rounds']} rounds, final centralized accuracy {final['accuracy']:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-rounds", type=int, default=DEFAULTS["num_rounds"])
    ap.add_argument("--num-clients", type=int, default=DEFAULTS["num_clients"])
    ap.add_argument("--local-epochs", type=int, default=DEFAULTS["train"]["local_epochs"])
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--num-cpus", type=float, default=DEFAULTS["client_resources"]["num_cpus"], help="Ray CPUs per client (actor)")
    a = ap.parse_args()
    CFG.update(num_rounds=a.num_rounds, num_clients=a.num_clients, seed=a.seed)
    CFG["client_resources"]["num_cpus"] = a.num_cpus
    CFG["train"]["local_epochs"] = a.local_epochs
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=a.num_clients,
        backend_config={"client_resources": dict(CFG["client_resources"])},
    )


if __name__ == "__main__":
    main()
