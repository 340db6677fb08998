"""Strategies the runner adds to Flower's (conf/strategy/), and how a strategy is built.

``strategy=<name>`` is any ``flwr.serverapp.strategy`` class or a user's class, by
``_target_``. ``dp=<name>`` wraps whichever strategy is selected with one of Flower's
``DifferentialPrivacy*`` wrappers (:func:`build_strategy`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from runner.build import build
from runner.config import ConfigError
from runner.records import arrays_of

__all__ = ["Scaffold", "build_strategy", "num_sampled_train"]

SCAFFOLD_C = "scaffold-c"
SCAFFOLD_DC = "scaffold-dc"


class Scaffold(FedAvg):
    """SCAFFOLD (Karimireddy et al., 2020): FedAvg plus control variates.

    The server variate ``c`` travels to the sampled clients with the train message; each
    client corrects its gradients by ``c - c_i`` and returns the change of its own variate
    ``c_i`` (kept in the client's state, see :mod:`runner.client_state`); the server moves
    ``c`` by ``|S|/N`` times their mean. ``global_lr`` scales the server's model step.
    Not in Flower's strategies; its state (``c``) is checkpointed by ``state_dict``.
    """

    transient_attributes = ("_current_arrays",)  # the global arrays of the round in progress

    def __init__(self, *args: Any, global_lr: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.global_lr = float(global_lr)
        self.c: dict[str, np.ndarray] | None = None
        self.num_nodes = 0
        self._current_arrays: ArrayRecord | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"c": self.c, "num_nodes": self.num_nodes}

    def load_state_dict(self, state: Any) -> None:
        self.c = state["c"]
        self.num_nodes = int(state.get("num_nodes", 0))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.c is None:
            self.c = {k: np.zeros_like(v.numpy()) for k, v in arrays.items()}
        self.num_nodes = len(list(grid.get_node_ids()))
        self._current_arrays = arrays
        c_record = ArrayRecord({k: Array(v) for k, v in self.c.items()})
        out = []
        for msg in super().configure_train(server_round, arrays, config, grid):
            content = RecordDict({**dict(msg.content), SCAFFOLD_C: c_record})
            out.append(
                Message(content=content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type)
            )
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        deltas = []
        for msg in replies:
            if not msg.has_error() and SCAFFOLD_DC in msg.content:
                deltas.append({k: v.numpy() for k, v in arrays_of(msg.content, SCAFFOLD_DC).items()})
                del msg.content[SCAFFOLD_DC]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.global_lr != 1.0 and self._current_arrays is not None:
            current = self._current_arrays
            arrays = ArrayRecord(
                {
                    k: Array(np.asarray(current[k].numpy() + self.global_lr * (v.numpy() - current[k].numpy())))
                    for k, v in arrays.items()
                }
            )
        if deltas and self.c is not None:
            share = len(deltas) / max(self.num_nodes, len(deltas))
            for k in deltas[0]:
                mean = np.mean([d[k] for d in deltas], axis=0)
                self.c[k] = (self.c[k] + share * mean).astype(self.c[k].dtype)
        return arrays, metrics


def num_sampled_train(strategy_cfg: dict[str, Any], num_clients: int) -> int:
    """How many clients Flower's FedAvg-style sampling picks per training round."""
    fraction = float(strategy_cfg.get("fraction_train", 1.0))
    return max(int(num_clients * fraction), int(strategy_cfg.get("min_train_nodes", 2)))


def build_strategy(run_cfg: dict[str, Any]) -> Any:
    """The strategy, wrapped by the ``dp`` node's wrapper when one is selected."""
    strategy = build(run_cfg["strategy"], "strategy")
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
