"""FedRep, FedBN, APFL, local and fine-tuning run as a user runs them (``python -m runner``):
one multirun of their case files, then what each must show in its metrics, global weights
and client state. Exact resume of the same cases: tests/test_zoo_exact.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import FAST, ROOT, checkpoint_state, read_metrics, run_cli, run_dirs

CASES = ["zoo_fedrep", "zoo_fedbn", "zoo_apfl", "zoo_local", "zoo_finetune"]
ROUNDS = 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cwd = tmp_path_factory.mktemp("personal")
    proc = run_cli(
        [
            "-m",
            "--config-dir",
            str(ROOT / "tests" / "conf"),
            f"+case={','.join(CASES)}",
            *FAST,
            f"num_rounds={ROUNDS}",
            "strategy.fraction_evaluate=1.0",  # every client reports its personal model each round
        ],
        cwd=cwd,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = {}
    for run in run_dirs(cwd / "multirun"):
        overrides = (run / ".hydra" / "overrides.yaml").read_text() + "\n"
        out[next(c for c in CASES if f"+case={c}\n" in overrides)] = run
    assert sorted(out) == sorted(CASES)
    return out


def _weights(run: Path, rnd: int) -> dict[str, np.ndarray]:
    return dict(np.load(run / "checkpoints" / f"round-{rnd:04d}.npz"))


def _client_state(run: Path) -> dict[str, np.ndarray]:
    """The clients' state arrays of the last checkpoint (read back from their blobs)."""
    return {k: v for k, v in checkpoint_state(run, ROUNDS)[1].items() if k.startswith("clients/")}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_every_evaluated_client_reports_its_personal_model(runs: dict[str, Path], case: str):
    run = runs[case]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["warnings"] == []
    rows = [r for r in read_metrics(run) if r["phase"] == "evaluate"]
    assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
    assert all(0.0 <= r["personal_accuracy"] <= 1.0 and r["num_replies"] == 4 for r in rows)
    assert "evaluate_personal_accuracy" in summary["final"]


@pytest.mark.slow
def test_kept_layers_never_change_on_the_server_and_live_in_client_state(runs: dict[str, Path]):
    for case, kept, state_key in (("zoo_fedrep", "head.", "fedrep_head"), ("zoo_fedbn", "features.1.", "fedbn_norm")):
        run = runs[case]
        first, last = _weights(run, 1), _weights(run, ROUNDS)
        local = [k for k in last if k.startswith(kept)]
        assert local and all(np.array_equal(first[k], last[k]) for k in local), case  # never averaged, bit for bit
        assert any(not np.array_equal(first[k], last[k]) for k in last if k not in local), case  # the rest learns
        state = _client_state(run)
        assert any(f"/{state_key}/{local[0]}" in k for k in state), (case, sorted(state)[:4])
    # the personal head beats the untrained global head on the clients' own data
    final = json.loads((runs["zoo_fedrep"] / "summary.json").read_text())["final"]
    assert final["evaluate_personal_accuracy"] > final["evaluate_accuracy"]


@pytest.mark.slow
def test_local_keeps_the_initial_global_model_and_each_client_its_own(runs: dict[str, Path]):
    run = runs["zoo_local"]
    first, last = _weights(run, 1), _weights(run, ROUNDS)
    assert all(np.array_equal(first[k], last[k]) for k in first)
    central = [r["accuracy"] for r in read_metrics(run) if r["phase"] == "centralized"]
    assert len(central) == ROUNDS + 1 and len(set(central)) == 1  # round 0 (initial) .. last: the same model
    assert any("/local_model/head.weight" in k for k in _client_state(run))


@pytest.mark.slow
def test_apfl_keeps_v_and_alpha_and_finetune_keeps_nothing(runs: dict[str, Path]):
    from runner.stateful import unpack

    components, arrays = checkpoint_state(runs["zoo_apfl"], ROUNDS)
    alphas = [s["apfl_alpha"] for s in unpack(components["clients"], arrays).values()]
    assert alphas and all(0.0 <= a <= 1.0 for a in alphas) and any(a != 0.5 for a in alphas)
    assert any("/apfl_v/head.weight" in k for k in _client_state(runs["zoo_apfl"]))
    assert _client_state(runs["zoo_finetune"]) == {}
    rows = [r for r in read_metrics(runs["zoo_finetune"]) if r["phase"] == "evaluate"]
    assert all(r["personal_accuracy"] != r["accuracy"] for r in rows)  # the fine-tuned copy is another model


def test_fedbn_refuses_a_model_without_normalization_layers(tmp_path: Path):
    proc = run_cli(["strategy=fedbn", "model=mlp", *FAST, "num_rounds=1"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: model: strategy=fedbn keeps the normalization layers local, but this model has none (no BatchNorm); "
        "use model=cnn_bn or a model with BatchNorm layers"
    ]
    assert "Traceback" not in proc.stderr
