"""Flower ServerApp with the runner's own round loop.

``Strategy.start()`` always counts from round 1, samples clients with Python's global
``random`` over node ids that are random in every run, and aggregates replies in arrival
order. For exact resume this loop calls the strategy's ``configure_*``/``aggregate_*``
itself, samples over nodes ordered by partition id with ``random`` seeded from
(seed, round, phase), and aggregates replies in partition-id order.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from runner import task
from runner.client_app import PARTITION_KEY, RUN_CONFIG_KEY
from runner.dataset import server_test_split

log = logging.getLogger("runner")

PHASES = ("train", "evaluate", "centralized")


@dataclass
class LoopState:
    """What the loop carries from round to round (and what a resume restores)."""

    arrays: ArrayRecord
    start_round: int = 1  # first round to train
    eval_pending_round: int | None = None  # fit-phase checkpoint: evaluate this round first
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds_done: int = 0
    stopped_early: bool = False


class OrderedGrid:
    """The strategy's view of the grid: node ids ordered by partition id.

    Strategies only list nodes through ``get_node_ids``; with a stable order and a seeded
    ``random``, ``random.sample`` picks the same partitions in every run.
    """

    def __init__(self, grid: Grid, ordered_node_ids: list[int]) -> None:
        self._grid = grid
        self._ordered = ordered_node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._ordered)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@dataclass
class ServerHooks:
    """Callbacks into the run (checkpointing, metrics, progress), kept out of the loop."""

    on_row: Callable[[dict[str, Any]], None]
    after_fit: Callable[[int, ArrayRecord, LoopState], None]
    after_evaluate: Callable[[int, ArrayRecord, LoopState], None]
    on_round_end: Callable[[int, LoopState], None]


def discover_partitions(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Map node id -> partition id by asking every node once (ids are random per run)."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {num_clients} nodes came up in {timeout}s")
        time.sleep(0.05)
    messages = [
        Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY)
        for node_id in node_ids
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to start: {reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(reply.content["info"][PARTITION_KEY])
    if len(mapping) != num_clients:
        raise RuntimeError(f"only {len(mapping)} of {num_clients} nodes answered in {timeout}s")
    return mapping


def _cast_like(arrays: ArrayRecord, dtypes: dict[str, str]) -> ArrayRecord:
    """Weighted averaging turns int buffers (BatchNorm counters) into floats: cast back."""
    if all(arrays[k].dtype == dtypes[k] for k in arrays.keys()):
        return arrays
    return ArrayRecord(
        {k: Array(np.asarray(v.numpy(), dtype=dtypes[k])) for k, v in arrays.items()}
    )


class RoundLoop:
    def __init__(
        self,
        run_cfg: dict[str, Any],
        strategy: Any,
        hooks: ServerHooks,
        state: LoopState,
    ) -> None:
        self.cfg = run_cfg
        self.strategy = strategy
        self.hooks = hooks
        self.state = state
        self.seed = int(run_cfg["seed"])
        self.num_rounds = int(run_cfg["num_rounds"])
        self.timeout = float(run_cfg["round_timeout"])
        self.dtypes = {k: v.dtype for k, v in state.arrays.items()}
        self.model = task.build_model(run_cfg)
        self.device = task.pick_device(run_cfg["device"])
        self.test_data, self.test_idx = server_test_split(run_cfg)
        # The client needs the resolved run config; a compact JSON string travels in
        # every message instead of a pickled closure.
        self.config_json = json.dumps(run_cfg, sort_keys=True, separators=(",", ":"))
        self.t0 = time.monotonic()

    # -- helpers -------------------------------------------------------------------------
    def _config(self) -> ConfigRecord:
        return ConfigRecord({RUN_CONFIG_KEY: self.config_json})

    def _ask(self, grid: OrderedGrid, messages: Iterable[Message]) -> tuple[list[Message], int]:
        """Send, wait, and return (replies in partition order, number of failures)."""
        sent = list(messages)
        if not sent:
            return [], 0
        replies = list(grid.send_and_receive(sent, timeout=self.timeout))
        replies.sort(key=lambda m: self.node_to_pid.get(m.metadata.src_node_id, -1))
        failures = len(sent) - sum(1 for m in replies if not m.has_error())
        for m in replies:
            if m.has_error():
                pid = self.node_to_pid.get(m.metadata.src_node_id)
                log.warning("client %s failed: %s", pid, m.error.reason.strip().splitlines()[-1])
        if len(replies) < len(sent):
            log.warning("%d of %d clients did not reply within %ss", len(sent) - len(replies), len(sent), self.timeout)
        return replies, failures

    def _row(self, rnd: int, phase: str, metrics: dict[str, float], **extra: Any) -> dict[str, Any]:
        row = {"round": rnd, "phase": phase, **metrics, **extra, "elapsed_s": round(time.monotonic() - self.t0, 4)}
        self.state.history.append(row)
        self.hooks.on_row(row)
        return row

    def _client_row(
        self, rnd: int, phase: str, prefix: str, metrics: Any, replies: list[Message], failures: int
    ) -> None:
        """A row from the strategy's aggregated client metrics (``<prefix>_loss`` etc.)."""
        m = dict(metrics or {})
        self._row(
            rnd,
            phase,
            {"loss": m.get(f"{prefix}_loss", math.nan), "accuracy": m.get(f"{prefix}_accuracy", math.nan)},
            num_replies=len(replies) - sum(1 for r in replies if r.has_error()),
            num_failures=failures,
        )

    def centralized(self, rnd: int, arrays: ArrayRecord) -> None:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(
            self.model, self.test_data, self.test_idx, int(self.cfg["eval"]["batch_size"]), self.device
        )
        self._row(rnd, "centralized", {"loss": loss, "accuracy": acc})

    # -- one round ---------------------------------------------------------------------
    def fit(self, grid: OrderedGrid, rnd: int) -> None:
        random.seed(task.derive_seed(self.seed, rnd, "sample-train"))
        messages = self.strategy.configure_train(rnd, self.state.arrays, self._config(), grid)
        replies, failures = self._ask(grid, messages)
        new_arrays, metrics = self.strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            self.state.arrays = _cast_like(new_arrays, self.dtypes)
        else:
            log.warning("round %d: no aggregate (all clients failed?); keeping the previous model", rnd)
        self._client_row(rnd, "train", "train", metrics, replies, failures)
        self.hooks.after_fit(rnd, self.state.arrays, self.state)

    def evaluate(self, grid: OrderedGrid, rnd: int) -> None:
        random.seed(task.derive_seed(self.seed, rnd, "sample-evaluate"))
        messages = self.strategy.configure_evaluate(rnd, self.state.arrays, self._config(), grid)
        replies, failures = self._ask(grid, messages)
        if replies or failures:
            metrics = self.strategy.aggregate_evaluate(rnd, replies)
            self._client_row(rnd, "evaluate", "eval", metrics, replies, failures)
        self.centralized(rnd, self.state.arrays)
        self.hooks.after_evaluate(rnd, self.state.arrays, self.state)

    def run(self, grid: Grid) -> LoopState:
        self.node_to_pid = discover_partitions(grid, int(self.cfg["num_clients"]), self.timeout)
        ordered = sorted(self.node_to_pid, key=self.node_to_pid.__getitem__)
        view = OrderedGrid(grid, ordered)
        stop_after = self.cfg.get("stop_after_round")
        st = self.state
        if st.start_round == 1 and st.eval_pending_round is None and not st.history:
            self.centralized(0, st.arrays)
        if st.eval_pending_round is not None:
            rnd = st.eval_pending_round
            log.info("round %d: running the evaluation the checkpoint preceded", rnd)
            self.evaluate(view, rnd)
            st.rounds_done = rnd
            self.hooks.on_round_end(rnd, st)
            if stop_after is not None and rnd >= stop_after:
                st.stopped_early = rnd < self.num_rounds
                return st
        for rnd in range(st.start_round, self.num_rounds + 1):
            self.fit(view, rnd)
            self.evaluate(view, rnd)
            st.rounds_done = rnd
            self.hooks.on_round_end(rnd, st)
            if stop_after is not None and rnd >= stop_after and rnd < self.num_rounds:
                log.warning("stopping after round %d (stop_after_round)", rnd)
                st.stopped_early = True
                break
        return st


def make_server_app(loop: RoundLoop, result: dict[str, Any]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        result["state"] = loop.run(grid)

    return app

