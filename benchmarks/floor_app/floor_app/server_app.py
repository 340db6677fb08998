"""The floor's ServerApp: Flower's FedAvg over every node, one train and one evaluate
message to each per round (the runner's deployment round), over arrays of the runner's MLP
shapes. One time-stamped line per finished round on stderr (``flwr log`` streams it to the
submitter) and, when ``stamp-file`` is set, JSON lines there: ``{"round", "t"}`` per finished
round (time.time(); round 0 = just before round 1 starts) and ``{"phase", "round", "start",
"end"}`` per message phase (train, evaluate: send to every node until the last reply)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


PULL_INTERVAL_S = 0.1  # as the runner's deployment ServerApp (runner/engine/deployment_app.py)


class _StampedGrid:
    """The grid, recording when each send_and_receive (one message phase) starts and ends.
    It pulls for replies every ``PULL_INTERVAL_S`` as the runner's ServerApp does (Flower
    1.42's HttpGrid sleeps 3 s between pulls): the floor must not wait longer than the
    runner for the same replies."""

    def __init__(self, grid: Grid, write: Callable[[dict[str, Any]], None]) -> None:
        self._grid = grid
        self._write = write
        self._round = 1

    def _send_and_receive(self, messages: list[Message], timeout: float | None) -> list[Message]:
        pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.time() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (end is not None and time.time() >= end):
                break
            time.sleep(PULL_INTERVAL_S)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        start = time.time()
        replies = self._send_and_receive(messages, timeout)
        kind = messages[0].metadata.message_type if messages else ""
        self._write({"phase": kind, "round": self._round, "start": start, "end": time.time()})
        if kind == "evaluate":
            self._round += 1
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def initial_arrays(layer_sizes: str) -> ArrayRecord:
    sizes = [int(s) for s in layer_sizes.split(",") if s.strip()]
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        arrays[f"layer{i}.weight"] = rng.standard_normal((n_out, n_in)).astype(np.float32)
        arrays[f"layer{i}.bias"] = np.zeros(n_out, dtype=np.float32)
    return ArrayRecord(numpy_ndarrays=list(arrays.values()), keep_input=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    num_rounds = int(rc.get("num-server-rounds", 2))
    stamp_file = str(rc.get("stamp-file", "") or "")

    def write(record: dict[str, Any]) -> None:
        if stamp_file:
            with open(stamp_file, "a") as f:
                f.write(json.dumps(record) + "\n")

    def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        t = time.time()
        write({"round": server_round, "t": t})
        if server_round:
            stamp_text = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
            print(f"[{stamp_text}] floor: round {server_round}/{num_rounds} done", file=sys.stderr, flush=True)
        return None

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
    strategy.start(
        grid=_StampedGrid(grid, write),  # type: ignore[arg-type]
        initial_arrays=initial_arrays(str(rc.get("layer-sizes", "64,128,10"))),
        num_rounds=num_rounds,
        train_config=ConfigRecord({"lr": 0.1}),
        evaluate_fn=stamp,  # called before round 1 and after each round
    )
