"""Engines (conf/engine/): what runs the ServerApp's round loop against the clients.

``simulation`` (default) runs Flower's Ray-backed simulation engine in this process;
each engine is a ``_target_`` built by ``hydra.utils.instantiate`` from ``engine.*``.
An engine has ``preflight(run_cfg)`` (raise a one-line ``ConfigError`` for anything that
cannot run, before round 1) and ``run(server_app, client_app, num_clients, backend)``.
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
