"""Issue 17: a user's algorithm (both halves) as the README shows it, run as a user runs it,
and the personal metrics a personalized algorithm adds (``evaluate_personal_<m>``) reaching
metrics.jsonl, the summary, the plots, ``checkpoint.monitor`` and ``resume=best``.

The exact resume of the user's algorithm is in tests/test_exact_state.py's sweep (case
``user_algorithm``)."""

from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path

from tests.helpers import FAST, ROOT, checkpoint_state, read_metrics, run_cli, run_dirs

EXAMPLE = ROOT / "examples" / "tabular_fl"
ALGORITHM = EXAMPLE / "my_fl" / "algorithm.py"


def _block(text: str, after: str, lang: str) -> str:
    """The first fenced block of ``lang`` after the heading ``after``."""
    start = text.index(f"```{lang}\n", text.index(after)) + len(f"```{lang}\n")
    return text[start : text.index("```", start)]


def test_the_readme_algorithm_is_the_example_file() -> None:
    """The README's code is the code the runs below (and the exact-state sweep) execute."""
    readme = (ROOT / "README.md").read_text()
    code = _block(readme, "## Write your own algorithm", "python")
    assert code == ALGORITHM.read_text()
    assert 35 <= sum(1 for line in code.splitlines() if line.strip()) <= 50  # "about 40 lines"
    yaml = _block(readme, "## Write your own algorithm", "yaml")
    option = EXAMPLE / "my_fl" / "conf" / "strategy" / "adaptive_prox.yaml"
    assert yaml.split("\n", 1)[1] == option.read_text().split("\n", 1)[1]  # the option file, minus its comment


def test_the_user_algorithm_runs_from_config_dir_with_both_halves(tmp_path: Path) -> None:
    """The example README's command, in a copy of the example outside this repository."""
    text = (EXAMPLE / "README.md").read_text()
    (line,) = [ln for ln in _block(text, "### An algorithm of our own", "").splitlines() if ln.strip()]
    args = shlex.split(line)[3:]
    assert "strategy=adaptive_prox" in args and "--config-dir" in args
    project = tmp_path / "my_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("outputs", "multirun", "__pycache__"))
    proc = run_cli([*args, "num_rounds=3", "progress=log"], cwd=project, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(project / "outputs")
    manifest = json.loads((run / "checkpoints" / "round-0003.json").read_text())
    assert manifest["config"]["strategy"]["client"]["_target_"] == "my_fl.algorithm.AdaptiveProxClient"
    comps = checkpoint_state(run, 3)[0]  # client states read back from their blobs
    # the client payload reached the server half, whose state moved and is checkpointed
    assert comps["strategy"]["mu"] != 0.01
    # each client trained so far keeps its own mu and drift
    clients = comps["clients"]
    assert len(clients) >= 2 and all(set(s) == {"mu", "drift"} and s["drift"] > 0 for s in clients.values())
    rows = read_metrics(run)
    final = [r for r in rows if r["phase"] == "centralized" and r["round"] == 3][0]
    assert final["accuracy"] > 0.8  # it learned
    assert not [r for r in rows if r["phase"] == "train" and r["num_failures"]]


def test_personal_metrics_reach_monitor_summary_plots_and_resume_best(tmp_path: Path) -> None:
    # phase=evaluate: a fit-phase checkpoint of the last round precedes its evaluation, and no
    # later checkpoint carries that round's evaluate_* values for resume=best to read
    common = [
        *FAST,
        "personalization.layers=[head.*]",
        "checkpoint.monitor=evaluate_personal_accuracy",
        "checkpoint.phase=evaluate",
    ]
    proc = run_cli([*common, "num_rounds=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path / "outputs")
    rows = [r for r in read_metrics(run) if r["phase"] == "evaluate"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    # a client evaluated before it ever trained has no head of its own yet: the same numbers;
    # later, its own head beats the global (never trained) one
    assert all(r["personal_accuracy"] >= r["accuracy"] for r in rows)
    assert rows[-1]["personal_accuracy"] > rows[-1]["accuracy"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"]["evaluate_personal_accuracy"] == rows[-1]["personal_accuracy"]
    best_round = max(rows, key=lambda r: (r["personal_accuracy"], -r["round"]))["round"]
    assert summary["best"]["metric"] == "evaluate_personal_accuracy" and summary["best"]["round"] == best_round
    assert json.loads((run / "checkpoints" / "best.json").read_text())["round"] == best_round
    # a line on the accuracy plot, not a plot of its own
    assert (run / "plots" / "accuracy.png").exists() and not (run / "plots" / "personal_accuracy.png").exists()
    time.sleep(1.1)  # a new Hydra run dir
    proc = run_cli([*common, "num_rounds=4", "resume=best"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = next(r for r in run_dirs(tmp_path / "outputs") if r != run)
    assert json.loads((resumed / "summary.json").read_text())["resumed_from"].endswith(f"round-{best_round:04d}.json")


def test_personal_metrics_without_a_personal_model_are_a_setting_error(tmp_path: Path) -> None:
    proc = run_cli([*FAST, "checkpoint.monitor=evaluate_personal_accuracy"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "checkpoint.monitor" in proc.stderr and "evaluate_accuracy" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").glob("**/metrics.jsonl"))
