"""Exact resume for every stateful piece (issue 10): DP and its privacy accounting, SCAFFOLD,
personalised layers, client optimizer state, a user's strategy and a user's algorithm with
both halves (examples/tabular_fl/my_fl/algorithm.py, issue 17).

Each case is a config file under tests/conf/case/ (selected with ``+case=...`` through
``--config-dir``), so one sweep process runs all of them: an uninterrupted 4-round
reference, a run stopped after round 2, and ``resume=latest`` to round 4. The stop is
clean (``stop_after_round``): the resumed run only reads the round-2 checkpoint, as after a
crash; real SIGKILLs are in test_resume.py and in the SIGKILL test at the end of this file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, SAMPLED, read_metrics, run_cli, run_dirs

CASE_DIR = ROOT / "tests" / "conf"
CASES = [
    "dp_server_fixed",
    "dp_client_fixed",
    "dp_server_adaptive",
    "dp_client_adaptive_fedadam",
    "scaffold",
    "personalization",
    "optimizer_state",
    "user_strategy",
    "client_state_all",
    "user_algorithm",
]
BASE = ["num_clients=4", "train.local_epochs=1", "progress=log", "num_rounds=4", *SAMPLED]
ENV = {"PYTHONPATH": os.pathsep.join([str(ROOT / "examples" / "tabular_fl"), str(ROOT)])}


def _sweep(cwd: Path, *args: str) -> None:
    proc = run_cli(
        ["-m", "--config-dir", str(CASE_DIR), f"+case={','.join(CASES)}", *BASE, *args], cwd=cwd, timeout=1200, env=ENV
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _case_of(run: Path) -> str:
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    return next(c for c in CASES if f"+case={c}\n" in overrides + "\n")


def _by_case(root: Path, exclude: set[Path] = frozenset()) -> dict[str, Path]:
    return {_case_of(r): r for r in run_dirs(root) if r not in exclude}


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run)]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a checkpoint file; {} when the checkpoint has none (JSON-only state)."""
    return dict(np.load(path)) if path.exists() else {}


def _state(run: Path, rnd: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(components, state arrays) of a checkpoint as it means them: client states read from
    their blobs (``clients/<pid>/...`` arrays), whatever the layout on disk."""
    from runner.checkpoint.store import load_checkpoint

    loaded = load_checkpoint(run / "checkpoints" / f"round-{rnd:04d}.json")
    return loaded.manifest["state"]["components"], loaded.state_arrays


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{what}: {k}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cwd = tmp_path_factory.mktemp("reference")
    _sweep(cwd)
    runs = _by_case(cwd / "multirun")
    assert sorted(runs) == sorted(CASES)
    return runs


def test_stop_and_resume_latest_is_bit_for_bit_for_every_stateful_piece(tmp_path: Path, reference: dict[str, Path]):
    """Both checkpoint phases in one stopped sweep and one resumed sweep: each phase's jobs
    live in their own sub-dir and resume only from there (resume_roots), since the phase is
    not part of the config fingerprint."""
    phases = ["checkpoint.phase=fit,evaluate"]
    _sweep(
        tmp_path,
        *phases,
        "stop_after_round=2",
        "hydra.sweep.dir=stopped",
        "hydra.sweep.subdir=${checkpoint.phase}/${hydra.job.num}",
    )
    _sweep(tmp_path, *phases, "resume=latest", "resume_roots=[stopped/${checkpoint.phase}]", "hydra.sweep.dir=resumed")
    for phase in ("fit", "evaluate"):
        stopped = _by_case(tmp_path / "stopped" / phase)
        resumed = {
            _case_of(r): r
            for r in run_dirs(tmp_path / "resumed")
            if f"checkpoint.phase={phase}" in (r / ".hydra" / "overrides.yaml").read_text()
        }
        assert sorted(stopped) == sorted(resumed) == sorted(CASES), phase
        for case, run in resumed.items():
            ref = reference[case]
            summary = json.loads((run / "summary.json").read_text())
            assert summary["resumed_from"].startswith(str(stopped[case])), (phase, case)
            assert summary["warnings"] == [], (case, summary["warnings"])  # every changing attribute is covered
            what = f"{case} ({phase})"
            _assert_same_arrays(
                _arrays(run / "checkpoints/round-0004.npz"), _arrays(ref / "checkpoints/round-0004.npz"), what
            )
            assert _rows(run) == _rows(ref), what  # metrics rows, epsilon included
            # strategy, accountant and every client's state, bit for bit
            # (the best tracker is compared through summary.json: the reference saved after fit)
            (comps, arrays), (ref_comps, ref_arrays) = (_state(r, 4) for r in (run, ref))
            assert {k: v for k, v in comps.items() if k != "policy"} == {
                k: v for k, v in ref_comps.items() if k != "policy"
            }, what
            assert summary["best"] == json.loads((ref / "summary.json").read_text())["best"], what
            _assert_same_arrays(arrays, ref_arrays, what)
            assert json.loads((run / "checkpoints/round-0004.json").read_text())["phase"] == phase


def test_every_case_keeps_the_state_it_should(reference: dict[str, Path]):
    """What each stateful piece puts into the checkpoint, and epsilon per round."""

    def state(case: str) -> tuple[dict, dict[str, np.ndarray]]:
        return _state(reference[case], 4)

    comps, _ = state("dp_server_fixed")
    assert comps["strategy.accountant"]["compositions"][0]["count"] == 1
    assert len(comps["strategy.accountant"]["compositions"]) == 4  # one release per round
    eps = [r["epsilon"] for r in read_metrics(reference["dp_server_fixed"]) if r["phase"] == "privacy"]
    assert len(eps) == 4 and all(b > a > 0 for a, b in zip(eps, eps[1:], strict=False))  # epsilon grows every round
    comps, _ = state("dp_server_adaptive")
    assert "clipping_norm" in comps["strategy"]
    _, arrays = state("dp_client_adaptive_fedadam")
    assert any(k.startswith("strategy.strategy/m_t/") for k in arrays) and any(
        k.startswith("strategy.strategy/v_t/") for k in arrays
    )
    comps, arrays = state("scaffold")
    assert any(k.startswith("strategy/c/") for k in arrays)
    assert sorted(comps["clients"]) == ["0", "1", "2", "3"]  # every client, sampled this round or not
    assert any(k.startswith("clients/0/scaffold_ci/") for k in arrays)
    _, arrays = state("personalization")
    assert {k.split("/")[1] for k in arrays if k.endswith("/personal/head.weight")} == {"0", "1", "2", "3"}
    _, arrays = state("optimizer_state")
    assert any("/optimizer/state/" in k and k.endswith("momentum_buffer") for k in arrays)
    _, arrays = state("user_strategy")
    assert any(k.startswith("strategy/velocity/") for k in arrays)
    # a user's algorithm: its server half's state moved with the clients' payload, and each
    # sampled client keeps its own scalars (mu, drift) in the client-state store
    comps, _ = state("user_algorithm")
    assert comps["strategy"]["mu"] != 0.01
    mus = {pid: s["mu"] for pid, s in comps["clients"].items()}
    assert mus and all(set(s) == {"mu", "drift"} for s in comps["clients"].values())
    assert len(set(mus.values())) > 1, mus  # per client, not one shared value


def test_personal_layers_never_leave_the_clients(reference: dict[str, Path]):
    run = reference["personalization"]
    initial = _arrays(run / "checkpoints/round-0001.npz")
    final = _arrays(run / "checkpoints/round-0004.npz")
    assert np.array_equal(initial["head.weight"], final["head.weight"])  # the global head is never trained
    assert not np.array_equal(initial["body.1.weight"], final["body.1.weight"])
    _, personal = _state(run, 4)
    heads = [personal[f"clients/{c}/personal/head.weight"] for c in range(4)]
    assert not np.array_equal(heads[0], heads[1])  # each client its own
    # evaluate_<m> is the global model's (its head never trained), evaluate_personal_<m> the
    # clients' own heads: both reported, and the personal model does better
    rows = [r for r in read_metrics(run) if r["phase"] == "evaluate"]
    assert len(rows) == 4 and all({"accuracy", "personal_accuracy", "loss", "personal_loss"} <= set(r) for r in rows)
    assert rows[-1]["personal_accuracy"] > rows[-1]["accuracy"]


@pytest.mark.parametrize("strategy, warned", [("Forgetful", True), ("Remembering", False)])
def test_state_a_strategy_does_not_cover_gets_one_loud_warning(tmp_path: Path, strategy: str, warned: bool):
    proc = run_cli(
        [
            f"strategy._target_=tests.user_strategies.{strategy}",
            "num_clients=4",
            "num_rounds=2",
            "train.local_epochs=1",
            "progress=log",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    summary = json.loads((run / "summary.json").read_text())
    log = (run / "runner.log").read_text()
    if warned:
        (warning,) = summary["warnings"]
        assert warning.startswith("resume will not be exact:") and "Forgetful.loss_history" in warning
        assert log.count("resume will not be exact") == 1
        assert "resume will not be exact" in proc.stdout + proc.stderr  # on the console too
    else:
        assert summary["warnings"] == [] and "resume will not be exact" not in log


def test_resume_best_and_best_json_agree_on_a_tie(tmp_path: Path):
    """Every round ties (no client ever fails): best.json and resume=best both pick round 1."""
    args = [
        "num_clients=4",
        "train.local_epochs=1",
        "progress=log",
        "checkpoint.monitor=train_num_failures",
        "checkpoint.mode=min",
    ]
    proc = run_cli([*args, "num_rounds=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (first,) = run_dirs(tmp_path / "outputs")
    assert json.loads((first / "checkpoints/best.json").read_text())["round"] == 1
    time.sleep(1.1)
    proc = run_cli([*args, "num_rounds=3", "resume=best"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = next(r for r in run_dirs(tmp_path / "outputs") if r != first)
    assert json.loads((resumed / "summary.json").read_text())["resumed_from"] == str(
        first / "checkpoints/round-0001.json"
    )


def test_sigkill_with_dp_accounting_and_client_state_resumes_exactly(tmp_path: Path, reference: dict[str, Path]):
    """A real crash: SIGKILL of the whole process group after round 2's checkpoint, for the
    DP accountant and for all kinds of client state at once; resume=latest ends bit for bit
    equal to the uninterrupted reference run of the same config."""
    for case in ("dp_server_fixed", "client_state_all"):
        cwd = tmp_path / case
        cwd.mkdir()
        args = ["--config-dir", str(CASE_DIR), f"+case={case}", *BASE]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **ENV}
        victim = subprocess.Popen(
            [sys.executable, "-m", "runner", *args], cwd=cwd, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not list(cwd.glob("outputs/*/*/checkpoints/round-0002.json")):
                assert victim.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            os.killpg(victim.pid, signal.SIGKILL)
            victim.wait()
        time.sleep(1.1)
        proc = run_cli([*args, "resume=latest"], cwd=cwd, env=ENV)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (crashed, resumed) = run_dirs(cwd / "outputs")
        assert json.loads((resumed / "summary.json").read_text())["resumed_from"].startswith(str(crashed))
        ref_run = reference[case]
        _assert_same_arrays(
            _arrays(resumed / "checkpoints/round-0004.npz"), _arrays(ref_run / "checkpoints/round-0004.npz"), case
        )
        _assert_same_arrays(_state(resumed, 4)[1], _state(ref_run, 4)[1], case)
        assert _rows(resumed) == _rows(ref_run)


def test_learning_scaffold_beats_fedavg_under_label_skew_and_noiseless_dp_matches_fedavg(tmp_path: Path):
    """SCAFFOLD vs FedAvg on Dirichlet(0.1) digits, same rounds and plain SGD; DP with no
    noise and a clipping norm that clips nothing learns like the plain run (within 0.02)."""
    (tmp_path / "scaffold").mkdir()
    proc = run_cli(
        [
            "-m",
            "strategy=fedavg,scaffold",
            "train.momentum=0",
            "partitioner=dirichlet",
            "partitioner.alpha=0.1",
            "num_rounds=10",
            "progress=log",
        ],
        cwd=tmp_path / "scaffold",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = {}
    for run in run_dirs(tmp_path / "scaffold" / "multirun"):
        strategy = "scaffold" if "strategy=scaffold" in (run / ".hydra/overrides.yaml").read_text() else "fedavg"
        final[strategy] = [r for r in read_metrics(run) if r["phase"] == "centralized"][-1]["accuracy"]
    assert final["scaffold"] > final["fedavg"], final

    (tmp_path / "dp").mkdir()
    proc = run_cli(
        ["-m", "--config-dir", str(CASE_DIR), "+case=plain,dp_noiseless", "progress=log"], cwd=tmp_path / "dp"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = {}
    for run in run_dirs(tmp_path / "dp" / "multirun"):
        case = "dp" if "dp_noiseless" in (run / ".hydra/overrides.yaml").read_text() else "plain"
        acc[case] = [r for r in read_metrics(run) if r["phase"] == "centralized"][-1]["accuracy"]
    assert abs(acc["dp"] - acc["plain"]) <= 0.02, acc
    print(f"learning checks: {final} {acc}")
