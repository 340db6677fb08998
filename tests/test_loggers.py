"""LoggerHub and build_loggers: the bookkeeping every tracker relies on, with in-process
loggers (no tracker package needed): names and steps, params once, no (metric, step) twice,
resume hand-over, failures as warnings, missing extras as one-line config errors, and the
``logger/`` config group composing one, several, or a user's own option."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runner.config import ConfigError
from runner.loggers import MAX_FAILURES, Logger, LoggerHub, RunInfo, build_loggers, row_metrics
from tests.helpers import ROOT, compose_cfg
from tests.test_loggers_support import CONFIG, expected, feed, rows, write_artifacts

# -- loggers a user could write (built by _target_ in these tests) ---------------------------

CALLS: dict[str, list[Any]] = {}


class Recorder(Logger):
    """Remembers every call; on resume claims to hold ``claims`` (metric, step) pairs."""

    def __init__(self, key: str = "rec", claims: list[list[Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key
        self.claims = claims
        self.calls: list[Any] = CALLS.setdefault(key, [])
        self.run_id: str | None = None

    def start(self, run, state, history):
        self.calls.append(("start", state, [s for s, _ in history]))
        if state:
            self.run_id = state["run_id"]
            return {(k, s) for k, s in (self.claims or [])}
        self.run_id = f"run-{len(self.calls)}"
        return None

    def log_params(self, params):
        self.calls.append(("params", params))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", step, dict(metrics)))

    def state_dict(self):
        return {"run_id": self.run_id}

    def finish(self, status, artifacts):
        self.calls.append(("finish", status, sorted(p.name for p in artifacts)))


class Boom(Logger):
    """A tracker whose backend fails: ``fail`` names the methods that raise."""

    def __init__(self, fail: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail = set(fail or ["log_metrics"])
        self.attempts = 0

    def _maybe(self, what: str) -> None:
        if what in self.fail:
            self.attempts += 1
            raise OSError(28, "No space left on device")

    def start(self, run, state, history):
        self._maybe("start")

    def log_metrics(self, metrics, step):
        self._maybe("log_metrics")

    def state_dict(self):
        self._maybe("state_dict")
        return {"ok": True}

    def finish(self, status, artifacts):
        self._maybe("finish")


class RandomUser(Logger):
    def log_metrics(self, metrics, step):
        random.random()  # a tracker that touches the global RNG


def target(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()


def info(tmp_path: Path, name: str = "strategy=fedavg,seed=0", group: str | None = None) -> RunInfo:
    out = tmp_path / name.replace(",", "_")
    out.mkdir(parents=True, exist_ok=True)
    return RunInfo(output_dir=out, name=name, group=group, config=dict(CONFIG))


def metric_calls(key: str = "rec") -> list[tuple[str, int, float]]:
    return [(k, c[1], v) for c in CALLS[key] if c[0] == "metrics" for k, v in c[2].items()]


# -- rows to metrics ---------------------------------------------------------------------------


def test_row_metrics_names_every_numeric_key_by_phase():
    row = {
        "round": 3,
        "phase": "train",
        "loss": 0.2,
        "accuracy": 0.9,
        "num_replies": 5,
        "num_failures": 0,
        "elapsed_s": 4.2,
    }
    assert row_metrics(row) == {
        "train/loss": 0.2,
        "train/accuracy": 0.9,
        "train/num_replies": 5.0,
        "train/num_failures": 0.0,
    }
    user = {"round": 1, "phase": "privacy", "epsilon": 1.5, "delta": 1e-5, "note": "text", "ok": True}
    assert row_metrics(user) == {"privacy/epsilon": 1.5, "privacy/delta": 1e-5}


# -- no loggers --------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [None, {}, {"tensorboard": None}])
def test_no_loggers_is_a_hub_that_does_nothing(tmp_path: Path, cfg: Any):
    hub = build_loggers(cfg, info(tmp_path))
    assert not hub and hub.names == []
    hub.load_state_dict({"mlflow": {"run_id": "x"}})
    hub.start([])
    feed(hub, range(3))
    assert hub.state_dict() == {}
    hub.finish("completed", [])


def test_no_loggers_imports_no_tracker(tmp_path: Path):
    code = (
        "import sys, pathlib\n"
        "from runner.loggers import build_loggers, RunInfo\n"
        "hub = build_loggers(None, RunInfo(pathlib.Path('.'), 'x', None, {}))\n"
        "hub.start([]); hub.log_row({'round': 0, 'phase': 'centralized', 'loss': 1.0})\n"
        "hub.log_clients(1, 'train', {0: {'loss': 1.0}}); hub.state_dict(); hub.finish('completed', [])\n"
        "bad = [m for m in ('tensorboard', 'mlflow', 'wandb', 'torch', 'hydra') if m in sys.modules]\n"
        "print(bad)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- params, metrics, de-duplication ---------------------------------------------------------


def test_user_logger_by_target_gets_params_once_and_each_pair_once(tmp_path: Path):
    hub = build_loggers({"rec": {"_target_": target(Recorder)}}, info(tmp_path))
    assert hub.names == ["rec"]
    hub.start([])
    fed = feed(hub, range(3))
    for row in fed:  # the same rows again (e.g. history replayed by the run): nothing new
        hub.log_row(row)
    hub.log_clients(2, "train", {0: {"loss": 9.0}})  # already logged for round 2
    params = [c for c in CALLS["rec"] if c[0] == "params"]
    assert len(params) == 1
    flat = params[0][1]
    assert flat["strategy._target_"] == "flwr.serverapp.strategy.FedAvg"
    assert flat["train.lr"] == 0.05 and flat["fail_clients"] == "[]" and flat["backend.init_args"] == "{}"
    calls = metric_calls()
    pairs = [(k, s) for k, s, _ in calls]
    assert len(pairs) == len(set(pairs))
    want = expected(range(3))
    assert {(k, s): v for k, s, v in calls if not k.startswith("clients/")} == {
        (k, s): v for k, by in want.items() for s, v in by.items()
    }
    clients = {(k, s): v for k, s, v in calls if k.startswith("clients/")}
    assert clients[("clients/train/loss/2", 1)] == pytest.approx(1 / 4)
    assert clients[("clients/train/num_examples/0", 2)] == 10.0
    assert hub.state_dict() == {"rec": {"run_id": "run-1"}}


def test_log_clients_can_be_switched_off_per_logger(tmp_path: Path):
    cfg = {
        "rec": {"_target_": target(Recorder), "key": "on"},
        "quiet": {"_target_": target(Recorder), "key": "off", "log_clients": False},
    }
    hub = build_loggers(cfg, info(tmp_path))
    hub.start([])
    feed(hub, range(2))
    assert any(k.startswith("clients/") for k, _, _ in metric_calls("on"))
    assert not any(k.startswith("clients/") for k, _, _ in metric_calls("off"))


def test_resume_hands_state_over_and_logs_only_what_the_tracker_lacks(tmp_path: Path):
    first = build_loggers({"rec": {"_target_": target(Recorder)}}, info(tmp_path))
    first.start([])
    history = feed(first, range(3), clients=False)
    state = json.loads(json.dumps(first.state_dict()))  # as the manifest stores it
    first.finish("stopped", [])
    CALLS.clear()
    # the reopened run holds rounds 0-1 but lost round 2's evaluate row (say, a crash)
    claims = [[k, s] for k, by in expected(range(3)).items() for s in by if not (s == 2 and k.startswith("evaluate/"))]
    second = build_loggers({"rec": {"_target_": target(Recorder), "claims": claims}}, info(tmp_path, "resumed"))
    second.load_state_dict(state)
    second.start(history)
    feed(second, range(3, 5), clients=False)
    calls = CALLS["rec"]
    assert calls[0] == ("start", {"run_id": "run-1"}, [s for s in (0, 1, 1, 1, 1, 2, 2, 2, 2)])
    assert not [c for c in calls if c[0] == "params"], "params are logged once per tracker run"
    logged = {(k, s) for k, s, _ in metric_calls()}
    assert logged == {(k, 2) for k in expected(range(3)) if k.startswith("evaluate/")} | {
        (k, s) for k, by in expected(range(3, 5)).items() for s in by
    }
    assert second.state_dict() == {"rec": {"run_id": "run-1"}}


def test_artifacts_checkpoint_files_only_where_log_checkpoint(tmp_path: Path):
    cfg = {
        "rec": {"_target_": target(Recorder), "key": "plain"},
        "ck": {"_target_": target(Recorder), "key": "ck", "log_checkpoint": True},
    }
    run = info(tmp_path)
    hub = build_loggers(cfg, run)
    hub.start([])
    files = write_artifacts(run.output_dir)
    hub.finish("completed", [*files, run.output_dir / "missing.png"])
    assert CALLS["plain"][-1] == ("finish", "completed", ["loss.png", "summary.json"])
    assert CALLS["ck"][-1] == ("finish", "completed", ["loss.png", "round-0004.npz", "summary.json"])


def test_trackers_cannot_move_the_global_rng(tmp_path: Path):
    import numpy as np
    import torch

    hub = build_loggers({"r": {"_target_": target(RandomUser)}}, info(tmp_path))
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    hub.start([])
    feed(hub, range(2))
    hub.finish("completed", [])
    assert random.getstate() == before[0]
    assert (np.random.get_state()[1] == before[1]).all()
    assert torch.equal(torch.get_rng_state(), before[2])


# -- failures are warnings ---------------------------------------------------------------------


def test_a_failing_tracker_warns_then_switches_off_and_the_others_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    cfg = {"boom": {"_target_": target(Boom)}, "rec": {"_target_": target(Recorder)}}
    hub = build_loggers(cfg, info(tmp_path))
    caplog.set_level(logging.WARNING, logger="runner")
    hub.start([])
    feed(hub, range(4))
    state = hub.state_dict()
    hub.finish("completed", [])
    boom = hub.logger("boom")
    assert boom.attempts == MAX_FAILURES, "switched off after repeated failures"
    warnings = [r for r in caplog.records if r.name == "runner" and r.levelno == logging.WARNING]
    assert len(warnings) == MAX_FAILURES + 1
    assert all("logger boom" in r.getMessage() for r in warnings)
    assert "No space left on device" in warnings[0].getMessage()
    assert "switched off" in warnings[-1].getMessage()
    assert len(metric_calls()) > 0 and CALLS["rec"][-1][0] == "finish"
    assert state["boom"] == {"ok": True} and state["rec"]["run_id"] == "run-1"


def test_a_tracker_that_cannot_start_or_save_state_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cfg = {
        "down": {"_target_": target(Boom), "fail": ["start"]},
        "flaky": {"_target_": target(Boom), "fail": ["state_dict", "finish"]},
    }
    hub = build_loggers(cfg, info(tmp_path))
    hub.load_state_dict({"down": {"run_id": "old"}})
    caplog.set_level(logging.WARNING, logger="runner")
    hub.start([])
    feed(hub, range(2))
    assert hub.active == ["flaky"]
    assert hub.state_dict() == {"down": {"run_id": "old"}}, "the old run id survives for a later resume"
    hub.finish("completed", [])
    messages = [r.getMessage() for r in caplog.records if r.name == "runner"]
    assert any("logger down: could not start" in m for m in messages)
    assert any("logger flaky: finish failed" in m for m in messages)


# -- config errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "module", "target_path"),
    [
        ("tensorboard", "tensorboard", "runner.loggers.tensorboard.TensorBoardLogger"),
        ("mlflow", "mlflow", "runner.loggers.mlflow.MLflowLogger"),
        ("wandb", "wandb", "runner.loggers.wandb.WandbLogger"),
    ],
)
def test_missing_extra_is_a_one_line_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, module: str, target_path: str
):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now fails as if not installed
    with pytest.raises(ConfigError) as err:
        build_loggers({name: {"_target_": target_path}}, info(tmp_path))
    assert str(err.value) == f"logger.{name}: needs the {module} package: pip install 'flower-hydra-runner[{name}]'"
    assert err.value.key == f"logger.{name}"


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"x": {"log_dir": "a"}}, "logger.x: expected a mapping with a _target_"),
        ({"x": "tensorboard"}, "logger.x: expected a mapping with a _target_"),
        ({"_target_": "runner.loggers.csv.CSVLogger"}, "logger: put each logger under its own key"),
        ({"x": {"_target_": "no.such.Logger"}}, "logger.x: cannot build no.such.Logger:"),
        (
            {"x": {"_target_": "runner.loggers.csv.CSVLogger", "nope": 1}},
            "logger.x: cannot build runner.loggers.csv.CSVLogger:",
        ),
        ({"x": {"_target_": "pathlib.PurePath"}}, "logger.x: pathlib.PurePath is not a logger"),
        ({"w": {"_target_": "runner.loggers.wandb.WandbLogger", "mode": "cloud"}}, "logger.w: cannot build"),
        (["tensorboard"], "logger: expected a mapping"),
    ],
)
def test_bad_logger_config_is_a_one_line_error(tmp_path: Path, cfg: Any, message: str):
    with pytest.raises(ConfigError) as err:
        build_loggers(cfg, info(tmp_path))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


# -- the config group ----------------------------------------------------------------------------


def test_logger_group_composes_none_one_several_and_user_options(tmp_path: Path):
    assert compose_cfg([]).get("logger") is None
    one = compose_cfg(["logger=tensorboard"]).logger
    assert list(one) == ["tensorboard"]
    every = compose_cfg(["logger=[tensorboard,mlflow,wandb,csv]", "logger.mlflow.experiment_name=mine"]).logger
    assert list(every) == ["tensorboard", "mlflow", "wandb", "csv"]
    assert every.mlflow.experiment_name == "mine" and every.wandb.mode == "offline"
    assert every.mlflow.tracking_uri is None and every.mlflow.log_checkpoint is False
    user_conf = tmp_path / "conf" / "logger"
    user_conf.mkdir(parents=True)
    (user_conf / "mine.yaml").write_text(f"mine:\n  _target_: {target(Recorder)}\n  key: composed\n")
    cfg = compose_cfg([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "logger=[csv,mine]"])
    assert list(cfg.logger) == ["csv", "mine"]
    hub = build_loggers(cfg.logger, info(tmp_path))
    assert hub.names == ["csv", "mine"]
    hub.start([])
    hub.log_row(rows(0)[0])
    hub.finish("completed", [])
    assert metric_calls("composed")


def test_every_shipped_option_builds(tmp_path: Path):
    cfg = compose_cfg(["logger=[tensorboard,mlflow,wandb,csv]"])
    hub = build_loggers(cfg.logger, info(tmp_path))
    assert isinstance(hub, LoggerHub) and hub.names == ["tensorboard", "mlflow", "wandb", "csv"]


# -- csv -------------------------------------------------------------------------------------------


def test_csv_logger_writes_a_complete_file_in_each_run_dir(tmp_path: Path):
    import csv

    cfg = {"csv": {"_target_": "runner.loggers.csv.CSVLogger"}}
    first = build_loggers(cfg, info(tmp_path, "a"))
    first.start([])
    history = feed(first, range(3))
    state = first.state_dict()
    first.finish("stopped", [])
    second = build_loggers(cfg, info(tmp_path, "b"))
    second.load_state_dict(state)
    second.start(history)
    feed(second, range(3, 5))
    second.finish("completed", [])
    with open(tmp_path / "b" / "csv" / "metrics.csv") as f:
        got = list(csv.DictReader(f))
    seen = {(r["metric"], int(r["round"])): float(r["value"]) for r in got}
    assert len(seen) == len(got), "no (metric, round) twice"
    assert seen == {(k, s): v for k, by in expected(range(5)).items() for s, v in by.items()}
