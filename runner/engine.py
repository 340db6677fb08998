"""The one place that starts Flower's simulation engine.

``flwr.simulation.run_simulation`` is the in-process Python entry; it is deprecated
upstream in favour of ``flwr run``, so nothing else in the runner calls it.

Flower's Ray backend starts Ray and a fresh pool of actors for every simulation and shuts
Ray down afterwards: several seconds per run, which dominates small jobs in a sweep (or a
test suite) that runs simulations one after another in one process. With
``backend.reuse_workers`` the runner keeps Ray and the warm actor pool alive between
simulations of the same process; actors hold no run state (every message carries the
run config, and client training is seeded per round and partition).
"""

from __future__ import annotations

import atexit
import json
import logging
import warnings
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

log = logging.getLogger("runner")

_pool_cache: dict[str, Any] = {}  # "resources key" -> BasicActorPool kept between runs
_ray_init_key: list[str] = []  # init_args of the Ray instance this process started


def _reusable_backend_class() -> type:
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend

    class ReusableRayBackend(RayBackend):  # type: ignore[misc, valid-type]
        """RayBackend whose actors and Ray instance outlive one simulation."""

        def build(self, app_fn: Any) -> None:
            key = json.dumps(self.client_resources, sort_keys=True)
            pool = _pool_cache.get(key)
            if pool is not None and len(pool.pool) == pool.num_actors:
                self.pool, self.app_fn = pool, app_fn
                return
            _drop_pools()
            super().build(app_fn)
            _pool_cache[key] = self.pool

        def terminate(self) -> None:
            pool = self.pool
            if pool is None or len(pool.pool) != pool.num_actors:
                _drop_pools()  # an actor is still busy (timed-out client): start clean next time

    return ReusableRayBackend


def _drop_pools() -> None:
    for pool in _pool_cache.values():
        pool.terminate_all_actors()
    _pool_cache.clear()


def shutdown() -> None:
    """Stop kept actors and Ray (at exit, or before Ray must restart with other args)."""
    _drop_pools()
    _ray_init_key.clear()
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # interpreter shutting down: nothing useful to report
        pass


def simulate(server_app: ServerApp, client_app: ClientApp, num_clients: int, backend: dict[str, Any]) -> None:
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": dict(backend["client_resources"]),
        "init_args": dict(backend.get("init_args") or {}),
    }
    reuse = bool(backend.get("reuse_workers", True))
    original = raybackend.RayBackend
    if reuse:
        init_key = json.dumps(backend_config["init_args"], sort_keys=True)
        if _ray_init_key and _ray_init_key[0] != init_key:
            shutdown()  # Ray must restart with the new init_args
        if not _ray_init_key:
            _ray_init_key.append(init_key)
            atexit.register(shutdown)
        raybackend.RayBackend = _reusable_backend_class()
    else:
        shutdown()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # Ray's notice about a future default for GPU env vars; our num_gpus=0 actors
            # rely on today's behaviour (GPUs hidden), so the notice is only noise.
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=num_clients,
                backend_config=backend_config,
            )
    except BaseException:
        if reuse:
            shutdown()  # never carry a half-broken pool into the next run
        raise
    finally:
        raybackend.RayBackend = original
