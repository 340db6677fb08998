"""The one place that starts Flower's simulation engine.

``flwr.simulation.run_simulation`` is the in-process Python entry; it is deprecated
upstream in favour of ``flwr run``, so nothing else in the runner calls it.
"""

from __future__ import annotations

import warnings
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp


def simulate(server_app: ServerApp, client_app: ClientApp, num_clients: int, backend: dict[str, Any]) -> None:
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": dict(backend["client_resources"]),
        "init_args": dict(backend.get("init_args") or {}),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_clients,
            backend_config=backend_config,
        )
