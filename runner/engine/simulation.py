"""The one place that starts Flower's simulation engine.

``flwr.simulation.run_simulation`` is the in-process Python entry; it is deprecated
upstream in favour of ``flwr run``, so nothing else in the runner calls it.

Flower's Ray backend starts Ray and a fresh pool of actors for every simulation and shuts
Ray down afterwards: several seconds per run, which dominates small jobs in a sweep (or a
test suite) that runs simulations one after another in one process. With
``backend.reuse_workers`` the runner keeps Ray and the warm actor pool alive between
simulations of the same process; actors hold no run state (every message carries the
run config, and client training is seeded per round and partition).

For a local Ray instance the runner starts Ray itself, with the same arguments as Flower's
backend but without its ``runtime_env``: Flower passes the driver's ``sys.path`` as a
``runtime_env`` env var, and Ray never hands an actor to the workers it prestarts at
``ray.init`` when the actor has a runtime env; it starts (and sets up) new worker processes
instead. On a 2-core machine that is ~2 s more start-up per simulation. The same
``PYTHONPATH`` set in the driver's environment reaches every worker of a local instance.

Flower's message pump (``vce_api.add_messages_to_queue``) asks the link state, every 0.1 s
and once per node, for that node's next message; each ask scans every stored message. With
N nodes and M messages in flight a sweep costs N x M checks under the state's lock and the
driver's GIL: at 1000 nodes, three quarters of the driver's time. The runner swaps in a
pump that makes the same deliveries (per sweep, per node, the first undelivered message in
store order, marked delivered and queued in node order) in one pass over the stored
messages. Which actor runs which message, and when, was never fixed; results do not depend
on it (replies are ordered by partition id, training is seeded per round and partition).

Flower's worker and reply threads wait on their queues with ``get(timeout=1.0)`` and only
then look at the stop event, so every simulation ends up to a second after its last
round (``run_api`` joins them). The runner hands those threads a view of the same queues
whose waits are at most 50 ms: the engine stops within 50 ms, nothing else changes.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
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


def _one_pass_pump(original: Callable[..., None]) -> Callable[..., None]:
    """``add_messages_to_queue`` with one scan of the stored messages per sweep.

    Falls back to Flower's own pump for a link state without the in-memory store it reads.
    """

    def add_messages_to_queue(state: Any, queue: Any, nodes_mapping: dict[int, int], f_stop: Any) -> None:
        store = getattr(state, "message_ins_store", None)
        if not isinstance(store, dict) or not hasattr(state, "lock") or not hasattr(state, "_check_stored_messages"):
            original(state, queue, nodes_mapping, f_stop)
            return
        from flwr.supercore.date import now

        order = {node_id: i for i, node_id in enumerate(nodes_mapping)}
        while not f_stop.is_set():
            picked: dict[int, Any] = {}
            with state.lock:
                ids = list(store)
                state._check_stored_messages(set(ids))  # drops expired/invalid ones, as each ask did
                for msg_id in ids:
                    msg = store.get(msg_id)
                    if msg is None:
                        continue
                    meta = msg.metadata
                    dst = meta.dst_node_id
                    if dst in order and dst not in picked and meta.delivered_at == "":
                        picked[dst] = msg
                if picked:
                    delivered_at = now().isoformat()
                    for msg in picked.values():
                        msg.metadata.delivered_at = delivered_at
            for dst in sorted(picked, key=order.__getitem__):
                queue.put(picked[dst])
            f_stop.wait(0.1)

    return add_messages_to_queue


_STOP_POLL_S = 0.05


class _PromptQueue:
    """A view of a ``queue.Queue`` whose timed ``get`` waits at most ``_STOP_POLL_S``.

    The threads that read it loop on ``Empty`` and check their stop event in between.
    """

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, _STOP_POLL_S)
        return self._queue.get(block, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def _prompt_worker(original: Callable[..., None]) -> Callable[..., None]:
    def worker(messageins_queue: Any, *args: Any, **kwargs: Any) -> None:
        original(_PromptQueue(messageins_queue), *args, **kwargs)

    return worker


def _prompt_injector(original: Callable[..., None]) -> Callable[..., None]:
    def put_message_into_state(state: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        original(state, _PromptQueue(queue), *args, **kwargs)

    return put_message_into_state


def _drop_pools() -> None:
    for pool in _pool_cache.values():
        pool.terminate_all_actors()
    _pool_cache.clear()


def shutdown() -> None:
    """Stop kept actors and Ray (at exit, or before Ray must restart with other args)."""
    _pool_cache.clear()  # ray.shutdown() ends the actors; no per-actor goodbye on the console
    _ray_init_key.clear()
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # interpreter shutting down: nothing useful to report
        pass


def _init_local_ray(init_args: dict[str, Any]) -> None:
    """Start a local Ray instance as Flower's RayBackend would, minus the runtime_env.

    Joining a cluster (``address``) or a user ``runtime_env`` is left to Flower unchanged:
    there the driver's environment does not reach the workers.
    """
    import ray

    if ray.is_initialized() or init_args.get("address") or "runtime_env" in init_args:
        return
    from flwr.supercore.constant import DEFAULT_SIMULATION_CONFIG

    args: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": DEFAULT_SIMULATION_CONFIG.init_args_logging_level,
        "log_to_driver": DEFAULT_SIMULATION_CONFIG.init_args_log_to_driver,
        **init_args,
    }
    pythonpath = os.pathsep.join(sys.path)
    if os.environ.get("PYTHONPATH"):
        pythonpath = f"{pythonpath}{os.pathsep}{os.environ['PYTHONPATH']}"
    os.environ["PYTHONPATH"] = pythonpath  # inherited by raylet, hence by every worker
    ray.init(**args)


def simulate(server_app: ServerApp, client_app: ClientApp, num_clients: int, backend: dict[str, Any]) -> None:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": dict(backend["client_resources"]),
        "init_args": dict(backend.get("init_args") or {}),
    }
    reuse = bool(backend.get("reuse_workers", True))
    original = raybackend.RayBackend
    original_pump = vce_api.add_messages_to_queue
    original_worker, original_injector = vce_api.worker, vce_api.put_message_into_state
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
        vce_api.add_messages_to_queue = _one_pass_pump(original_pump)
        vce_api.worker = _prompt_worker(original_worker)
        vce_api.put_message_into_state = _prompt_injector(original_injector)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # Ray's notice about a future default for GPU env vars; our num_gpus=0 actors
            # rely on today's behaviour (GPUs hidden), so the notice is only noise.
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")
            _init_local_ray(backend_config["init_args"])
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
        vce_api.add_messages_to_queue = original_pump
        vce_api.worker, vce_api.put_message_into_state = original_worker, original_injector


class SimulationEngine:
    """Flower's simulation engine (``run_simulation``, Ray backend), in this process.

    ``fast_paths``: the runner's speed-ups of Flower internals (module docstring); false
    runs Flower's own code paths only (slower, same results).
    """

    def __init__(self, fast_paths: bool = True) -> None:
        self.fast_paths = bool(fast_paths)

    def preflight(self, run_cfg: dict[str, Any]) -> None:
        """Refuse settings that cannot host one client (before anything starts)."""

    def run(self, server_app: ServerApp, client_app: ClientApp, num_clients: int, backend: dict[str, Any]) -> None:
        simulate(server_app, client_app, num_clients, backend)
