"""Benchmarks (benchmarks/, BENCHMARKS.md): every case runs in quick mode and writes sane JSON.

Quick mode proves the scripts work; its figures mean nothing (tiny settings, one
repetition, cases run concurrently). The figures in BENCHMARKS.md come from full runs.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# case -> figures its quick-mode JSON must hold (finite numbers)
QUICK_FIGURES = {
    "overhead": ["runner_over_bare_wall", "runner_wall_s", "bare_wall_s"],
    "floor": ["runner_over_floor_wall", "runner_over_floor_cpu", "runner_wall_s", "floor_wall_s"],
    "resume": [
        "resumed_over_fresh_time_to_first_round",
        "resumed_over_fresh_wall_to_first_round_line",
        "fresh_time_to_first_round_s",
        "resumed_time_to_first_round_s",
    ],
    "scale": ["all_4_wall_s", "all_4_peak_rss_gb", "discovery_4_s"],
    "client_state": [
        "bytes_per_round_over_weights",
        "bytes_per_round_over_weights_before",
        "dir_over_bound",
        "dir_over_bound_before",
        "driver_rss_20_minus_4_mb",
        "resume_time_to_first_round_20_over_4",
        "per_round_20_over_4",
    ],
    "sweep": ["multirun_over_separate_wall", "multirun_wall_s", "separate_wall_s"],
    "lean": [
        "default_runner_over_bare_wall",
        "default_runner_cold_over_bare_wall",
        "default_runner_peak_rss_gb",
        "default_runner_peak_pss_gb",
        "rounds_whole_run_over_floor",
        "rounds_per_round_over_floor",
        "many_per_round_over_floor",
        "client_after_wall_s",
        "client_after_no_cache_cpu_s",
        "client_importtime_runner_client_app_after_s",
    ],
    "algorithms": ["fedavg_centralized_accuracy", "fedrep_evaluate_personal_accuracy", "claim_fedrep_vs_fedavg"],
    "rounds": [
        "per_round_over_floor",
        "whole_run_over_floor",
        "runner_per_round_s",
        "floor_per_round_s",
        "runner_wall_s",
        "floor_wall_s",
        "runner_peak_rss_gb",
        "runner_peak_pss_gb",
    ],
}


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Future]:
    """All cases in quick mode, as ``python -m benchmarks --quick`` runs them (all at once)."""
    out = tmp_path_factory.mktemp("bench")
    pool = ThreadPoolExecutor(max_workers=1)
    fut = pool.submit(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--results-dir",
            str(out),
            "--report",
            str(out / "BENCHMARKS.md"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    yield {"proc": fut, "dir": out}
    pool.shutdown()


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(QUICK_FIGURES))
def test_quick_case_writes_expected_figures(quick_results: dict, case: str):
    proc = quick_results["proc"].result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((quick_results["dir"] / f"{case}-quick.json").read_text())
    assert data["case"] == case and data["quick"] is True
    for key in ("date", "machine", "config", "figures"):
        assert key in data
    for key in ("nproc", "ram_gb", "cpu_model"):
        assert data["machine"][key]
    for name in QUICK_FIGURES[case]:
        fig = data["figures"][name]
        assert _finite(fig["value"]), (name, fig)
        assert {"target", "unit", "met"} <= set(fig)
    if case == "rounds":
        assert data["same_accuracies_as_floor"] is True  # many rounds: still the floor's numbers
        runner = data["details"]["runner"][0]["per_round_s"]
        assert len(runner) == data["config"]["num_rounds"] and all(_finite(x) and x > 0 for x in runner)
    if case == "client_state":  # incremental blobs write less per round than every client's state
        figs = data["figures"]
        assert figs["bytes_per_round_over_weights"]["value"] < figs["bytes_per_round_over_weights_before"]["value"]
    if case == "algorithms":  # every job completed; the claim is decided by its rule, not asserted
        assert all(r["status"] == "completed" for by_seed in data["runs"].values() for r in by_seed.values())
        assert isinstance(data["claims"][0]["holds"], bool)
    if case == "lean":  # same weights and metric rows with a warm and a cold data cache; the floor's accuracies
        assert data["bits"] and all(v is True for v in data["bits"].values()), data["bits"]
        figs = data["figures"]  # a client process with its rows cached skips the loader libraries
        assert data["runs"]["client"]["after"]["heavy_imports"]["median"] == 0
        assert data["runs"]["client"]["after_no_cache"]["heavy_imports"]["median"] > 0
        assert figs["client_after_wall_s"]["value"] > 0
    if case == "floor":
        assert data["same_accuracies_as_runner"] is True  # the floor does the runner's work
        assert all(_finite(v["runner_s"]) for k, v in data["breakdown"].items() if not k.startswith("checkpointing"))


@pytest.mark.slow
def test_quick_run_writes_report_and_checkpoint_io(quick_results: dict):
    proc = quick_results["proc"].result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (quick_results["dir"] / "BENCHMARKS.md").read_text()
    for heading in (
        "Runner overhead",
        "The floor",
        "Many rounds",
        "Checkpoint I/O",
        "Resume",
        "Scale",
        "Sweep",
        "Algorithms",
    ):
        assert heading in report
    assert "| figure | target | measured |" in report
    ckpt = json.loads((quick_results["dir"] / "checkpoint_io-quick.json").read_text())
    assert ckpt["results"], ckpt
    for row in ckpt["results"]:
        for key in ("save_vs_raw", "size_vs_raw", "submit_block_ms"):
            assert _finite(row[key]), (key, row)


@pytest.mark.slow
def test_deployment_floor_quick(tmp_path: Path):
    """Issue 20, item 4: the minimal Flower ClientApp runs on the same loopback federation as
    ``engine=deployment`` in one invocation (bench_engines' quick mode, outside the all-cases
    quick run: a federation is too heavy next to the other cases), and both end the same."""
    out = tmp_path / "engines-quick.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_engines.py"),
            "--quick",
            "--arms",
            "deployment,deployment_floor",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    for name in ("deployment_over_floor_per_round", "deployment_first_round_s", "deployment_floor_per_round_s"):
        assert _finite(data["figures"][name]["value"]), name
    assert data["figures"]["deployment_over_floor_per_round"]["target"] == "<= 1.5"
    assert data["breakdown"]["deployment"] and data["breakdown"]["deployment_floor"]
    assert data["same_weights_across_engines"] is True
