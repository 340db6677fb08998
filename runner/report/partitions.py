"""The data split of a run: ``partitions.json`` and its summary statistics.

Per client (partition id): the size of its partition and of its train and validation
splits (as :func:`runner.data.client_split` makes them) and its label counts; plus the
pool the partitioner split, the server's test split, the labels and the partitioner.
Everything comes from the resolved config, so a resumed run writes the same file.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

PARTITIONS_FILE = "partitions.json"


def partition_table(run_cfg: dict[str, Any]) -> dict[str, Any]:
    from runner.data import client_split, partitions

    p = partitions(run_cfg)
    y = np.asarray(p.data.y)
    labelled = y.dtype.kind in "iub"  # classification labels; none for regression targets
    # the pool the partitioner split: every sample outside the server's test split
    pool = np.setdiff1d(np.arange(len(y)), p.test_idx)
    labels = sorted(int(v) for v in np.unique(y[pool])) if labelled else []
    partitioned = sum(len(idx) for idx in p.parts)
    clients = []
    for pid, idx in enumerate(p.parts):
        train, val = client_split(run_cfg, pid)
        entry: dict[str, Any] = {
            "partition_id": pid,
            "size": len(idx),
            "train_size": len(train),
            "val_size": len(val),
        }
        if labelled:
            values, counts = np.unique(y[idx], return_counts=True)
            have = {int(v): int(c) for v, c in zip(values, counts, strict=True)}
            entry["label_counts"] = {str(label): have.get(label, 0) for label in labels}
        clients.append(entry)
    return {
        "partitioner": str(run_cfg["partitioner"].get("_target_", "")),
        "partitioner_args": {k: v for k, v in run_cfg["partitioner"].items() if not k.startswith("_")},
        "seed": run_cfg["seed"],
        "num_clients": len(p.parts),
        "pool_size": int(len(pool)),
        "test_size": int(len(p.test_idx)),
        "unassigned": int(len(pool) - partitioned),  # samples the partitioner left out (incomplete shards)
        "labels": labels,
        "clients": clients,
    }


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def split_stats(table: dict[str, Any]) -> dict[str, Any]:
    """Sizes min/median/max over clients and the mean number of labels a client holds."""
    clients = table.get("clients") or []
    out: dict[str, Any] = {key: _spread([int(c[key]) for c in clients]) for key in ("size", "train_size", "val_size")}
    if clients and all("label_counts" in c for c in clients):
        held = [sum(1 for n in c["label_counts"].values() if n > 0) for c in clients]
        out["labels_per_client_mean"] = statistics.fmean(held)
        out["num_labels"] = len(table.get("labels") or [])
    return out


def write_partitions(run_cfg: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from runner.report._atomic import atomic_write_text

    table = partition_table(run_cfg)
    atomic_write_text(Path(out_dir) / PARTITIONS_FILE, json.dumps(table, indent=1) + "\n")
    return table
