"""The physical floor: the runner's default experiment as one plain PyTorch loop.

No Flower, no Ray, no Hydra: for each round, sample the same number of clients (the same
partitions the runner samples: ``random`` seeded per round, ``random.sample`` over
partition ids), train a copy of the global model on each (``runner.task.train``, one torch
thread like each Ray actor), average the weights by number of examples (FedAvg), evaluate
the sampled evaluation clients on their validation splits and the server test split.
Nothing is saved. Prints one JSON line with a timing breakdown (``FLOOR {...}``).

    python benchmarks/floor.py [--num-rounds 5] [--num-clients 10] [--local-epochs 5]
"""

from __future__ import annotations

import time

T_START = time.monotonic()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runner import task  # noqa: E402
from runner.dataset import client_split, server_test_split  # noqa: E402

T_IMPORTS = time.monotonic()


def fedavg(states: list[dict[str, np.ndarray]], weights: list[int]) -> dict[str, np.ndarray]:
    total = float(sum(weights))
    return {k: sum(s[k] * (w / total) for s, w in zip(states, weights)).astype(states[0][k].dtype) for k in states[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-rounds", type=int, default=5)
    ap.add_argument("--num-clients", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.5, help="fraction_train = fraction_evaluate")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cfg = {
        "seed": a.seed,
        "num_clients": a.num_clients,
        "model": {"name": "mlp", "hidden": [128]},
        "dataset": {"name": "digits"},
        "partitioner": {"name": "iid"},
        "train": {"local_epochs": a.local_epochs, "batch_size": 16, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 0.0},
        "eval": {"val_fraction": 0.2, "test_fraction": 0.2, "batch_size": 256},
    }
    torch.set_num_threads(1)
    device = torch.device("cpu")
    times = {"imports_s": T_IMPORTS - T_START}
    t = time.monotonic()
    test_data, test_idx = server_test_split(cfg)
    for pid in range(a.num_clients):
        client_split(cfg, pid)
    times["data_s"] = time.monotonic() - t

    torch.manual_seed(a.seed)
    model = task.build_model(cfg)
    glob = task.state_to_numpy(model)
    k = max(int(a.num_clients * a.fraction), 2)
    t = time.monotonic()
    task.evaluate(model, test_data, test_idx, 256, device)
    times["centralized_s"] = time.monotonic() - t
    times.update(train_s=0.0, aggregate_s=0.0, fed_eval_s=0.0)
    rounds = []
    for rnd in range(1, a.num_rounds + 1):
        t_round = time.monotonic()
        random.seed(task.derive_seed(a.seed, rnd, "sample-train"))
        sampled = sorted(random.sample(range(a.num_clients), k))
        states, sizes = [], []
        t = time.monotonic()
        for pid in sampled:
            local = task.build_model(cfg)
            local.load_state_dict({n: torch.from_numpy(v) for n, v in glob.items()})
            data, train_idx, _ = client_split(cfg, pid)
            task.train(local, data, train_idx, cfg["train"], task.derive_seed(a.seed, rnd, pid, "train"), device)
            states.append(task.state_to_numpy(local))
            sizes.append(len(train_idx))
        times["train_s"] += time.monotonic() - t
        t = time.monotonic()
        glob = fedavg(states, sizes)
        times["aggregate_s"] += time.monotonic() - t
        t = time.monotonic()
        random.seed(task.derive_seed(a.seed, rnd, "sample-evaluate"))
        for pid in sorted(random.sample(range(a.num_clients), k)):
            data, _, val_idx = client_split(cfg, pid)
            model.load_state_dict({n: torch.from_numpy(v) for n, v in glob.items()})
            task.evaluate(model, data, val_idx, 256, device)
        times["fed_eval_s"] += time.monotonic() - t
        t = time.monotonic()
        model.load_state_dict({n: torch.from_numpy(v) for n, v in glob.items()})
        loss, acc = task.evaluate(model, test_data, test_idx, 256, device)
        times["centralized_s"] += time.monotonic() - t
        rounds.append({"round": rnd, "s": round(time.monotonic() - t_round, 4), "accuracy": acc})
    times["total_in_process_s"] = time.monotonic() - T_START
    out = {k: round(v, 4) for k, v in times.items()}
    out["rounds"] = rounds
    print("FLOOR " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
