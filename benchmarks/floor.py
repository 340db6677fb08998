"""The physical floor: the runner's default experiment as one plain PyTorch loop.

No Flower, no Ray: the run config is composed from the runner's own conf/ (Hydra's
compose API, same overrides), then for each round: sample the same clients the runner
samples (``random`` seeded per round, ``random.sample`` over partition ids), train a copy
of the global model on each with the runner's own task and data code
(``runner.runtime``, ``runner.data``, one torch thread like each Ray actor), average the
weights by number of examples (FedAvg), evaluate the sampled evaluation clients on their
validation splits and the server test split. Nothing is saved. Prints one JSON line with a
timing breakdown (``FLOOR {...}``), per round too.

    python benchmarks/floor.py [--num-rounds 5] [--num-clients 10] [--local-epochs 5]
"""

from __future__ import annotations

import time

T_START = time.monotonic()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runner.config import to_container  # noqa: E402
from runner.data import client_split, server_test_split  # noqa: E402
from runner.runtime import build_model, cached_task, derive_seed, state_to_numpy  # noqa: E402
from runner.tasks import EvalContext, TrainContext  # noqa: E402

T_IMPORTS = time.monotonic()
CONF = Path(__file__).resolve().parents[1] / "conf"


def fedavg(states: list[dict[str, np.ndarray]], weights: list[int]) -> dict[str, np.ndarray]:
    total = float(sum(weights))
    return {
        k: sum(s[k] * (w / total) for s, w in zip(states, weights, strict=True)).astype(states[0][k].dtype)
        for k in states[0]
    }


def compose(overrides: list[str]) -> dict:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    return to_container(cfg)


def load(model: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    model.load_state_dict({n: torch.from_numpy(v) for n, v in weights.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-rounds", type=int, default=5)
    ap.add_argument("--num-clients", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--override", action="append", default=[], help="more Hydra overrides, e.g. strategy.fraction_train=1.0"
    )
    a = ap.parse_args()
    cfg = compose(
        [f"num_clients={a.num_clients}", f"train.local_epochs={a.local_epochs}", f"seed={a.seed}", *a.override]
    )
    fraction_train = float(cfg["strategy"].get("fraction_train", 1.0))
    fraction_eval = float(cfg["strategy"].get("fraction_evaluate", 1.0))
    torch.set_num_threads(1)
    device = torch.device("cpu")
    times = {"imports_s": T_IMPORTS - T_START}
    t = time.monotonic()
    test = server_test_split(cfg)
    for pid in range(a.num_clients):
        client_split(cfg, pid)
    times["data_s"] = time.monotonic() - t

    model = build_model(cfg)
    task = cached_task(cfg)
    glob = {k: v.copy() for k, v in state_to_numpy(model).items()}
    k_train = max(int(a.num_clients * fraction_train), 2)
    k_eval = max(int(a.num_clients * fraction_eval), 2)
    t = time.monotonic()
    task.evaluate(model, test, EvalContext(device=device))
    times["centralized_s"] = time.monotonic() - t
    times.update(train_s=0.0, aggregate_s=0.0, fed_eval_s=0.0)
    rounds = []
    for rnd in range(1, a.num_rounds + 1):
        t_round = time.monotonic()
        random.seed(derive_seed(a.seed, rnd, "sample-train"))
        sampled = sorted(random.sample(range(a.num_clients), k_train))
        states, sizes = [], []
        t = time.monotonic()
        for pid in sampled:
            load(model, glob)
            data, _ = client_split(cfg, pid)
            seed = derive_seed(a.seed, rnd, pid, "train")
            torch.manual_seed(seed)
            ctx = TrainContext(
                device=device, seed=seed, round=rnd, partition_id=pid, generator=torch.Generator().manual_seed(seed)
            )
            task.train(model, task.configure_optimizer(model), data, ctx)
            states.append({k: v.copy() for k, v in state_to_numpy(model).items()})  # numpy views: copy
            sizes.append(len(data))
        times["train_s"] += time.monotonic() - t
        t = time.monotonic()
        glob = fedavg(states, sizes)
        times["aggregate_s"] += time.monotonic() - t
        t = time.monotonic()
        random.seed(derive_seed(a.seed, rnd, "sample-evaluate"))
        for pid in sorted(random.sample(range(a.num_clients), k_eval)):
            _, val = client_split(cfg, pid)
            load(model, glob)
            task.evaluate(model, val, EvalContext(device=device))
        times["fed_eval_s"] += time.monotonic() - t
        t = time.monotonic()
        load(model, glob)
        metrics = task.evaluate(model, test, EvalContext(device=device))
        times["centralized_s"] += time.monotonic() - t
        rounds.append({"round": rnd, "s": round(time.monotonic() - t_round, 4), "accuracy": metrics.get("accuracy")})
    times["total_in_process_s"] = time.monotonic() - T_START
    out = {k: round(v, 4) for k, v in times.items()}
    out["rounds"] = rounds
    print("FLOOR " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
