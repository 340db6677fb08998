"""Issue 19 end to end: one sweep (2 strategies x 3 seeds x 3 rounds, Dirichlet split) serves
every assertion on the aggregate, the band plot, client spread, bytes and the data split; one
stopped + resumed run checks that all of it holds across resume."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.helpers import FAST, read_metrics, run_cli, run_dirs

SWEEP = [
    *FAST,
    "num_rounds=3",
    "partitioner=dirichlet",
    "print_config=false",
    "+report.targets.centralized_accuracy=[0.5,0.99]",
]
STRATEGIES = ("fedavg", "fedprox")
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("results")
    proc = run_cli(
        [
            "-m",
            f"strategy={','.join(STRATEGIES)}",
            f"seed={','.join(map(str, SEEDS))}",
            *SWEEP,
            "logger=csv",
            "logger.csv.log_clients=true",
            "hydra.sweep.dir=multi",
        ],
        cwd=cwd,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "multi"


def jobs(sweep: Path) -> dict[tuple[str, int], Path]:
    out = {}
    for run in run_dirs(sweep):
        values = dict(o.split("=", 1) for o in _yaml(run / ".hydra" / "overrides.yaml"))
        out[(values["strategy"], int(values["seed"]))] = run
    assert len(out) == 6
    return out


def _yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def _num(text: str) -> float | None:
    return None if text == "" else float(text)


# --------------------------------------------------------------------------- aggregate


def test_aggregate_means_and_stds_equal_those_of_the_job_summaries(sweep: Path) -> None:
    rows = _csv(sweep / "aggregate.csv")
    assert [r["strategy"] for r in rows] == list(STRATEGIES)
    assert "seed" not in rows[0] and "logger" not in rows[0]
    by_job = jobs(sweep)
    for row in rows:
        assert (row["n"], row["n_failed"], row["n_running"]) == ("3", "0", "0")
        summaries = [_summary(by_job[(row["strategy"], s)]) for s in SEEDS]
        values = {
            "final_centralized_accuracy": [s["final"]["centralized_accuracy"] for s in summaries],
            "final_evaluate_loss": [s["final"]["evaluate_loss"] for s in summaries],
            "final_train_loss": [s["final"]["train_loss"] for s in summaries],
            "best_centralized_accuracy": [s["best"]["value"] for s in summaries],
            "wall_time_s": [s["wall_time_s"] for s in summaries],
            "rounds_s": [s["rounds_s"] for s in summaries],
            "bytes_up": [s["totals"]["bytes_up"] for s in summaries],
            "bytes": [s["totals"]["bytes"] for s in summaries],
            "rounds_to_centralized_accuracy_0.5": [
                s["rounds_to_target"]["rounds_to_centralized_accuracy_0.5"] for s in summaries
            ],
        }
        for name, xs in values.items():
            assert all(x is not None for x in xs), name
            assert _num(row[f"{name}_mean"]) == statistics.fmean(xs), name
            assert _num(row[f"{name}_std"]) == statistics.stdev(xs), name  # sample std, ddof=1
        # a target no run reaches: no mean, none of 3 reached
        assert row["rounds_to_centralized_accuracy_0.99_mean"] == ""
        assert row["rounds_to_centralized_accuracy_0.99_reached"] == "0"
        assert row["rounds_to_centralized_accuracy_0.5_reached"] == "3"

    md = (sweep / "aggregate.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 3  # header + 2 configurations
    assert table[1].startswith("| fedavg | 3 |") and table[2].startswith("| fedprox | 3 |")
    assert " ± " in table[1] and "**" in md and "not reached" in table[1]
    # the strategy's own settings show, also those left at their defaults
    assert "- strategy=fedprox: `FedProx(" in md and "proximal_mu=" in md
    tex = (sweep / "aggregate.tex").read_text()
    body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0].strip().splitlines()
    assert [line.split(" & ")[:2] for line in body] == [["fedavg", "3"], ["fedprox", "3"]]
    assert "\\pm" in tex and "\\mathbf{" in tex and "\\begin{tabular}" in tex and "\\toprule" in tex
    # summary.csv: one column per swept key
    summary = _csv(sweep / "summary.csv")
    assert [(r["strategy"], r["seed"]) for r in summary] == [(s, str(seed)) for s in STRATEGIES for seed in SEEDS]


def test_band_plot_exists(sweep: Path) -> None:
    with Image.open(sweep / "aggregate.png") as im:
        assert im.size[0] >= 800 and im.size[1] >= 300
        assert len(im.convert("RGB").getcolors(1_000_000)) > 50  # lines and translucent bands


def test_report_cli_rebuilds_the_aggregate(sweep: Path) -> None:
    before = (sweep / "aggregate.csv").read_text()
    (sweep / "aggregate.csv").unlink()
    proc = run_cli([str(sweep), "--no-job-plots"], cwd=sweep, module="runner.report")
    assert proc.returncode == 0, proc.stderr
    assert "aggregate.csv" in proc.stdout
    assert (sweep / "aggregate.csv").read_text() == before


# --------------------------------------------------------------------------- client spread


def test_evaluate_rows_carry_the_spread_of_what_trackers_log(sweep: Path) -> None:
    for run in jobs(sweep).values():
        logged: dict[tuple[int, str, str], dict[int, float]] = {}
        for row in _csv(run / "csv" / "metrics.csv"):
            parts = row["metric"].split("/")
            if parts[0] == "clients":
                _, phase, metric, pid = parts
                logged.setdefault((int(row["round"]), phase, metric), {})[int(pid)] = float(row["value"])
        rows = [r for r in read_metrics(run) if r["phase"] in ("train", "evaluate")]
        assert len(rows) == 6
        for r in rows:
            for metric in ("loss", "accuracy"):
                xs = np.asarray(list(logged[(r["round"], r["phase"], metric)].values()))
                assert len(xs) == r["num_replies"]
                expected = {
                    "min": xs.min(),
                    "p10": np.percentile(xs, 10),
                    "p50": np.percentile(xs, 50),
                    "p90": np.percentile(xs, 90),
                    "max": xs.max(),
                }
                for stat, value in expected.items():
                    assert r[f"{metric}_client_{stat}"] == float(value), (r["round"], r["phase"], metric, stat)
                assert math.isclose(r[f"{metric}_client_std"], statistics.pstdev(xs.tolist()), abs_tol=1e-12)
        final = _summary(run)["final"]
        last = [r for r in rows if r["phase"] == "evaluate"][-1]
        assert final["evaluate_accuracy_client_p10"] == last["accuracy_client_p10"]
        for name in ("clients_accuracy.png", "clients_loss.png", "partitions.png", "accuracy.png"):
            assert (run / "plots" / name).is_file(), name
        assert not (run / "plots" / "accuracy_client_p10.png").exists()  # spread keys are not plotted alone


# --------------------------------------------------------------------------- bytes


def _model_bytes(run: Path) -> int:
    from runner.checkpoint.store import load_checkpoint

    loaded = load_checkpoint(sorted((run / "checkpoints").glob("round-*.json"))[-1])
    return sum(int(np.asarray(v).nbytes) for v in loaded.weights.values())


def test_fedavg_bytes_are_model_bytes_times_clients_plus_the_stated_overhead(sweep: Path) -> None:
    for (strategy, _), run in jobs(sweep).items():
        if strategy != "fedavg":
            continue
        model = _model_bytes(run)
        rows = read_metrics(run)
        total = 0
        for r in rows:
            if r["phase"] == "train":
                clients = r["num_replies"] + r["num_failures"]
                # reply: the model + a MetricRecord of train_loss, train_accuracy, num-examples,
                # unit-weight (8 bytes each)
                assert r["bytes_up"] == r["num_replies"] * (model + 4 * 8)
                # sent: the model + FedAvg's server-round int (the runner's run-config string is
                # not counted)
                assert r["bytes_down"] == clients * (model + 8)
            elif r["phase"] == "evaluate":
                clients = r["num_replies"] + r["num_failures"]
                assert r["bytes_up"] == r["num_replies"] * 4 * 8  # eval_loss, eval_accuracy, counts
                assert r["bytes_down"] == clients * (model + 8)
            else:
                assert "bytes_up" not in r
            total += r.get("bytes_down", 0) + r.get("bytes_up", 0)
        summary = _summary(run)
        assert summary["totals"]["bytes"] == total
        reached = summary["rounds_to_target"]["rounds_to_centralized_accuracy_0.5"]
        by_then = sum(r.get("bytes_down", 0) + r.get("bytes_up", 0) for r in rows if r["round"] <= reached)
        assert summary["rounds_to_target"]["bytes_to_centralized_accuracy_0.5"] == by_then
        assert summary["rounds_to_target"]["rounds_to_centralized_accuracy_0.99"] is None
        assert summary["rounds_to_target"]["bytes_to_centralized_accuracy_0.99"] is None


# --------------------------------------------------------------------------- data split


def test_partitions_match_flwr_datasets_run_directly(sweep: Path) -> None:
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    for (_, seed), run in jobs(sweep).items():
        table = json.loads((run / "partitions.json").read_text())
        clients = table["clients"]
        assert table["num_clients"] == 4 == len(clients)
        assert table["unassigned"] == 0
        assert sum(sum(c["label_counts"].values()) for c in clients) == table["pool_size"]
        assert sum(c["size"] for c in clients) == table["pool_size"]
        assert all(c["train_size"] + c["val_size"] == c["size"] for c in clients)
        # the runner's split, done by hand: stratified test split, then flwr-datasets' partitioner
        pool, test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
        assert table["pool_size"] == len(pool) and table["test_size"] == len(test)
        partitioner = DirichletPartitioner(
            num_partitions=4,
            partition_by="label",
            alpha=0.5,
            min_partition_size=5,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
        partitioner.dataset = Dataset.from_dict({"label": y[np.sort(pool)].tolist()})
        for pid, c in enumerate(clients):
            direct = Counter(partitioner.load_partition(pid)["label"])
            assert {int(k): v for k, v in c["label_counts"].items() if v} == dict(direct), (seed, pid)
        split = _summary(run)["split"]
        sizes = [c["size"] for c in clients]
        assert split["size"] == {"min": min(sizes), "median": statistics.median(sizes), "max": max(sizes)}
        held = [sum(1 for v in c["label_counts"].values() if v) for c in clients]
        assert split["labels_per_client_mean"] == statistics.fmean(held)


# --------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fedavg seed 0 stopped after round 2, then resumed (resume=latest) to round 3."""
    cwd = tmp_path_factory.mktemp("resumed")
    common = ["strategy=fedavg", "seed=0", *SWEEP]
    first = run_cli([*common, "stop_after_round=2", "hydra.run.dir=outputs/first"], cwd=cwd, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _summary(cwd / "outputs" / "first")["status"] == "stopped"
    second = run_cli([*common, "resume=latest", "hydra.run.dir=outputs/second"], cwd=cwd, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    return cwd / "outputs" / "second"


def _without_elapsed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows]


def test_a_resumed_run_reports_what_an_uninterrupted_one_does(sweep: Path, resumed: Path) -> None:
    whole = jobs(sweep)[("fedavg", 0)]
    assert _without_elapsed(read_metrics(resumed)) == _without_elapsed(read_metrics(whole))
    assert (resumed / "partitions.json").read_text() == (whole / "partitions.json").read_text()
    a, b = _summary(resumed), _summary(whole)
    assert a["resumed_from"] and not b["resumed_from"]
    for key in ("final", "totals", "rounds_to_target", "split", "best", "rounds_done", "status"):
        assert a[key] == b[key], key
    # elapsed_s: one clock over both sessions, never going backwards
    elapsed = [r["elapsed_s"] for r in read_metrics(resumed)]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert a["rounds_s"] == elapsed[-1]
    assert a["startup_s"] is not None and a["startup_s"] >= 0
