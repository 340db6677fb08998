"""Trust (issue 21): a run that trained nothing never says "completed", skipped checkpoints are
always named, and the errors a newcomer hits name the key to change.

One end-to-end test per numbered item of the issue's *Why*, each as ``python -m runner``
subprocesses. Runs that succeed share one multirun over ``tests/conf/case/trust_*.yaml``
(the ``sweep`` fixture); settings that fail before round 1 are single runs of a few seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import FAST, ROOT, compose_cfg, read_metrics, run_cli, run_dirs

CASE_DIR = ROOT / "tests" / "conf"
CASES = ["trust_degraded", "trust_user_model", "trust_init_order", "trust_hf_tabular"]
BASE = ["num_clients=4", "train.local_epochs=1", "progress=log", "print_config=false"]

USER_MODULE = '''
import torch
from torch import nn

from runner.tasks import Classification


class Net(nn.Module):
    """A user's model (VERSION 1)."""

    def __init__(self, input_shape, num_classes, **_):
        super().__init__()
        width = 1
        for d in input_shape:
            width *= int(d)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(width, 16), nn.ReLU(), nn.Linear(16, int(num_classes)))

    def forward(self, x):
        return self.net(x)


class NoPenaltyTask(Classification):
    """A user's task that forgets FedProx's ``ctx.penalty(model)``."""

    def train(self, model, optimizer, data, ctx):
        model.train()
        for xb, yb in data.batches(self.batch_size, generator=ctx.generator, device=ctx.device):
            optimizer.zero_grad()
            loss = self.loss(model(xb), yb)
            loss.backward()
            ctx.before_step(model)
            optimizer.step()
        return {"loss": float(loss.detach()), "accuracy": 0.0}
'''


def _errors(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _fresh(workdir: Path, name: str) -> Path:
    """A launch dir of its own for a test's single runs (their outputs/ stay apart)."""
    path = workdir / name
    path.mkdir()
    return path


def _case_of(run: Path) -> str:
    overrides = (run / ".hydra" / "overrides.yaml").read_text() + "\n"
    return next(c for c in CASES if f"+case={c}\n" in overrides)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A launch dir with a user module, a Flower how-to .pth with other key names and a CSV."""
    import torch

    cwd = tmp_path_factory.mktemp("trust")
    (cwd / "user").mkdir()
    (cwd / "user" / "trust_user.py").write_text(USER_MODULE)
    # the how-to's torch.save(model.state_dict()), from a model whose keys differ from runner.models.MLP's
    # (body.1.*, head.*) but whose shapes come in the same order
    rng = np.random.default_rng(0)
    shapes = {"fc1.weight": (128, 64), "fc1.bias": (128,), "fc2.weight": (10, 128), "fc2.bias": (10,)}
    state = {k: torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()}
    torch.save(state, cwd / "model_round_3.pth")
    rows = ["f0,f1,f2,label"] + [f"{i % 7},{(i * 3) % 5},{i % 2},{i % 3}" for i in range(120)]
    (cwd / "tab.csv").write_text("\n".join(rows) + "\n")
    return cwd


def _env(cwd: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": os.pathsep.join([str(cwd / "user"), str(ROOT)]),
        "TRUST_PTH": str(cwd / "model_round_3.pth"),
        "TRUST_CSV": str(cwd / "tab.csv"),
    }


@pytest.fixture(scope="module")
def sweep(workdir: Path) -> dict[str, tuple[Path, str]]:
    """The runs that must succeed, in one process: {case: (run dir, console)}."""
    proc = run_cli(
        ["-m", "--config-dir", str(CASE_DIR), f"+case={','.join(CASES)}", *BASE, "hydra.sweep.dir=sweep"],
        cwd=workdir,
        timeout=900,
        env=_env(workdir),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {_case_of(r): r for r in run_dirs(workdir / "sweep")}
    assert sorted(runs) == sorted(CASES)
    return {case: (run, proc.stdout + proc.stderr) for case, run in runs.items()}


# ------------------------------------------------------------------ 1. no learning, no success


def test_1_every_client_failing_is_a_failed_run_or_a_setting_error(workdir: Path, sweep: dict):
    # every client fails (different messages): round 1 is a failed round; tolerance 0 ends the run
    cwd = _fresh(workdir, "t1a")
    proc = run_cli([*FAST, "fail_clients=[0,1,2,3]", "num_rounds=3", "print_config=false"], cwd=cwd)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    (err,) = _errors(proc)
    assert "1 failed round(s) (1), more than tolerate_failed_rounds=0" in err, err
    assert "injected failure in client" in err
    assert "completed" not in proc.stdout.splitlines()[-1]
    assert "round 1 FAILED: no aggregate" in proc.stdout + proc.stderr
    (run,) = run_dirs(cwd / "outputs")
    summary = _summary(run)
    assert summary["status"] == "failed" and summary["rounds_done"] == 1, summary
    assert summary["failures"]["failed_rounds"] == 1 and summary["failures"]["failed_round_numbers"] == [1]
    assert summary["failures"]["client_failures"] == 2  # FAST samples 2 of 4
    assert "injected failure in client" in summary["failures"]["first_error"]
    warned = [w for w in summary["warnings"] if w.startswith("round 1: 2 of 2 clients failed in training")]
    assert len(warned) == 1 and "(first error: injected failure in client" in warned[0], summary["warnings"]
    assert summary["error"].startswith("RunFailed: 1 failed round(s)")

    # a task that never calls ctx.penalty under FedProx: every client, one error -> a setting (exit 2)
    cwd = _fresh(workdir, "t1b")
    proc = run_cli(
        [*FAST, "strategy=fedprox", "task._target_=trust_user.NoPenaltyTask", "num_rounds=3", "print_config=false"],
        cwd=cwd,
        env=_env(workdir),
    )
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    (err,) = _errors(proc)
    assert err.startswith("error: every sampled client failed in round 1 with: ") and "never calls ctx.penalty" in err
    (run,) = run_dirs(cwd / "outputs")
    summary = _summary(run)
    assert summary["status"] == "failed" and summary["rounds_done"] == 0, summary
    assert "never calls ctx.penalty" in summary["error"] and summary["failures"]["client_failures"] == 2
    assert not any(r["round"] == 2 for r in read_metrics(run))  # stopped before round 2

    # within a stated tolerance: degraded, exit 0 (the sweep), the failures counted
    run, console = sweep["trust_degraded"]
    summary = _summary(run)
    assert summary["status"] == "degraded" and summary["rounds_done"] == 2, summary
    assert summary["failures"]["failed_round_numbers"] == [1, 2]
    assert summary["failures"]["client_failures"] == 8
    assert [w.split(":")[0] for w in summary["warnings"]] == ["round 1", "round 2"]
    assert "degraded: 2 failed round(s) (1, 2), within tolerate_failed_rounds=5" in console
    # and the sweep's summary shows it per job
    import csv

    with open(workdir / "sweep" / "summary.csv") as f:
        table = {Path(r["job_dir"]).name: r for r in csv.DictReader(f)}
    assert table[run.name]["status"] == "degraded" and table[run.name]["failed_rounds"] == "2"
    assert table[sweep["trust_user_model"][0].name]["failed_rounds"] == "0"


# ------------------------------------------------------------ 2. corrupt checkpoints are named
# ------------------------------------------------------------ 7. edited code is not resumed silently


def test_2_and_7_corrupt_checkpoint_and_edited_code_are_warned_on_resume(workdir: Path, sweep: dict):
    run, _ = sweep["trust_user_model"]
    manifest = json.loads((run / "checkpoints" / "round-0002.json").read_text())
    assert set(manifest["code_digest"]) == {"trust_user"}  # the user module, not runner/flwr/torch
    weights = run / "checkpoints" / "round-0002.npz"
    weights.write_bytes(b"junk")
    user = workdir / "user" / "trust_user.py"
    user.write_text(user.read_text().replace("VERSION 1", "VERSION 2"))
    args = ["--config-dir", str(CASE_DIR), "+case=trust_user_model", *BASE, "num_rounds=3"]
    cwd = _fresh(workdir, "t2")

    # one exact file never falls back: one line, exit 2
    proc = run_cli([*args, f"resume={run / 'checkpoints' / 'round-0002.json'}"], cwd=cwd, env=_env(workdir))
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    (err,) = _errors(proc)
    assert err.startswith(f"error: resume={run / 'checkpoints' / 'round-0002.json'}: {weights}: "), err

    # the run dir: round 2 is skipped with a warning naming it, round 1 resumed, the code change named
    proc = run_cli([*args, f"resume={run}"], cwd=cwd, env=_env(workdir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    console = proc.stdout + proc.stderr
    assert f"skipping invalid checkpoint {run / 'checkpoints' / 'round-0002.json'}" in console
    assert "the code of trust_user changed since" in console
    new = next(r for r in run_dirs(cwd / "outputs") if _summary(r)["status"] != "failed")
    summary = _summary(new)
    assert summary["status"] == "completed" and summary["resumed_from"].endswith("round-0001.json"), summary
    skipped = [w for w in summary["warnings"] if w.startswith("skipping invalid checkpoint")]
    assert len(skipped) == 1 and "round-0002" in skipped[0] and str(weights.name) in skipped[0], summary["warnings"]
    assert sum("the code of trust_user changed" in w for w in summary["warnings"]) == 1


# ------------------------------------------------------------------ 3. known-bad combinations


@pytest.mark.parametrize(
    "args, key",
    [(["train.momentum=0.9"], "train.momentum"), (["optimizer=adam"], "optimizer")],
)
def test_3_scaffold_with_momentum_or_another_optimizer_is_one_line(tmp_path: Path, args: list[str], key: str):
    proc = run_cli(["strategy=scaffold", *args], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    (err,) = _errors(proc)
    assert err.startswith(f"error: {key}: strategy=scaffold needs") and "unsafe.scaffold_momentum=true" in err
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("metrics.jsonl"))


def test_3_the_documented_switch_allows_it():
    from runner.config import to_container, validate

    validate(to_container(compose_cfg(["strategy=scaffold", "train.momentum=0.9", "unsafe.scaffold_momentum=true"])))


# --------------------------------------------------------------------------- 4. dataset=hf


def test_4_hf_errors_name_the_file_or_the_column_and_shapes_come_from_the_data(workdir: Path, sweep: dict):
    import datasets
    from PIL import Image

    hf = ["dataset=hf", "dataset.path=csv", "print_config=false"]
    cwd = _fresh(workdir, "t4")
    cases = [
        ([f"dataset.data_files={workdir / 'nope.csv'}", "dataset.features=[f0,f1,f2]"], "error: dataset.data_files: "),
        (
            [f"dataset.data_files={workdir / 'tab.csv'}", "dataset.features=[f0,f1,f2]", "dataset.label=target"],
            "error: dataset.label: column(s) target not in the dataset; it has columns: f0, f1, f2, label",
        ),
        (
            [f"dataset.data_files={workdir / 'tab.csv'}", "dataset.features=[f0,f1,f2]", "dataset.input_shape=[4]"],
            "error: dataset.input_shape: declares [4] but the loader returned samples of shape [3]",
        ),
    ]
    images = datasets.Dataset.from_dict(
        {"img": [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(12)], "label": [i % 2 for i in range(12)]}
    ).cast_column("img", datasets.Image())
    images.save_to_disk(str(workdir / "images"))
    cases.append(
        (
            [f"dataset.path={workdir / 'images'}"],
            "error: dataset.features: column(s) image not in the dataset; it has columns: img, label",
        )
    )
    for args, needle in cases:
        proc = run_cli([*hf, *args], cwd=cwd, timeout=120)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        (err,) = _errors(proc)
        assert err.startswith(needle), (err, needle)
        assert "MissingMandatoryValue" not in proc.stderr and "model.input_shape" not in err

    run, console = sweep["trust_hf_tabular"]
    assert "dataset: input_shape=[3], num_classes=3 read from the data" in console
    assert _summary(run)["status"] == "completed"
    cfg = (run / ".hydra" / "config.yaml").read_text()
    assert "input_shape: null" in cfg  # the config left them unset


# ----------------------------------------------------- 5. errors name the missing piece; defaults


def test_5_target_typo_and_unknown_option_and_flower_defaults(tmp_path: Path, sweep: dict):
    proc = run_cli(["model._target_=runner.models.MLPP"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (err,) = _errors(proc)
    assert err.startswith("error: model._target_: module 'runner.models' imports but has no attribute 'MLPP'")
    assert "close names: MLP" in err

    proc = run_cli(["model=my_net"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Available options in 'model':" in proc.stderr and "\tmlp" in proc.stderr  # Hydra's list is kept
    (err,) = _errors(proc)
    assert err.startswith("error: model=my_net: no model/my_net.yaml in the config dirs searched (")
    assert str(ROOT / "conf") in err and "--config-dir" in err

    # Flower's FedAvg defaults: every client trains and evaluates each round
    run, _ = sweep["trust_user_model"]
    rows = read_metrics(run)
    assert [r["num_replies"] for r in rows if r["phase"] == "train"] == [4, 4]
    assert [r["num_replies"] for r in rows if r["phase"] == "evaluate"] == [4, 4]
    assert _summary(run)["status"] == "completed" and _summary(run)["warnings"] == []


# --------------------------------------------------------------------- 6. key-name mismatch


def test_6_init_weights_with_other_names_is_refused_with_the_mapping_then_taken_by_order(workdir: Path, sweep: dict):
    pth = workdir / "model_round_3.pth"
    proc = run_cli([f"init_weights={pth}", "print_config=false"], cwd=_fresh(workdir, "t6"), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    (err,) = _errors(proc)
    assert "key names differ from the model's" in err and "init_weights_match=order" in err
    assert "fc1.weight->body.1.weight, fc1.bias->body.1.bias, fc2.weight->head.weight, fc2.bias->head.bias" in err

    run, console = sweep["trust_init_order"]
    assert f"warm start from {pth}" in console
    assert _summary(run)["status"] == "completed"
    # round 0 evaluates the how-to's weights (random normal ones: far from a trained or a fresh model)
    (row0,) = [r for r in read_metrics(run) if r["round"] == 0]
    (fresh0,) = [r for r in read_metrics(sweep["trust_degraded"][0]) if r["round"] == 0]
    assert row0["loss"] != fresh0["loss"]


# ------------------------------------------------------------- 8. killed deployment runs
# (the end-to-end kill is tests/test_deployment.py::test_deployment_run_kill_and_resume_bit_for_bit,
# which asserts the summary's status, last round and warning; this checks the writer on its own)


def test_8_a_killed_serverapp_leaves_a_failed_summary_with_its_last_round(tmp_path: Path):
    from runner.checkpoint.store import CheckpointData, write_checkpoint
    from runner.engine.deployment import _record_failure

    for rnd in (1, 2):
        write_checkpoint(tmp_path / "checkpoints", CheckpointData(rnd, "fit", {"w": np.zeros(2)}), "npz")
    _record_failure(tmp_path, "Flower run 7 failed: the ServerApp process (pid 9) is gone")
    summary = _summary(tmp_path)
    assert summary["status"] == "failed" and summary["last_round"] == 2 and summary["rounds_done"] == 2
    assert summary["failures"]["first_error"].endswith("is gone") and summary["warnings"]
