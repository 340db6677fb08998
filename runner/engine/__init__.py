"""Engines (conf/engine/): what runs the ServerApp's round loop against the clients.

``simulation`` (default) runs Flower's Ray-backed simulation engine in this process;
``deployment`` submits the run to a SuperLink with ``flwr run``. Each engine is a
``_target_`` built by ``hydra.utils.instantiate`` from ``engine.*`` and has
``preflight(run_cfg)`` (raise a one-line ``ConfigError`` for anything that cannot run,
before round 1) and either ``run(server_app, client_app, num_clients, backend)`` (the round
loop runs in this process) or ``launch(run_cfg, job)`` (it runs in a process the engine
starts, which calls ``runner.run.serve``; returns the best monitored value).
"""

from __future__ import annotations

from typing import Any, Protocol

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from runner.engine.guard import EngineError

__all__ = ["Engine", "EngineError"]


class Engine(Protocol):
    def preflight(self, run_cfg: dict[str, Any]) -> None: ...

    def run(self, server_app: ServerApp, client_app: ClientApp, num_clients: int, backend: dict[str, Any]) -> None: ...
