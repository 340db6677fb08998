"""Strategies the runner adds to Flower's (conf/strategy/), and how a strategy is built.

``strategy=<name>`` is any ``flwr.serverapp.strategy`` class or a user's class, by
``_target_``. ``dp=<name>`` wraps whichever strategy is selected with one of Flower's
``DifferentialPrivacy*`` wrappers (:func:`build_strategy`). The ``strategy`` node's
``client`` key is the algorithm's client half (:mod:`runner.algorithms`), not an argument
of the server strategy. ``Scaffold`` lives in :mod:`runner.algorithms.scaffold`; the name
here stays importable.
"""

from __future__ import annotations

from typing import Any

from runner.algorithms.compose import CLIENT_KEY
from runner.algorithms.scaffold import Scaffold  # its home is runner.algorithms.scaffold (both halves)
from runner.build import build
from runner.config import ConfigError

__all__ = ["Scaffold", "build_strategy", "num_sampled_train"]


def num_sampled_train(strategy_cfg: dict[str, Any], num_clients: int) -> int:
    """How many clients Flower's FedAvg-style sampling picks per training round."""
    fraction = float(strategy_cfg.get("fraction_train", 1.0))
    return max(int(num_clients * fraction), int(strategy_cfg.get("min_train_nodes", 2)))


def build_strategy(run_cfg: dict[str, Any]) -> Any:
    """The strategy (the server half: the ``strategy`` node without ``client``), wrapped
    by the ``dp`` node's wrapper when one is selected."""
    node = {k: v for k, v in run_cfg["strategy"].items() if k != CLIENT_KEY}
    strategy = build(node, "strategy")
    dp = run_cfg.get("dp")
    if not dp:
        return strategy
    dp = dict(dp)
    if dp.get("num_sampled_clients") in (None, "auto"):
        dp["num_sampled_clients"] = num_sampled_train(run_cfg["strategy"], int(run_cfg["num_clients"]))
    try:
        return build(dp, "dp", strategy=strategy)
    except ConfigError as exc:
        if "accounting currently requires" not in str(exc):
            raise
        raise ConfigError(
            "dp.accountant",
            f"{str(exc).removeprefix('dp: ')}; use a FedAvg-aggregating strategy (fedavg, fedprox) "
            "or dp.accountant=null to run without privacy accounting",
            show_value=False,
        ) from None
