"""Which client algorithms a run uses, built from its resolved config.

A run's client half is a list of :class:`ClientAlgorithm` objects, run in this order:

1. the built-in "feature" algorithms selected by their own keys:
   ``personalization.layers`` (FedPer, :mod:`runner.algorithms.personalization`) and
   ``train.keep_optimizer_state`` (:mod:`runner.algorithms.optimizer_state`);
2. the strategy's client half, the ``strategy.client`` node (``_target_`` + arguments).

They compose (SCAFFOLD with personal layers and kept optimizer state at once) as long as
their state keys differ, at most one overrides ``fit`` and at most one is ``personal``;
:func:`check_algorithms` says so on the driver before the run starts (exit 2).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from runner.algorithms.base import ClientAlgorithm
from runner.build import build
from runner.config import ConfigError

__all__ = ["CLIENT_KEY", "cached_algorithms", "check_algorithms", "client_algorithms", "personal_algorithm"]

CLIENT_KEY = "client"  # strategy.client: the strategy's client half


def client_algorithms(run_cfg: dict[str, Any]) -> list[ClientAlgorithm]:
    """The run's client algorithms, built-in features first (see the module docstring)."""
    algorithms: list[ClientAlgorithm] = []
    layers = list((run_cfg.get("personalization") or {}).get("layers") or [])
    if layers:
        from runner.algorithms.personalization import FedPer

        algorithms.append(FedPer(layers))
    if (run_cfg.get("train") or {}).get("keep_optimizer_state"):
        from runner.algorithms.optimizer_state import KeepOptimizerState

        algorithms.append(KeepOptimizerState())
    node = (run_cfg.get("strategy") or {}).get(CLIENT_KEY)
    if node is not None:
        algorithm = build(node, f"strategy.{CLIENT_KEY}")
        if not isinstance(algorithm, ClientAlgorithm):
            raise ConfigError(
                f"strategy.{CLIENT_KEY}._target_",
                f"{node.get('_target_')} built a {type(algorithm).__name__}, not a runner.algorithms.ClientAlgorithm",
                show_value=False,
            )
        algorithms.append(algorithm)
    return algorithms


@lru_cache(maxsize=4)
def _algorithms_from(key: str) -> tuple[ClientAlgorithm, ...]:
    return tuple(client_algorithms(json.loads(key)))


def cached_algorithms(run_cfg: dict[str, Any]) -> tuple[ClientAlgorithm, ...]:
    """One set of algorithm objects per process and config (they keep nothing per client)."""
    relevant = {
        "personalization": run_cfg.get("personalization"),
        "train": {"keep_optimizer_state": (run_cfg.get("train") or {}).get("keep_optimizer_state")},
        "strategy": {CLIENT_KEY: (run_cfg.get("strategy") or {}).get(CLIENT_KEY)},
    }
    return _algorithms_from(json.dumps(relevant, sort_keys=True))


def _name(algorithm: ClientAlgorithm) -> str:
    return type(algorithm).__name__


def check_algorithms(algorithms: list[ClientAlgorithm] | tuple[ClientAlgorithm, ...]) -> None:
    """The algorithms can run together: distinct state keys, one ``fit``, one personal model."""
    owner: dict[str, str] = {}
    for algorithm in algorithms:
        for key in algorithm.state_keys:
            if key in owner:
                raise ConfigError(
                    f"strategy.{CLIENT_KEY}",
                    f"{_name(algorithm)} and {owner[key]} both keep client state {key!r}; they cannot run together",
                    show_value=False,
                )
            owner[key] = _name(algorithm)
    fits = [_name(a) for a in algorithms if type(a).fit is not ClientAlgorithm.fit]
    if len(fits) > 1:
        raise ConfigError(
            f"strategy.{CLIENT_KEY}", f"{' and '.join(fits)} both override fit(); only one may", show_value=False
        )
    personal = [_name(a) for a in algorithms if a.personal]
    if len(personal) > 1:
        raise ConfigError(
            f"strategy.{CLIENT_KEY}",
            f"{' and '.join(personal)} both have a personal model; only one may report evaluate_personal_*",
            show_value=False,
        )


def personal_algorithm(algorithms: list[ClientAlgorithm] | tuple[ClientAlgorithm, ...]) -> ClientAlgorithm | None:
    """The algorithm whose ``personal_model`` gives ``evaluate_personal_<metric>``, if any."""
    return next((a for a in algorithms if a.personal), None)
