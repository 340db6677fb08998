"""Strategies (conf/strategy/): built by ``_target_``; their server state saved and restored.

Flower's Message-API strategies keep server state in plain attributes: FedOpt's moments
``m_t``/``v_t`` (FedAdam, FedYogi, FedAdagrad), FedAvgM's ``momentum_vector``, the DP
wrappers' ``clipping_norm`` (wrapped strategy under ``.strategy``). Those are captured as
arrays (in the checkpoint's format) plus a JSON description; nothing is pickled.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hydra.utils import instantiate

from runner.config import ConfigError

# Attributes that carry state across rounds. ``current_arrays`` is not listed: every
# strategy resets it from the global arrays in configure_train.
STATE_ATTRS = ("m_t", "v_t", "momentum_vector", "clipping_norm")


def build_strategy(strategy_cfg: dict[str, Any]) -> Any:
    try:
        return instantiate(strategy_cfg, _convert_="all")
    except Exception as exc:  # Hydra wraps the constructor's TypeError/ValueError
        cause = exc.__cause__ or exc
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        raise ConfigError("strategy", f"{strategy_cfg.get('_target_')}: {msg}", show_value=False) from None


def _layers(strategy: Any) -> list[tuple[str, Any]]:
    """The strategy and, for wrappers such as the DP strategies, the wrapped ones."""
    out, prefix, obj = [], "", strategy
    while obj is not None:
        out.append((prefix, obj))
        obj = getattr(obj, "strategy", None)
        prefix += "strategy."
    return out


def strategy_state(strategy: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON description, arrays) of the strategy's server state."""
    meta: dict[str, Any] = {"class": type(strategy).__name__, "attrs": {}}
    arrays: dict[str, np.ndarray] = {}
    for prefix, obj in _layers(strategy):
        for attr in STATE_ATTRS:
            if attr not in vars(obj):
                continue
            name, value = prefix + attr, getattr(obj, attr)
            if value is None or isinstance(value, (bool, int, float, str)):
                meta["attrs"][name] = {"kind": "value", "value": value}
            elif isinstance(value, dict):
                meta["attrs"][name] = {"kind": "dict", "keys": list(value)}
                arrays.update({f"{name}/{k}": np.asarray(v) for k, v in value.items()})
            elif isinstance(value, (list, tuple)):
                meta["attrs"][name] = {"kind": "list", "len": len(value)}
                arrays.update({f"{name}/{i}": np.asarray(v) for i, v in enumerate(value)})
            elif isinstance(value, np.ndarray):
                meta["attrs"][name] = {"kind": "array"}
                arrays[name] = value
            else:
                raise TypeError(f"cannot checkpoint {type(strategy).__name__}.{name} of type {type(value)}")
    return meta, arrays


def restore_strategy_state(strategy: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> list[str]:
    """Put saved state back; returns the restored attribute names (for the log)."""
    objs = dict(_layers(strategy))
    restored = []
    for name, desc in meta.get("attrs", {}).items():
        prefix, _, attr = name.rpartition(".")
        obj = objs.get(prefix + "." if prefix else "")
        if obj is None:
            continue
        kind = desc["kind"]
        if kind == "value":
            value: Any = desc["value"]
        elif kind == "dict":
            value = {k: arrays[f"{name}/{k}"] for k in desc["keys"]}
        elif kind == "list":
            value = [arrays[f"{name}/{i}"] for i in range(desc["len"])]
        else:
            value = arrays[name]
        setattr(obj, attr, value)
        restored.append(name)
    return restored
