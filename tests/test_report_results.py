"""Issue 19 without a simulation: byte counting over any records, client spread, rounds to
target, the seed aggregate over fake sweeps (failures, bold best, LaTeX), report.targets
validation and the data split of a composed config against flwr-datasets run directly."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from runner.config import ConfigError, to_container, validate
from runner.report.aggregate import aggregate, config_overrides
from runner.report.comm import client_spread, message_bytes
from runner.report.results import rounds_to_targets, totals
from runner.report.summary import collect_sweep, summarize_sweep
from tests.helpers import compose_cfg
from tests.report_fixtures import make_rows, summary_from_rows, write_run


def test_bytes_count_every_record_of_a_message() -> None:
    w = np.zeros((3, 5), dtype=np.float32)
    b = np.zeros(7, dtype=np.int64)
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": Array(w), "b": Array(b)}),
            "scaffold_c": ArrayRecord({"w": Array(np.ones((3, 5), dtype=np.float64))}),  # an algorithm's record
            "config": ConfigRecord({"server-round": 3, "mu": 0.1, "flag": True, "name": "héllo", "raw": b"abcd"}),
            "metrics": MetricRecord({"loss": 0.5, "n": 10, "hist": [1.0, 2.0, 3.0]}),
        }
    )
    # message_bytes reads what a Message has (outside a run Flower cannot build one)
    msg = SimpleNamespace(content=content, has_error=lambda: False)
    expected = (15 * 4 + 7 * 8) + 15 * 8 + (8 + 8 + 1 + len("héllo".encode()) + 4) + (8 + 8 + 3 * 8)
    assert message_bytes(msg) == expected
    assert message_bytes(msg, skip=("name",)) == expected - 6  # a skipped config value


def test_client_spread_over_whatever_clients_report() -> None:
    per_client = {
        0: {"loss": 1.0, "personal_accuracy": 0.5},
        1: {"loss": 3.0, "personal_accuracy": 0.7},
        2: {"loss": 2.0},
    }
    spread = client_spread(per_client)
    assert spread["loss_client_min"] == 1.0 and spread["loss_client_max"] == 3.0
    assert spread["loss_client_p50"] == 2.0 and spread["loss_client_p10"] == pytest.approx(1.2)
    assert spread["loss_client_std"] == pytest.approx(statistics.pstdev([1.0, 3.0, 2.0]))
    assert spread["personal_accuracy_client_p90"] == pytest.approx(0.68)  # over the 2 that reported it
    assert client_spread({}) == {}


def test_rounds_and_bytes_to_target() -> None:
    rows = [
        {"round": 0, "phase": "centralized", "accuracy": 0.1, "loss": 2.0},
        {"round": 1, "phase": "train", "loss": 1.0, "bytes_down": 100, "bytes_up": 90},
        {"round": 1, "phase": "evaluate", "loss": 1.0, "bytes_down": 100, "bytes_up": 10},
        {"round": 1, "phase": "centralized", "accuracy": 0.7, "loss": 0.9},
        {"round": 2, "phase": "train", "loss": 0.5, "bytes_down": 100, "bytes_up": 90},
        {"round": 2, "phase": "centralized", "accuracy": 0.85, "loss": 0.4},
    ]
    got = rounds_to_targets(rows, {"centralized_accuracy": [0.7, 0.8, 0.9], "centralized_loss": 0.5})
    assert got == {
        "rounds_to_centralized_accuracy_0.7": 1,
        "bytes_to_centralized_accuracy_0.7": 300,
        "rounds_to_centralized_accuracy_0.8": 2,
        "bytes_to_centralized_accuracy_0.8": 490,
        "rounds_to_centralized_accuracy_0.9": None,
        "bytes_to_centralized_accuracy_0.9": None,
        "rounds_to_centralized_loss_0.5": 2,  # a loss is reached from above
        "bytes_to_centralized_loss_0.5": 490,
    }
    assert totals(rows) == {"bytes_down": 300, "bytes_up": 190, "bytes": 490}


def _sweep(root: Path) -> Path:
    """2 strategies x 3 seeds; fedprox seed 2 failed, fedavg seed 1 has no summary.json."""
    sweep = root / "multirun" / "x"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for strategy in ("fedavg", "fedprox"):
        for seed in range(3):
            rows = make_rows(3, seed=job)
            overrides = [f"strategy={strategy}", f"seed={seed}", "num_rounds=3", "progress=log", "logger.csv.a=1"]
            summary = summary_from_rows(rows, overrides=overrides, wall_time_s=1.0 + job)
            summary["failures"] = {"failed_rounds": job % 2, "client_failures": job, "first_error": None}
            if (strategy, seed) == ("fedprox", 2):
                summary["status"] = "failed"
            write_run(sweep / str(job), rows, overrides=overrides, summary=None if job == 1 else summary)
            job += 1
    return sweep


def test_aggregate_counts_failures_and_averages_the_rest(tmp_path: Path) -> None:
    sweep = _sweep(tmp_path)
    summarize_sweep(sweep)
    records = collect_sweep(sweep)
    assert config_overrides(records[0].overrides) == ("strategy=fedavg", "num_rounds=3")
    with open(sweep / "aggregate.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["strategy"], r["n"], r["n_failed"]) for r in rows] == [("fedavg", "2", "1"), ("fedprox", "2", "1")]
    fedavg = [r for r in records if r.job in (0, 2)]
    accs = [r.finals["centralized_accuracy"] for r in fedavg]
    assert float(rows[0]["final_centralized_accuracy_mean"]) == statistics.fmean(accs)
    assert float(rows[0]["final_centralized_accuracy_std"]) == statistics.stdev(accs)
    assert float(rows[0]["wall_time_s_mean"]) == statistics.fmean([1.0, 3.0])
    # failure totals over every job whose summary gives them (the failed one included)
    assert rows[0]["failed_rounds"] == str(0 + 0) and rows[0]["client_failures"] == str(0 + 2)
    assert rows[1]["failed_rounds"] == str(1 + 0 + 1) and rows[1]["client_failures"] == str(3 + 4 + 5)
    md = (sweep / "aggregate.md").read_text()
    assert "Left out: 2 failed or interrupted job(s)" in md and "| fedavg | 2 (1 failed) |" in md
    tex = (sweep / "aggregate.tex").read_text()
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].splitlines()
    # the best mean of each column is bold in exactly one row (the two rows never tie here)
    cols = list(zip(*(line.rstrip(" \\").split(" & ") for line in body), strict=True))
    shown = [col for col in cols[2:] if "--" not in col]
    assert len(shown) >= 7  # six final metrics and the best one
    for col in shown:
        assert sum("\\mathbf" in c for c in col) == 1, col


def test_aggregate_of_one_job_has_no_std(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    write_run(sweep / "0", make_rows(2), overrides=["seed=0"])
    (row,) = aggregate(collect_sweep(sweep))
    assert row.n == 1 and row.stats["final_centralized_accuracy"][1] is None
    assert math.isfinite(row.stats["final_centralized_accuracy"][0] or math.nan)


@pytest.mark.parametrize(
    ("targets", "key"),
    [
        ({"centralized_accuracy": "high"}, "report.targets.centralized_accuracy"),
        ({"centralized_accuracy": []}, "report.targets.centralized_accuracy"),
        ({"accuracy": [0.5]}, "report.targets.accuracy"),
        ([0.5], "report.targets"),
    ],
)
def test_bad_targets_name_the_key(targets: object, key: str) -> None:
    cfg = to_container(compose_cfg())
    cfg["report"]["targets"] = targets
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.key == key


def test_targets_must_name_a_metric_of_the_run() -> None:
    from runner.run import _check_targets

    cfg = to_container(compose_cfg(["+report.targets.centralized_accuracy_client_p10=0.5"]))
    validate(cfg)
    _check_targets(cfg, ["centralized_accuracy", "evaluate_loss"])
    cfg["report"]["targets"] = {"centralized_f1": [0.5]}
    with pytest.raises(ConfigError, match="report.targets.centralized_f1: this run produces no metric"):
        _check_targets(cfg, ["centralized_accuracy"])


def test_partition_table_is_flwr_datasets_partitioner_run_directly() -> None:
    from datasets import Dataset
    from flwr_datasets.partitioner import ShardPartitioner

    from runner.data import load_data
    from runner.report.partitions import partition_table, split_stats

    cfg = to_container(compose_cfg(["partitioner=shard", "num_clients=5", "seed=4"]))
    table = partition_table(cfg)
    json.dumps(table)  # JSON as written
    y = load_data(cfg["dataset"]).y
    from sklearn.model_selection import train_test_split

    pool, _ = train_test_split(np.arange(len(y)), test_size=0.2, random_state=4, stratify=y)
    args = {k: v for k, v in cfg["partitioner"].items() if not k.startswith("_")}
    partitioner = ShardPartitioner(**args)
    partitioner.dataset = Dataset.from_dict({"label": y[np.sort(pool)].tolist()})
    for pid, c in enumerate(table["clients"]):
        assert {int(k): v for k, v in c["label_counts"].items() if v} == dict(
            Counter(partitioner.load_partition(pid)["label"])
        )
    assert table["pool_size"] == len(pool)
    # shards of a fixed size leave a remainder out: partitions.json says how many
    assert sum(c["size"] for c in table["clients"]) == table["pool_size"] - table["unassigned"]
    assert table["unassigned"] == len(pool) - sum(len(partitioner.load_partition(i)) for i in range(5)) > 0
    stats = split_stats(table)
    assert stats["labels_per_client_mean"] < 10  # shards: each client holds a few labels
