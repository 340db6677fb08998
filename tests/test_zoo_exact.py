"""Every zoo algorithm (issue 17) runs from ``strategy=<name>`` and resumes bit for bit.

One sweep per phase, as tests/test_exact_state.py: each case (tests/conf/case/zoo_<name>.yaml,
which selects ``strategy: <name>`` the way ``strategy=<name>`` does) runs an uninterrupted
4-round reference, a run stopped after round 2, and ``resume=latest`` to round 4; weights,
every client's state, the strategy's state and every metric row must be equal. The
FedNova case has stragglers (``clients.straggler_*``), the FedDyn case dropout
(``clients.dropout``), the Ditto case both: their draws must be the same in every run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from runner.heterogeneity import dropped, straggler_limits
from tests.helpers import ROOT, checkpoint_state, read_metrics, run_cli, run_dirs

CASE_DIR = ROOT / "tests" / "conf"
ALGORITHMS = ["fednova", "feddyn", "moon", "ditto", "fedrep", "fedbn", "apfl", "local", "finetune"]
CASES = [f"zoo_{name}" for name in ALGORITHMS]
PERSONAL = {"zoo_ditto", "zoo_fedrep", "zoo_fedbn", "zoo_apfl", "zoo_local", "zoo_finetune"}
BASE = [
    "num_clients=4",
    "train.local_epochs=1",
    "progress=log",
    "print_config=false",
    "num_rounds=4",
    "strategy.fraction_train=0.5",  # sampling is part of what resume must reproduce
    "strategy.fraction_evaluate=0.5",
]
_LOGGED = re.compile(r"round (\d+): clients \[([\d, ]*)\] (do not reply to (?:train|evaluate)|are stragglers)")


def _sweep(cwd: Path, *args: str) -> None:
    proc = run_cli(
        ["-m", "--config-dir", str(CASE_DIR), f"+case={','.join(CASES)}", *BASE, *args], cwd=cwd, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def _case_of(run: Path) -> str:
    overrides = (run / ".hydra" / "overrides.yaml").read_text()
    return next(c for c in CASES if f"+case={c}\n" in overrides + "\n")


def _by_case(root: Path) -> dict[str, Path]:
    return {_case_of(r): r for r in run_dirs(root)}


def _rows(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run)]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    return dict(np.load(path)) if path.exists() else {}


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{what}: {k}"


def _components(run: Path) -> dict:
    """Every component's state but the best tracker's, client states read from their blobs."""
    state = checkpoint_state(run, 4)[0]
    return {k: v for k, v in state.items() if k != "policy"}


def _state_arrays(run: Path) -> dict[str, np.ndarray]:
    """Round 4's state arrays: strategy, accountant and every client's (from its blob)."""
    return checkpoint_state(run, 4)[1]


def _unexpected(warnings: list[str]) -> list[str]:
    """Warnings other than the client failures that dropout causes by design (issue 21 reports
    each such round; the dropout cases tolerate a round that loses every sampled client)."""
    return [w for w in warnings if "(first error: dropped (clients.dropout))" not in w]


def _logged(run: Path) -> list[tuple[int, str, tuple[int, ...]]]:
    """(round, what, partition ids) of every dropout / straggler line in runner.log."""
    out = []
    for m in _LOGGED.finditer((run / "runner.log").read_text()):
        pids = tuple(int(p) for p in m.group(2).split(",") if p.strip())
        out.append((int(m.group(1)), m.group(3), pids))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    cwd = tmp_path_factory.mktemp("zoo_reference")
    _sweep(cwd)
    runs = _by_case(cwd / "multirun")
    assert sorted(runs) == sorted(CASES)
    return runs


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, Path]]:
    """(stopped after round 2, resumed from it to round 4) runs by case."""
    cwd = tmp_path_factory.mktemp("zoo_interrupted")
    _sweep(cwd, "stop_after_round=2", "hydra.sweep.dir=stopped")
    _sweep(cwd, "resume=latest", "resume_roots=[stopped]", "hydra.sweep.dir=resumed")
    stopped, resumed = _by_case(cwd / "stopped"), _by_case(cwd / "resumed")
    assert sorted(stopped) == sorted(resumed) == sorted(CASES)
    return stopped, resumed


def test_every_zoo_algorithm_runs_from_its_strategy_option(reference: dict[str, Path]):
    """The case files select conf/strategy/<name>.yaml: the run's strategy is that option's."""
    for name, case in zip(ALGORITHMS, CASES, strict=True):
        run = reference[case]
        option = yaml.safe_load((ROOT / "conf" / "strategy" / f"{name}.yaml").read_text())
        used = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["strategy"]
        assert used["_target_"] == option["_target_"] and used["client"]["_target_"] == option["client"]["_target_"]
        summary = json.loads((run / "summary.json").read_text())
        assert _unexpected(summary["warnings"]) == [], (case, summary["warnings"])
        assert summary["status"] in ("completed", "degraded"), (case, summary["status"])
        rows = read_metrics(run)
        assert max(r["round"] for r in rows) == 4, case
        assert all(np.isfinite(r["loss"]) for r in rows if r["phase"] == "centralized"), case
        if case in PERSONAL:
            assert any("personal_accuracy" in r for r in rows if r["phase"] == "evaluate"), case


def test_stop_and_resume_latest_is_bit_for_bit_for_every_zoo_algorithm(
    reference: dict[str, Path], interrupted: tuple[dict[str, Path], dict[str, Path]]
):
    stopped, resumed = interrupted
    for case, run in resumed.items():
        ref = reference[case]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["resumed_from"].startswith(str(stopped[case])), case
        # every changing attribute is covered (no "resume will not be exact" warning)
        assert _unexpected(summary["warnings"]) == [], (case, summary["warnings"])
        _assert_same_arrays(
            _arrays(run / "checkpoints/round-0004.npz"), _arrays(ref / "checkpoints/round-0004.npz"), case
        )
        _assert_same_arrays(_state_arrays(run), _state_arrays(ref), case)
        assert _components(run) == _components(ref), case  # strategy and every client's state
        assert _rows(run) == _rows(ref), case
        assert summary["best"] == json.loads((ref / "summary.json").read_text())["best"], case


def test_each_zoo_algorithm_keeps_the_state_it_should(reference: dict[str, Path]):
    def arrays(case: str) -> dict[str, np.ndarray]:
        return _state_arrays(reference[case])

    def clients_with(case: str, key: str) -> set[str]:
        return {k.split("/")[1] for k in arrays(case) if k.startswith("clients/") and f"/{key}/" in k}

    feddyn = arrays("zoo_feddyn")
    assert any(k.startswith("strategy/h/") for k in feddyn)  # the server's h
    assert clients_with("zoo_feddyn", "feddyn_grad")  # each trained client's linear term
    assert clients_with("zoo_moon", "moon_prev")  # each trained client's previous local model
    assert clients_with("zoo_ditto", "ditto_personal")  # each trained client's personal model
    assert not any(k.startswith("clients/") for k in arrays("zoo_fednova"))  # FedNova keeps nothing per client
    # FedNova's clients report their local steps; the stragglers' (3 steps) pull the mean down
    steps = [r["local_steps"] for r in read_metrics(reference["zoo_fednova"]) if r["phase"] == "train"]
    assert len(steps) == 4 and min(steps) < max(steps), steps


def test_straggler_and_dropout_draws_are_the_same_in_every_run(
    reference: dict[str, Path], interrupted: tuple[dict[str, Path], dict[str, Path]]
):
    """What the runner says it dropped and slowed follows (seed, round, partition id) alone:
    the reference equals the stopped run (rounds 1-2) plus the resumed one (rounds 3-4), and
    dropped replies are the rounds' num_failures."""
    stopped, resumed = interrupted
    seen = {"do not reply to train": 0, "do not reply to evaluate": 0, "are stragglers": 0}
    for case in ("zoo_fednova", "zoo_feddyn", "zoo_ditto"):
        ref = _logged(reference[case])
        # the resumed run repeats the evaluation its (fit-phase) checkpoint preceded: the same draw again
        assert ref == list(dict.fromkeys(_logged(stopped[case]) + _logged(resumed[case]))), case
        assert len(_logged(stopped[case]) + _logged(resumed[case])) - len(ref) <= 1, case
        cfg = yaml.safe_load((reference[case] / ".hydra" / "config.yaml").read_text())
        rows = {(r["round"], r["phase"]): r for r in read_metrics(reference[case])}
        failures = {(rnd, phase): 0 for rnd in range(1, 5) for phase in ("train", "evaluate")}
        for rnd, what, pids in ref:
            seen[what] += len(pids)
            if what == "are stragglers":
                assert all(straggler_limits(cfg, rnd, p) != (None, None) for p in pids), (case, rnd, pids)
            else:
                assert all(dropped(cfg, rnd, p) for p in pids), (case, rnd, pids)
                failures[(rnd, what.split()[-1])] += len(pids)
        for (rnd, phase), n in failures.items():  # no client fails here but the dropped ones
            if (rnd, phase) in rows:
                assert rows[(rnd, phase)]["num_failures"] == n, (case, rnd, phase)
    assert all(n > 0 for n in seen.values()), seen  # the cases do exercise all three
