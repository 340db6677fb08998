"""Bare Flower: the runner's default experiment written the way Flower's docs write it.

Message-API ``ServerApp`` with ``@app.main()`` calling ``FedAvg.start(grid=...,
initial_arrays=..., num_rounds=..., evaluate_fn=...)``; ``evaluate_fn`` does centralized
evaluation and ``torch.save``s the global model every round (Flower's how-to for saving
models); a ``ClientApp`` with ``@app.train()``/``@app.evaluate()``; and
``flwr.simulation.run_simulation``. Same data, partitions, model and local training as the
runner (``runner.data``, ``runner.runtime``, the config's task), same number of clients and
rounds, same Ray client resources: the runner's composed config comes as a JSON file
(``benchmarks.common.composed_config``), so bare Flower itself runs no Hydra. No checkpoint
manifests, no exact-resume machinery.

    python benchmarks/bare_flower.py --config cfg.json

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

from runner.data import client_split, server_test_split
from runner.runtime import build_model, cached_task, derive_seed
from runner.tasks import EvalContext, TrainContext

CFG: dict = {}  # the runner's composed config (--config), set in main()
DEVICE = torch.device("cpu")

# -- ClientApp -------------------------------------------------------------------------------
client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    cfg = json.loads(str(msg.content["config"]["cfg"]))
    model = build_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data, _ = client_split(cfg, pid)
    task = cached_task(cfg)
    seed = derive_seed(cfg["seed"], int(msg.content["config"]["server-round"]), pid, "train")
    torch.manual_seed(seed)
    ctx = TrainContext(device=DEVICE, seed=seed, partition_id=pid, generator=torch.Generator().manual_seed(seed))
    m = task.train(model, task.configure_optimizer(model), data, ctx)
    metrics = MetricRecord({"train_loss": float(m["loss"]), "num-examples": len(data)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    cfg = json.loads(str(msg.content["config"]["cfg"]))
    model = build_model(cfg)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, val = client_split(cfg, pid)
    m = cached_task(cfg).evaluate(model, val, EvalContext(device=DEVICE))
    metrics = MetricRecord({"eval_loss": float(m["loss"]), "num-examples": len(val)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


# -- ServerApp -------------------------------------------------------------------------------
server = ServerApp()


@server.main()
def main_server(grid: Grid, context: Context) -> None:
    from flwr.app import ConfigRecord

    model = build_model(CFG)
    test = server_test_split(CFG)
    task = cached_task(CFG)
    models = Path("models")
    models.mkdir(exist_ok=True)

    def central_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        m = task.evaluate(model, test, EvalContext(device=DEVICE))
        if server_round > 0:
            torch.save(model.state_dict(), models / f"model_round_{server_round}.pth")
        return MetricRecord({"accuracy": float(m["accuracy"]), "loss": float(m["loss"])})

    strategy = FedAvg(**{k: v for k, v in CFG["strategy"].items() if not k.startswith("_")})
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
    ap.add_argument(
        "--config", type=Path, required=True, help="the runner's composed config as JSON (benchmarks/common.py)"
    )
    a = ap.parse_args()
    CFG.update(json.loads(a.config.read_text()))
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=int(CFG["num_clients"]),
        backend_config={"client_resources": dict(CFG["backend"]["client_resources"])},
    )


if __name__ == "__main__":
    main()
