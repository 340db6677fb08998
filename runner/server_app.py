"""Flower ServerApp with the runner's own round loop.

``Strategy.start()`` always counts from round 1, samples clients with Python's global
``random`` over node ids that are random in every run, and aggregates replies in arrival
order. For exact resume this loop calls the strategy's ``configure_*``/``aggregate_*``
itself, samples over nodes ordered by partition id with ``random`` seeded from
(seed, round, phase), seeds NumPy's global RNG (DP noise) per round, and aggregates
replies in partition-id order. Client state (:mod:`runner.client_state`) rides along with
each sampled client's messages.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from runner.client_app import PARTITION_KEY, RUN_CONFIG_KEY
from runner.client_state import CLIENT_STATE_KEY, ClientStateStore, from_record, to_record
from runner.data import publish_partitions, server_test_split
from runner.heterogeneity import dropped as is_dropped
from runner.heterogeneity import straggler_limits
from runner.records import arrays_of, config_of
from runner.report.comm import client_spread, total_bytes
from runner.report.timing import RunClock
from runner.runtime import build_model, build_task, derive_seed, pick_device
from runner.stateful import StateAudit
from runner.tasks import EvalContext

log = logging.getLogger("runner")

PHASES = ("train", "evaluate", "centralized", "privacy")
BOOKKEEPING = ("num_replies", "num_failures")


@dataclass
class LoopState:
    """What the loop carries from round to round (and what a resume restores)."""

    arrays: ArrayRecord
    start_round: int = 1  # first round to train
    eval_pending_round: int | None = None  # fit-phase checkpoint: evaluate this round first
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds_done: int = 0
    stopped_early: bool = False
    warnings: list[str] = field(default_factory=list)
    # Failure bookkeeping (summary.json["failures"]): a round whose training replies give no
    # aggregate is a failed round; more than ``tolerate_failed_rounds`` of them end the run.
    failed_rounds: list[int] = field(default_factory=list)
    client_failures: int = 0
    first_error: str | None = None
    failed: str | None = None  # why the loop ended the run as failed


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
    """Callbacks into the run (checkpointing, metrics, progress, trackers), kept out of the loop."""

    on_row: Callable[[dict[str, Any]], None]
    after_fit: Callable[[int, ArrayRecord, LoopState], None]
    after_evaluate: Callable[[int, ArrayRecord, LoopState], None]
    on_round_end: Callable[[int, LoopState], None]
    on_clients: Callable[[int, str, dict[int, dict[str, float]]], None] = lambda rnd, phase, per_client: None


def discover_partitions(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Map node id -> partition id by asking every node once (ids are random per run)."""
    deadline = time.monotonic() + timeout
    while len(node_ids := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(node_ids)} of {num_clients} nodes came up in {timeout}s")
        time.sleep(0.05)
    messages = [Message(RecordDict(), dst_node_id=node_id, message_type=MessageType.QUERY) for node_id in node_ids]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to start: {reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(str(config_of(reply.content, "info")[PARTITION_KEY]))
    if len(mapping) != num_clients:
        raise RuntimeError(f"only {len(mapping)} of {num_clients} nodes answered in {timeout}s")
    pids = sorted(mapping.values())
    if pids != list(range(num_clients)):  # a misconfigured federation: two nodes with one partition
        raise RuntimeError(f"nodes report partition ids {pids}; expected each of 0..{num_clients - 1} exactly once")
    return mapping


def _cast_like(arrays: ArrayRecord, dtypes: dict[str, str]) -> ArrayRecord:
    """Weighted averaging turns int buffers (BatchNorm counters) into floats: cast back."""
    if all(arrays[k].dtype == dtypes[k] for k in arrays.keys()):
        return arrays
    return ArrayRecord({k: Array(np.asarray(v.numpy(), dtype=dtypes[k])) for k, v in arrays.items()})


def _client_reason(reason: str) -> str:
    """The client's own error from Flower's wrapped reason
    (``... Exception ClientAppException occurred. Message: <the error>'>``)."""
    last = (reason.strip().splitlines() or ["(no reason given)"])[-1]
    if "Message: " in last:
        last = last.split("Message: ", 1)[1].removesuffix(">").removesuffix("'")
    return last.strip() or "(no reason given)"


def _dp_layers(strategy: Any) -> list[Any]:
    out, obj = [], strategy
    while obj is not None:
        if type(obj).__name__.startswith("DifferentialPrivacy"):
            out.append(obj)
        obj = getattr(obj, "strategy", None)
    return out


class RoundLoop:
    def __init__(
        self,
        run_cfg: dict[str, Any],
        strategy: Any,
        hooks: ServerHooks,
        state: LoopState,
        clients: ClientStateStore | None = None,
        audit: StateAudit | None = None,
    ) -> None:
        self.cfg = run_cfg
        self.strategy = strategy
        self.hooks = hooks
        self.state = state
        self.clients = clients if clients is not None else ClientStateStore()  # empty: no algorithm keeps state
        self.audit = audit
        self.seed = int(run_cfg["seed"])
        self.num_rounds = int(run_cfg["num_rounds"])
        self.timeout = float(run_cfg["round_timeout"])
        self.dtypes = {k: v.dtype for k, v in state.arrays.items()}
        self.model = build_model(run_cfg)
        self.task = build_task(run_cfg)
        self.device = pick_device(run_cfg["device"])
        self.test = server_test_split(run_cfg)
        self.dp = _dp_layers(strategy)
        # The client needs the resolved run config; a compact JSON string travels in
        # every message instead of a pickled closure. Its data_cache node names where this
        # process published every client's rows (runner.partition_cache).
        sent = {**run_cfg, "data_cache": publish_partitions(run_cfg)}
        self.config_json = json.dumps(sent, sort_keys=True, separators=(",", ":"))
        self.node_to_pid: dict[int, int] = {}
        self.last_errors: list[str] = []  # the last request's client errors, in partition order
        self.clock = RunClock(state.history)  # elapsed_s continues across resume
        self.startup_s: float | None = None  # from here until every client answered
        self.last_bytes = (0, 0)  # (down, up) of the last _ask

    # -- helpers -------------------------------------------------------------------------
    def _config(self) -> ConfigRecord:
        return ConfigRecord({RUN_CONFIG_KEY: self.config_json})

    def _with_client_state(self, messages: Iterable[Message]) -> list[Message]:
        """Give each sampled client its own state (a new content per message: strategies
        share one RecordDict between all messages of a round)."""
        out = []
        for msg in messages:
            state = self.clients.get(self.node_to_pid.get(msg.metadata.dst_node_id, -1))
            if state is None:
                out.append(msg)
                continue
            content = RecordDict({**dict(msg.content), CLIENT_STATE_KEY: to_record(state)})
            out.append(
                Message(content=content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type)
            )
        return out

    def _ask(
        self, grid: OrderedGrid, messages: Iterable[Message], rnd: int = 0, phase: str = ""
    ) -> tuple[list[Message], int]:
        """Send, wait, and return (replies in partition order, number of failures). Clients
        dropped this round (``clients.dropout``) are never sent theirs and count as failures."""
        kept: list[Message] = []
        dropped: list[Message] = []
        for msg in messages:
            dst = self.node_to_pid.get(msg.metadata.dst_node_id, -1)
            (dropped if is_dropped(self.cfg, rnd, dst) else kept).append(msg)
        if dropped:
            pids = sorted(self.node_to_pid.get(m.metadata.dst_node_id, -1) for m in dropped)
            log.info(
                "round %d: clients %s do not reply to %s (clients.dropout)", rnd, pids, dropped[0].metadata.message_type
            )
        # said here, done by the clients themselves (client_app): the same draw
        train = [self.node_to_pid.get(m.metadata.dst_node_id, -1) for m in kept if m.metadata.message_type == "train"]
        slow = [dst for dst in sorted(train) if straggler_limits(self.cfg, rnd, dst) != (None, None)]
        if slow:
            log.info("round %d: clients %s are stragglers (clients.straggler_fraction)", rnd, slow)
        sent = self._with_client_state(kept)
        self.last_errors = []
        if not sent:
            self.last_bytes = (0, 0)
            if dropped:
                self.last_errors.append("dropped (clients.dropout)")
            self._note_failures(rnd, phase, len(dropped), len(dropped))
            return [], len(dropped)
        replies = list(grid.send_and_receive(sent, timeout=self.timeout))
        # payload of every record sent and returned (before client state leaves the replies),
        # the run-config string aside (runner.report.comm says why)
        self.last_bytes = (total_bytes(sent, skip=(RUN_CONFIG_KEY,)), total_bytes(replies))
        replies.sort(key=lambda m: self.node_to_pid.get(m.metadata.src_node_id, -1))
        failures = len(sent) + len(dropped) - sum(1 for m in replies if not m.has_error())
        for m in replies:
            if m.has_error():
                pid = self.node_to_pid.get(m.metadata.src_node_id)
                reason = _client_reason(m.error.reason)
                self.last_errors.append(reason)
                log.warning("client %s failed: %s", pid, reason)
            elif CLIENT_STATE_KEY in m.content:
                self.clients.put(
                    self.node_to_pid[m.metadata.src_node_id], from_record(arrays_of(m.content, CLIENT_STATE_KEY))
                )
                del m.content[CLIENT_STATE_KEY]  # the strategy aggregates exactly one ArrayRecord
        if len(replies) < len(sent):
            log.warning("%d of %d clients did not reply within %ss", len(sent) - len(replies), len(sent), self.timeout)
            self.last_errors.append(f"no reply within round_timeout={self.timeout}s")
        if dropped:
            self.last_errors.append("dropped (clients.dropout)")
        self._note_failures(rnd, phase, failures, len(sent) + len(dropped))
        return replies, failures

    def _note_failures(self, rnd: int, phase: str, failures: int, sent: int) -> None:
        """Client failures reach the summary: a count, and one warning per round with the first error."""
        if not failures:
            return
        st = self.state
        st.client_failures += failures
        first = self.last_errors[0] if self.last_errors else "unknown error"
        st.first_error = st.first_error or first
        text = f"round {rnd}: {failures} of {sent} clients failed in {phase or 'a request'} (first error: {first})"
        if text not in st.warnings:
            st.warnings.append(text)

    def _row(self, rnd: int, phase: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
        row = {"round": rnd, "phase": phase, **metrics, **extra, "elapsed_s": self.clock.elapsed()}
        self.state.history.append(row)
        self.hooks.on_row(row)
        return row

    def _client_row(
        self, rnd: int, phase: str, prefix: str, metrics: Any, replies: list[Message], failures: int
    ) -> None:
        """A row from the strategy's aggregated client metrics (``<prefix>_<name>``)."""
        values = {k[len(prefix) + 1 :]: float(v) for k, v in dict(metrics or {}).items() if k.startswith(prefix + "_")}
        if not values:
            values = {"loss": math.nan}
        per_client = {}
        for r in replies:
            if r.has_error():
                continue
            for record in r.content.metric_records.values():
                per_client[self.node_to_pid.get(r.metadata.src_node_id, -1)] = {
                    k[len(prefix) + 1 :]: float(v)
                    for k, v in record.items()
                    if k.startswith(prefix + "_") and isinstance(v, (int, float))
                }
        self._row(
            rnd,
            phase,
            values,
            num_replies=len(replies) - sum(1 for r in replies if r.has_error()),
            num_failures=failures,
            **client_spread(per_client),  # <metric>_client_{min,p10,p50,p90,max,std}
            bytes_down=self.last_bytes[0],
            bytes_up=self.last_bytes[1],
        )
        if per_client:
            self.hooks.on_clients(rnd, phase, per_client)

    def _privacy_row(self, rnd: int) -> None:
        if not self.dp:
            return
        outer = self.dp[0]
        values: dict[str, Any] = {
            "noise_multiplier": float(outer.noise_multiplier),
            "clipping_norm": float(outer.clipping_norm),
        }
        spent = outer.privacy_spent() if hasattr(outer, "privacy_spent") else None
        if spent is not None:
            values.update(epsilon=float(spent.epsilon), delta=float(spent.delta), num_releases=int(spent.num_releases))
        self._row(rnd, "privacy", values)

    def centralized(self, rnd: int, arrays: ArrayRecord) -> None:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        self.model.to(self.device)
        metrics = self.task.evaluate(self.model, self.test, EvalContext(device=self.device))
        self._row(rnd, "centralized", {k: float(v) for k, v in metrics.items()})

    # -- one round ---------------------------------------------------------------------
    def fit(self, grid: OrderedGrid, rnd: int) -> None:
        random.seed(derive_seed(self.seed, rnd, "sample-train"))
        np.random.seed(derive_seed(self.seed, rnd, "server-noise") % 2**32)  # DP noise, clip quantiles
        messages = list(self.strategy.configure_train(rnd, self.state.arrays, self._config(), grid))
        replies, failures = self._ask(grid, messages, rnd, "training")
        errors = list(self.last_errors)
        new_arrays, metrics = self.strategy.aggregate_train(rnd, replies)
        if new_arrays is not None:
            self.state.arrays = _cast_like(new_arrays, self.dtypes)
        else:
            self._failed_round(rnd, len(messages), failures, errors)
        self._client_row(rnd, "train", "train", metrics, replies, failures)
        self._privacy_row(rnd)
        self.hooks.after_fit(rnd, self.state.arrays, self.state)

    def _failed_round(self, rnd: int, sampled: int, failures: int, errors: list[str]) -> None:
        """No training reply could be aggregated: the model did not move this round."""
        from runner.config import ClientSettingError

        st = self.state
        st.failed_rounds.append(rnd)
        first = errors[0] if errors else "no client reply could be aggregated"
        log.warning(
            "round %d FAILED: no aggregate (%d of %d sampled clients failed; first error: %s); "
            "keeping the previous model",
            rnd,
            failures,
            sampled,
            first,
        )
        # Every sampled client failing in the run's first round with one and the same error is
        # a setting (a task that lacks a hook, a wrong path), not bad luck: stop now.
        if rnd == st.start_round and errors and failures == sampled and len(set(errors)) == 1:
            raise ClientSettingError(f"every sampled client failed in round {rnd} with: {errors[0]}")
        tolerate = int(self.cfg.get("tolerate_failed_rounds") or 0)
        if len(st.failed_rounds) > tolerate:
            st.failed = (
                f"{len(st.failed_rounds)} failed round(s) ({', '.join(map(str, st.failed_rounds))}), more than "
                f"tolerate_failed_rounds={tolerate}; first error: {st.first_error or first}"
            )

    def evaluate(self, grid: OrderedGrid, rnd: int) -> None:
        random.seed(derive_seed(self.seed, rnd, "sample-evaluate"))
        messages = self.strategy.configure_evaluate(rnd, self.state.arrays, self._config(), grid)
        replies, failures = self._ask(grid, messages, rnd, "evaluation")
        if replies or failures:
            metrics = self.strategy.aggregate_evaluate(rnd, replies)
            self._client_row(rnd, "evaluate", "eval", metrics, replies, failures)
        self.centralized(rnd, self.state.arrays)
        self.hooks.after_evaluate(rnd, self.state.arrays, self.state)

    def _end_round(self, rnd: int, first: bool) -> None:
        st = self.state
        st.rounds_done = rnd
        if first and self.audit is not None:
            missed = self.audit.uncovered()
            if missed:
                text = (
                    "resume will not be exact: "
                    + ", ".join(missed)
                    + " changed during the round but no state_dict() covers it"
                )
                log.warning("%s", text)
                st.warnings.append(text)
        self.hooks.on_round_end(rnd, st)

    def run(self, grid: Grid) -> LoopState:
        self.node_to_pid = discover_partitions(grid, int(self.cfg["num_clients"]), self.timeout)
        self.startup_s = time.monotonic() - self.clock.t0
        self.clock.restart()  # the clients are up: elapsed_s leaves the engine's start-up out
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
            self._end_round(rnd, first=False)
            if stop_after is not None and rnd >= stop_after:
                st.stopped_early = rnd < self.num_rounds
                return st
        for rnd in range(st.start_round, self.num_rounds + 1):
            first = rnd == st.start_round
            if first and self.audit is not None:
                self.audit.snapshot()
            self.fit(view, rnd)
            self.evaluate(view, rnd)
            self._end_round(rnd, first)
            if st.failed is not None:
                log.error("stopping after round %d: %s", rnd, st.failed)
                break
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
