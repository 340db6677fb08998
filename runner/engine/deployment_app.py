"""The ServerApp of ``engine=deployment``: the runner's round loop in Flower's ServerApp process.

``python -m runner engine=deployment`` (runner/engine/deployment.py) submits the runner as a
Flower App with ``flwr run``; the SuperLink's SuperExec then starts ``flwr-serverapp``, which
loads ``app`` below from the unpacked FAB. Everything the driver resolved arrives in
``context.run_config`` (declared in ``[tool.flwr.app.config]`` of pyproject.toml):

- ``runner-config``: the resolved run config as JSON (no Hydra, no interpolation here);
- ``output-dir``: the driver's Hydra run dir (absolute): checkpoints, metrics, plots,
  summary.json and runner.log are written there, as in simulation;
- ``launch-dir``: where the user started ``python -m runner`` (absolute): ``resume=latest``
  searches ``resume_roots`` under it, and the process changes into it (when it exists on
  this machine) so relative paths in the config mean what they meant on the driver;
- ``job-name``/``job-group``: the job's name and sweep group, for trackers.

Then :func:`runner.run.serve` runs the same preparation, checkpoints, resume and round loop
as the simulation. Hydra is not in this process: logging to ``runner.log`` (append, like the
driver's own handler) and to stderr (which ``flwr log`` streams back to the driver) is set up
here. The process records itself in ``<output-dir>/serverapp.json`` (pid, host, run id) so
the driver can tell when it died without waiting for Flower's heartbeat timeout.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger("runner")

RUN_CONFIG = "runner-config"
OUTPUT_DIR = "output-dir"
LAUNCH_DIR = "launch-dir"
JOB_NAME = "job-name"
JOB_GROUP = "job-group"
PROCESS_FILE = "serverapp.json"
LOG_NAME = "runner.log"
PULL_INTERVAL_S = 0.1  # CheckedGrid: seconds between two pulls for replies (Flower's HttpGrid: 3 s)

FILE_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as conf/hydra/job_logging/runner.yaml
CONSOLE_FORMAT = "[%(asctime)s][%(levelname)s] %(message)s"

app = ServerApp()


def _setup_logging(output_dir: Path) -> None:
    """runner.log in the run dir (everything, Flower's INFO too) and the runner's own lines
    on stderr, which ``flwr log --stream`` carries to the driver's console."""
    from flwr.supercore import logger as flwr_logger

    output_dir.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(output_dir / LOG_NAME, mode="a")
    file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(CONSOLE_FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in (file_handler, console):
        root.addHandler(handler)
    # Flower's logger: INFO to the file, its own console handler (warnings, tame_flower_logging)
    # for the console, as conf/hydra/job_logging/runner.yaml does in the driver.
    flower = flwr_logger.FLOWER_LOGGER
    flower.addHandler(file_handler)
    flower.propagate = False
    for name in ("httpx", "httpcore", "alembic"):  # one line per HTTP call to the SuperLink
        logging.getLogger(name).setLevel(logging.WARNING)


def _str(run_config: Any, key: str) -> str:
    return str(run_config.get(key, "") or "")


class EarlyDiscovery:
    """Node discovery's QUERY messages, pushed as soon as the ServerApp starts.

    Discovery (runner.server_app.discover_partitions: one QUERY message to every node, the
    reply holds its ``partition-id``) is the first thing the round loop sends, but only
    after the ServerApp imported torch, the model and the data code, loaded the data and
    ran the initial centralized evaluation (seconds); each SuperNode then takes up to 3 s
    to pull a message (Flower 1.42's SuperNode sleeps 3 s when a pull finds none) and
    starts a ClientApp process for it. Pushed here first, the same queries are answered
    meanwhile; :class:`CheckedGrid` hands their replies to discovery's ``send_and_receive``
    when it queries exactly the nodes queried here (else its own queries go out as usual).
    The replies (node -> partition id) do not depend on when they were asked for.
    """

    def __init__(self, nodes: set[int], message_ids: list[str]) -> None:
        self.nodes = nodes
        self.message_ids = message_ids

    @classmethod
    def push(cls, grid: Grid, num_clients: int) -> EarlyDiscovery | None:
        """Queries to every node online now, when they are enough for the run (else None)."""
        from flwr.app import MessageType, RecordDict

        try:
            nodes = set(grid.get_node_ids())
            if len(nodes) < num_clients:
                return None
            messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in sorted(nodes)]
            return cls(nodes, list(grid.push_messages(messages)))
        except Exception as exc:  # noqa: BLE001 - an optimisation only: discovery then asks itself
            log.debug("early node discovery skipped: %s", exc)
            return None

    def answers(self, messages: list[Message]) -> bool:
        """True when ``messages`` are QUERY messages to exactly the nodes queried here."""
        return (
            bool(messages)
            and all(m.metadata.message_type == "query" and len(m.content) == 0 for m in messages)
            and len(messages) == len(self.nodes)
            and {m.metadata.dst_node_id for m in messages} == self.nodes
        )


class CheckedGrid:
    """The grid with one extra check: each SuperNode's ``partition-id`` (``--node-config``)
    must be unique and below ``num_clients``; two nodes holding one partition would
    otherwise train the same data twice without a word.

    ``send_and_receive`` keeps Flower's contract (push, then pull until every message has
    a reply or ``timeout`` passed; replies in the order they were pulled) but pulls every
    ``PULL_INTERVAL_S``, as the simulation's grid does: Flower 1.42's ``HttpGrid`` sleeps
    3 s between pulls, so every message phase (node discovery, train, evaluate) ended on
    a 3-s step after its push, 1.5 s late on average. The round loop sorts the replies by
    partition id, so the pull cadence cannot change a result."""

    def __init__(
        self,
        grid: Grid,
        num_clients: int,
        pull_interval: float = PULL_INTERVAL_S,
        early: EarlyDiscovery | None = None,
    ) -> None:
        self._grid = grid
        self._num_clients = num_clients
        self._pull_interval = pull_interval
        self._early = early

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        if isinstance(self._grid, Grid):
            replies = self._push_and_pull(messages, timeout)
        else:  # not one of Flower's grids: its own send_and_receive
            replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if messages and all(m.metadata.message_type == "query" for m in messages):
            self._check_partitions(replies)
        return replies

    def _push_and_pull(self, messages: list[Message], timeout: float | None) -> list[Message]:
        early, self._early = self._early, None  # node discovery happens once per run
        if early is not None and early.answers(messages):
            pending = set(early.message_ids)  # the same queries, already on their way
        else:
            pending = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.time() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending -= {m.metadata.reply_to_message_id for m in got}
            if not pending or (end is not None and time.time() >= end):
                break
            time.sleep(self._pull_interval if end is None else max(0.0, min(self._pull_interval, end - time.time())))
        return replies

    def _check_partitions(self, replies: list[Message]) -> None:
        from runner.client_app import PARTITION_KEY
        from runner.records import config_of

        seen: dict[int, int] = {}
        for reply in replies:
            if reply.has_error() or "info" not in reply.content:
                continue
            pid = int(str(config_of(reply.content, "info")[PARTITION_KEY]))
            node = reply.metadata.src_node_id
            if not 0 <= pid < self._num_clients:
                raise RuntimeError(
                    f"SuperNode {node} holds partition-id {pid}, outside 0..{self._num_clients - 1} "
                    f"(num_clients={self._num_clients}): check its --node-config"
                )
            if pid in seen:
                raise RuntimeError(
                    f"SuperNodes {seen[pid]} and {node} both hold partition-id {pid}: "
                    "give each SuperNode its own --node-config 'partition-id=i num-partitions=N'"
                )
            seen[pid] = node

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    text = _str(rc, RUN_CONFIG)
    if not _str(rc, OUTPUT_DIR) or text in ("", "{}"):
        raise RuntimeError(
            "this Flower App is started by `python -m runner engine=deployment engine.superlink=HOST:PORT`, "
            "which fills in its run config; `flwr run` by hand has no experiment to run"
        )
    run_cfg = json.loads(text)
    num_clients = int(run_cfg["num_clients"])
    early = EarlyDiscovery.push(grid, num_clients)  # the nodes start their query processes meanwhile
    output_dir = Path(_str(rc, OUTPUT_DIR))
    launch_dir = Path(_str(rc, LAUNCH_DIR) or output_dir)
    _setup_logging(output_dir)
    from runner.report._atomic import atomic_write_text

    if launch_dir.is_dir():
        os.chdir(launch_dir)  # relative paths of the config (data roots, init_weights) as on the driver
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "run_id": context.run_id,
        "started": time.time(),
        "cwd": os.getcwd(),
    }
    atomic_write_text(output_dir / PROCESS_FILE, json.dumps(record))
    log.info(
        "ServerApp of Flower run %s (pid %d on %s): run dir %s, launch dir %s",
        context.run_id,
        os.getpid(),
        record["host"],
        output_dir,
        launch_dir,
    )
    try:
        from runner.run import JobInfo, serve  # torch, the model, the data: after the queries went out

        job = JobInfo(output_dir, launch_dir, _str(rc, JOB_NAME), _str(rc, JOB_GROUP) or None)
        serve(CheckedGrid(grid, num_clients, early=early), run_cfg, job)
    except BaseException as exc:
        log.error("ServerApp failed: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        raise
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
