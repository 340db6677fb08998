"""Validation of the composed config: a wrong value is one line naming the key.

Hydra already rejects unknown group options (with the list of available ones); this module
checks types and ranges of the values themselves, before anything is started.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

FORMATS = ("npz", "torch", "safetensors")


class ConfigError(ValueError):
    """A user-facing configuration error; its message is one line naming the key."""

    def __init__(self, key: str, problem: str, value: Any = None, show_value: bool = True):
        got = f" (got {value!r})" if show_value else ""
        super().__init__(f"{key}: {problem}{got}")
        self.key = key
        self._args = (key, problem, value, show_value)

    def __reduce__(self) -> tuple[Any, ...]:  # launchers (submitit, joblib) pickle a job's error
        return (type(self), self._args)


class ClientSettingError(ConfigError):
    """Every sampled client failed in the run's first round with one and the same error: a
    setting to fix (reported as ``error: <that error>``, exit 2), not a run that went wrong."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.key = "clients"
        self._args = (message,)  # type: ignore[assignment]


def _get(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(key, "missing from the config", show_value=False)
        node = node[part]
    return node


def _int(cfg: dict[str, Any], key: str, minimum: int | None = None, optional: bool = False) -> None:
    value = _get(cfg, key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, "expected an integer", value)
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be >= {minimum}", value)


def _float(
    cfg: dict[str, Any],
    key: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> None:
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(key, "expected a number", value)
    if low is not None and (value <= low if low_open else value < low):
        raise ConfigError(key, f"must be {'>' if low_open else '>='} {low}", value)
    if high is not None and value > high:
        raise ConfigError(key, f"must be <= {high}", value)


def _bool(cfg: dict[str, Any], key: str) -> None:
    if not isinstance(_get(cfg, key), bool):
        raise ConfigError(key, "expected true or false", _get(cfg, key))


def _node(cfg: dict[str, Any], key: str) -> None:
    node = _get(cfg, key)
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise ConfigError(
            key, "expected a config with _target_ (the class or function that builds it)", show_value=False
        )


def _choice(cfg: dict[str, Any], key: str, choices: tuple[str, ...]) -> None:
    value = _get(cfg, key)
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}", value)


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Resolve every interpolation on the driver (``${hydra:...}`` fails in Ray workers)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as exc:  # omegaconf raises several types; all mean a bad value
        key = getattr(exc, "full_key", None) or "config"
        raise ConfigError(str(key), str(exc).splitlines()[0], show_value=False) from None
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return {str(k): v for k, v in data.items()}


def validate(cfg: dict[str, Any]) -> None:
    """Raise ConfigError for the first invalid value."""
    _int(cfg, "seed", 0)
    _int(cfg, "num_rounds", 1)
    _int(cfg, "num_clients", 1)
    _int(cfg, "stop_after_round", 1, optional=True)
    _int(cfg, "train.local_epochs", 1)
    _int(cfg, "train.batch_size", 1)
    _float(cfg, "train.lr", 0.0, low_open=True)
    _float(cfg, "train.momentum", 0.0, 1.0)
    _float(cfg, "train.weight_decay", 0.0)
    _bool(cfg, "train.keep_optimizer_state")
    layers = _get(cfg, "personalization.layers")
    if not isinstance(layers, list) or not all(isinstance(x, str) and x for x in layers):
        raise ConfigError("personalization.layers", "expected a list of parameter-name patterns, e.g. [head.*]", layers)
    _float(cfg, "clients.straggler_fraction", 0.0, 1.0)
    _int(cfg, "clients.straggler_epochs", 1)
    _int(cfg, "clients.straggler_steps", 1, optional=True)
    _float(cfg, "clients.dropout", 0.0, 1.0)
    _float(cfg, "eval.val_fraction", 0.0, 0.9, low_open=True)
    _float(cfg, "eval.test_fraction", 0.0, 0.9, low_open=True)
    _int(cfg, "eval.batch_size", 1)
    _choice(cfg, "device", ("auto", "cpu", "cuda"))
    _float(cfg, "round_timeout", 0.0, low_open=True)
    _float(cfg, "backend.client_resources.num_cpus", 0.0, low_open=True)
    _float(cfg, "backend.client_resources.num_gpus", 0.0)
    if not isinstance(_get(cfg, "backend.init_args"), dict):
        raise ConfigError("backend.init_args", "expected a mapping", _get(cfg, "backend.init_args"))
    _choice(cfg, "progress", ("auto", "bar", "log", "off"))
    _bool(cfg, "print_config")
    telemetry = _get(cfg, "telemetry")
    if telemetry is not None and not isinstance(telemetry, bool):
        raise ConfigError("telemetry", "expected true, false or null", telemetry)
    _int(cfg, "tolerate_failed_rounds", 0)
    _choice(cfg, "init_weights_match", ("name", "order"))
    _bool(cfg, "unsafe.scaffold_momentum")
    fail = _get(cfg, "fail_clients")
    if not isinstance(fail, list) or not all(isinstance(x, int) for x in fail):
        raise ConfigError("fail_clients", "expected a list of partition ids", fail)
    roots = _get(cfg, "resume_roots")
    if not isinstance(roots, list) or not all(isinstance(x, str) for x in roots):
        raise ConfigError("resume_roots", "expected a list of directories", roots)

    for group in ("model", "dataset", "partitioner", "task", "optimizer", "engine"):
        _node(cfg, group)
    if cfg.get("dp") is not None:
        _node(cfg, "dp")
    if "alpha" in cfg["partitioner"] and isinstance(cfg["partitioner"]["alpha"], (int, float)):
        _float(cfg, "partitioner.alpha", 0.0, low_open=True)

    _validate_checkpoint(cfg)
    _validate_strategy(cfg)
    _validate_scaffold(cfg)
    _validate_report(cfg)
    _validate_data_cache(cfg)


def _validate_data_cache(cfg: dict[str, Any]) -> None:
    node = cfg.get("data_cache")
    if node is None:
        return
    if not isinstance(node, dict):
        raise ConfigError("data_cache", "expected a mapping (enabled: true, dir: null)", node)
    if not isinstance(node.get("enabled", True), bool):
        raise ConfigError("data_cache.enabled", "expected true or false", node.get("enabled"))
    if node.get("dir") is not None and not isinstance(node.get("dir"), str):
        raise ConfigError("data_cache.dir", "expected a directory path or null", node.get("dir"))


def _validate_report(cfg: dict[str, Any]) -> None:
    """``report.targets``: {<phase>_<metric>: a number or a list of numbers}."""
    report = cfg.get("report")
    if report is None:
        return
    if not isinstance(report, dict):
        raise ConfigError("report", "expected a mapping (targets: ...)", report)
    targets = report.get("targets") or {}
    if not isinstance(targets, dict):
        raise ConfigError("report.targets", "expected a mapping, e.g. {centralized_accuracy: [0.8, 0.9]}", targets)
    for name, values in targets.items():
        key = f"report.targets.{name}"
        if not isinstance(name, str) or "_" not in name:
            raise ConfigError(key, "expected <phase>_<metric>, e.g. centralized_accuracy", name)
        items = values if isinstance(values, list) else [values]
        if not items or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in items
        ):
            raise ConfigError(key, "expected a number or a list of numbers", values)


def _validate_checkpoint(cfg: dict[str, Any]) -> None:
    _choice(cfg, "checkpoint.format", FORMATS)
    _choice(cfg, "checkpoint.phase", ("fit", "evaluate"))
    _int(cfg, "checkpoint.every_n_rounds", 1)
    _int(cfg, "checkpoint.keep_last", 1, optional=True)
    _choice(cfg, "checkpoint.mode", ("max", "min"))
    monitor = _get(cfg, "checkpoint.monitor")
    if monitor is not None and (not isinstance(monitor, str) or "_" not in monitor):
        raise ConfigError("checkpoint.monitor", "expected <phase>_<metric>, e.g. centralized_accuracy", monitor)


def _validate_strategy(cfg: dict[str, Any]) -> None:
    strategy = _get(cfg, "strategy")
    if not isinstance(strategy, dict) or "_target_" not in strategy:
        raise ConfigError("strategy", "expected a strategy config with _target_", show_value=False)
    n = cfg["num_clients"]
    for key in ("fraction_train", "fraction_evaluate"):
        if key in strategy:
            _float(cfg, f"strategy.{key}", 0.0, 1.0)
    # Flower's sample_nodes waits forever for nodes that never come: refuse up front.
    for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        if key in strategy:
            _int(cfg, f"strategy.{key}", 0)
            if strategy[key] > n:
                raise ConfigError(f"strategy.{key}", f"must be <= num_clients ({n})", strategy[key])


SCAFFOLD_TARGETS = ("runner.algorithms.scaffold.Scaffold", "runner.strategies.Scaffold")  # the alias too


def _validate_scaffold(cfg: dict[str, Any]) -> None:
    """SCAFFOLD's control-variate update assumes plain SGD: momentum, or another optimizer,
    makes it diverge. Refused unless the user sets ``unsafe.scaffold_momentum=true``."""
    if cfg["strategy"]["_target_"] not in SCAFFOLD_TARGETS or cfg["unsafe"]["scaffold_momentum"]:
        return
    task_opt = cfg["task"].get("optimizer") if isinstance(cfg.get("task"), dict) else None
    opt = task_opt if isinstance(task_opt, dict) and "_target_" in task_opt else cfg["optimizer"]
    hint = "SCAFFOLD's variate update assumes plain SGD (set unsafe.scaffold_momentum=true to run it anyway)"
    if opt.get("_target_") != "torch.optim.SGD":
        raise ConfigError("optimizer", f"strategy=scaffold needs optimizer=sgd; {hint}", opt.get("_target_"))
    momentum = opt.get("momentum", 0.0)
    if isinstance(momentum, (int, float)) and momentum > 0:
        key = "train.momentum" if momentum == cfg["train"]["momentum"] else "optimizer.momentum"
        raise ConfigError(key, f"strategy=scaffold needs momentum 0; {hint}", momentum)
