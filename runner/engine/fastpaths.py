"""The runner's speed-ups of Flower (and Ray) internals, each guarded by a shape check.

Flower's simulation engine is not a public API: its module functions, classes and the
attributes they read change between releases without notice. Every piece below replaces
one internal, and each comes with a check of the shape it relies on (the attribute exists
and is callable, parameter names, the attributes the replacement reads or sets, and that
the Flower code which calls the replaced function still looks it up where the runner puts
it). The checks run once per process, at the first simulation. A piece whose check fails
is not installed: Flower's own code runs for it (slower, same results), and one log line
says which piece and why. ``SimulationEngine(fast_paths=False)`` installs none of them.

Pieces (``PIECES``, by name):

- ``reusable-actor-pool``: a ``RayBackend`` subclass whose actor pool and Ray instance
  outlive one simulation (``backend.reuse_workers``).
- ``pipelined-actors``: in that subclass, each actor gets its next message while it still
  runs the current one (Flower: one message per actor, then a round trip through the
  driver before the next).
- ``local-ray-start``: a local Ray instance started by the runner, without Flower's
  ``runtime_env`` (Ray starts fresh workers for actors with a runtime env instead of using
  the ones it prestarted), without the autoscaler monitor (a one-node instance never
  autoscales) and, unless ``include_dashboard`` is asked for, without the dashboard head
  process (``include_dashboard=False`` alone still starts it); it may start while the
  driver still prepares the run.
- ``one-pass-pump``: ``vce_api.add_messages_to_queue`` with one scan of the stored messages
  per sweep instead of one scan per node, woken when the ServerApp pushes messages instead
  of sweeping every 0.1 s.
- ``prompt-stop``: the engine's worker and reply threads wait on their queues for at most
  50 ms before they look at the stop event (Flower: 1 s).
- ``reply-events``: the reply thread tells the ServerApp's grid which replies it stored, so
  the grid pulls them at once instead of every ``pull_interval`` (0.1 s).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("runner")

STOP_POLL_S = 0.05  # longest wait of an engine thread before it looks at its stop event
PUMP_SWEEP_S = 0.1  # the pump's sweep period when nothing wakes it (Flower's)


# -- shape checks ------------------------------------------------------------------------
class ShapeError(Exception):
    """An internal does not have the shape a fast path relies on (message: what and why)."""


def resolve(path: str) -> Any:
    """``"pkg.module:attr.attr"`` -> the object; ShapeError if any part is missing."""
    import importlib

    mod_name, _, attrs = path.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001 - an import failure is a shape failure here
        raise ShapeError(f"cannot import {mod_name} ({type(exc).__name__}: {exc})") from None
    for part in filter(None, attrs.split(".")):
        if not hasattr(obj, part):
            raise ShapeError(f"{path} is missing ({part!r} not found)")
        obj = getattr(obj, part)
    return obj


def code_names(fn: Any) -> set[str]:
    """Global, attribute and imported names a function's code (and nested code) refers to."""
    fn = inspect.unwrap(fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return set()
    out: set[str] = set()
    stack = [code]
    while stack:
        c = stack.pop()
        out.update(c.co_names)
        stack.extend(k for k in c.co_consts if hasattr(k, "co_names"))
    return out


def require_callable(path: str, params: Iterable[str] | None = None) -> Any:
    """The callable at ``path``; its leading parameter names must be ``params``."""
    obj = resolve(path)
    if not callable(obj):
        raise ShapeError(f"{path} is not callable")
    if params is not None:
        want = list(params)
        try:
            got = list(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            raise ShapeError(f"{path} has no inspectable signature") from None
        if got[: len(want)] != want:
            raise ShapeError(f"{path} takes ({', '.join(got)}), expected ({', '.join(want)}, ...)")
    return obj


def require_names(path: str, names: Iterable[str], what: str = "refers to") -> None:
    """The code of ``path`` must mention every name (attributes it reads/sets, calls)."""
    missing = sorted(set(names) - code_names(resolve(path)))
    if missing:
        raise ShapeError(f"{path} no longer {what} {', '.join(missing)}")


def require_class(path: str) -> type:
    obj = resolve(path)
    if not isinstance(obj, type):
        raise ShapeError(f"{path} is not a class")
    return obj


# -- the pieces ----------------------------------------------------------------------------
VCE = "flwr.server.superlink.fleet.vce.vce_api"
RAYBACKEND = "flwr.server.superlink.fleet.vce.backend.raybackend"
ACTOR = "flwr.simulation.ray_transport.ray_actor"
LINKSTATE = "flwr.server.superlink.linkstate.in_memory_linkstate"


def _check_reusable_actor_pool() -> None:
    require_class(f"{RAYBACKEND}:RayBackend")
    require_callable(f"{RAYBACKEND}:RayBackend.build", ["self", "app_fn"])
    require_callable(f"{RAYBACKEND}:RayBackend.terminate", ["self"])
    require_names(f"{RAYBACKEND}:RayBackend.__init__", ["client_resources", "pool", "app_fn"], "sets")
    require_names(f"{RAYBACKEND}:RayBackend.build", ["BasicActorPool", "pool", "app_fn"], "uses")
    require_class(f"{ACTOR}:BasicActorPool")
    require_names(f"{ACTOR}:BasicActorPool.__init__", ["pool", "num_actors", "client_resources"], "sets")
    require_callable(f"{ACTOR}:BasicActorPool.terminate_all_actors", ["self"])
    # start_vce's backend_fn imports RayBackend from its module when it runs: the
    # subclass is picked up only while that is so.
    require_names(f"{VCE}:start_vce", ["RayBackend"], "looks up")


def _check_pipelined_actors() -> None:
    _check_reusable_actor_pool()  # the subclass that carries it
    require_callable(f"{RAYBACKEND}:RayBackend.process_message", ["self", "message", "context"])
    require_names(f"{RAYBACKEND}:RayBackend.process_message", ["PARTITION_ID_KEY", "app_fn"], "uses")
    resolve(f"{RAYBACKEND}:PARTITION_ID_KEY")
    require_callable(f"{ACTOR}:VirtualClientEngineActor.run", ["self", "client_app_fn", "message", "cid", "context"])
    # run_api starts one worker thread per backend.num_workers, each calling process_message
    require_names(f"{VCE}:run_api", ["num_workers"], "reads")
    require_names(f"{VCE}:worker", ["process_message"], "calls")


def _check_local_ray_start() -> None:
    require_callable(f"{RAYBACKEND}:RayBackend.init_ray", ["self", "backend_config"])
    require_names(f"{RAYBACKEND}:RayBackend.__init__", ["init_ray"], "calls")
    # Flower must leave an already started Ray alone, or it would start a second one.
    require_names(f"{RAYBACKEND}:RayBackend.init_ray", ["is_initialized"], "checks")
    defaults = resolve("flwr.supercore.constant:DEFAULT_SIMULATION_CONFIG")
    for attr in ("init_args_logging_level", "init_args_log_to_driver"):
        if not hasattr(defaults, attr):
            raise ShapeError(f"flwr.supercore.constant:DEFAULT_SIMULATION_CONFIG has no {attr}")
    # Fewer head processes: ray.init builds ray._private.parameter.RayParams, whose
    # no_monitor / include_log_monitor switches it does not expose.
    params = require_callable("ray._private.parameter:RayParams")
    names = set(inspect.signature(params).parameters)
    if not {"no_monitor", "include_log_monitor"} <= names:
        raise ShapeError("ray._private.parameter:RayParams has no no_monitor/include_log_monitor")
    require_names("ray:init", ["RayParams"], "builds")
    # No dashboard head when no dashboard is asked for: Node.start_api_server is skipped
    # (Ray then records no web UI address, as it does when the dashboard fails to start).
    require_callable("ray._private.node:Node.start_api_server", ["self", "include_dashboard", "raise_on_failure"])
    require_names("ray._private.node:Node.start_head_processes", ["start_api_server"], "calls")
    require_names("ray._private.node:Node.start_api_server", ["_webui_url"], "sets")


def _check_one_pass_pump() -> None:
    require_callable(f"{VCE}:add_messages_to_queue", ["state", "queue", "nodes_mapping", "f_stop"])
    require_names(f"{VCE}:run_api", ["add_messages_to_queue"], "starts")
    require_class(f"{LINKSTATE}:InMemoryLinkState")
    require_names(f"{LINKSTATE}:InMemoryLinkState.__init__", ["message_ins_store", "lock"], "sets")
    require_callable(f"{LINKSTATE}:InMemoryLinkState._check_stored_messages", ["self", "message_ids"])
    require_callable(f"{LINKSTATE}:InMemoryLinkState.get_message_ins", ["self", "node_id", "limit"])
    # What Flower's own pump does per node: the replacement does the same in one pass.
    require_names(f"{LINKSTATE}:InMemoryLinkState.get_message_ins", ["_check_stored_messages", "delivered_at"], "uses")
    resolve("flwr.supercore.date:now")


def _check_prompt_stop() -> None:
    require_callable(f"{VCE}:worker", ["messageins_queue", "messageres_queue"])
    require_callable(f"{VCE}:put_message_into_state", ["state", "queue", "f_stop"])
    require_names(f"{VCE}:run_api", ["worker", "put_message_into_state"], "starts")
    require_names(f"{VCE}:worker", ["get"], "calls")
    require_names(f"{VCE}:put_message_into_state", ["get"], "calls")


def _check_reply_events() -> None:
    require_callable(f"{VCE}:put_message_into_state", ["state", "queue", "f_stop"])
    require_names(f"{VCE}:run_api", ["put_message_into_state"], "starts")
    require_names(f"{VCE}:put_message_into_state", ["store_message_res"], "calls")
    require_callable(f"{LINKSTATE}:InMemoryLinkState.store_message_res", ["self", "message"])


@dataclass(frozen=True)
class Piece:
    name: str
    replaces: str
    check: Callable[[], None]


PIECES: dict[str, Piece] = {
    p.name: p
    for p in (
        Piece("reusable-actor-pool", f"{RAYBACKEND}.RayBackend (reused actor pool)", _check_reusable_actor_pool),
        Piece("local-ray-start", f"{RAYBACKEND}.RayBackend.init_ray (local ray.init)", _check_local_ray_start),
        Piece(
            "pipelined-actors",
            f"{RAYBACKEND}.RayBackend.process_message (one message per actor at a time)",
            _check_pipelined_actors,
        ),
        Piece("one-pass-pump", f"{VCE}.add_messages_to_queue", _check_one_pass_pump),
        Piece("prompt-stop", f"{VCE}.worker / put_message_into_state queue waits", _check_prompt_stop),
        Piece("reply-events", f"{VCE}.put_message_into_state (reply notification)", _check_reply_events),
    )
}

_logged: set[str] = set()  # fallback lines already logged by this process
_log_lock = threading.Lock()


def verdict(name: str) -> str | None:
    """None if a piece's internals have the expected shape, else why not.

    Checked at every simulation (a few inspect calls), so a changed internal is seen at once.
    """
    try:
        PIECES[name].check()
        return None
    except ShapeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken check must not break a run
        return f"check failed: {type(exc).__name__}: {exc}"


def available(name: str) -> bool:
    """Whether a piece can be used; if not, one log line (once per process and reason)."""
    why = verdict(name)
    if why is None:
        return True
    line = f"engine: using Flower's own {PIECES[name].replaces} (fast path {name!r} off: {why})"
    with _log_lock:
        if line not in _logged:
            _logged.add(line)
            log.warning("%s", line)
    return False


def verdicts() -> dict[str, str | None]:
    """Every piece's verdict (None: usable)."""
    return {name: verdict(name) for name in PIECES}


# -- replacements ----------------------------------------------------------------------------
_pool_cache: dict[str, Any] = {}  # "resources key" -> BasicActorPool kept between runs
_pool_lock = threading.RLock()


def pool_key(client_resources: dict[str, Any]) -> str:
    return json.dumps(client_resources, sort_keys=True)


def drop_pools() -> None:
    with _pool_lock:
        for pool in _pool_cache.values():
            try:
                pool.terminate_all_actors()
            except Exception:  # noqa: BLE001, S110 - Ray may already be gone
                pass
        _pool_cache.clear()


def forget_pools() -> None:
    """Drop the cache without a goodbye to each actor (``ray.shutdown`` ends them)."""
    with _pool_lock:
        _pool_cache.clear()


def cached_pool(client_resources: dict[str, Any]) -> Any:
    with _pool_lock:
        pool = _pool_cache.get(pool_key(client_resources))
        if pool is not None and len(pool.pool) == pool.num_actors:
            return pool
        return None


def store_pool(client_resources: dict[str, Any], pool: Any) -> None:
    with _pool_lock:
        _pool_cache[pool_key(client_resources)] = pool


PIPELINE_DEPTH = 2  # messages in flight per actor with pipelined-actors


def reusable_backend_class(pipelined: bool = False) -> type:
    """``RayBackend`` whose actors and Ray instance outlive one simulation.

    ``pipelined``: each actor gets its next message while it still runs the current one
    (``PIPELINE_DEPTH`` in flight, the least busy actor first; an actor runs one at a time),
    instead of Flower's one message per actor and a round trip through the driver between
    two messages. Which actor runs which message never mattered: actors hold no run state.
    """
    from flwr.server.superlink.fleet.vce.backend.raybackend import PARTITION_ID_KEY, RayBackend

    class ReusableRayBackend(RayBackend):
        def build(self, app_fn: Any) -> None:
            with _pool_lock:
                pool = cached_pool(self.client_resources)
                if pool is not None:
                    self.pool, self.app_fn = pool, app_fn
                else:
                    drop_pools()
                    super().build(app_fn)
                    store_pool(self.client_resources, self.pool)
            self._busy: dict[int, int] = {}
            self._busy_lock = threading.Lock()

        def terminate(self) -> None:
            pool = self.pool
            busy = any(getattr(self, "_busy", {}).values())
            if pool is None or len(pool.pool) != pool.num_actors or busy:
                drop_pools()  # an actor is still busy (timed-out client): start clean next time

        if pipelined:

            @property
            def num_workers(self) -> int:
                return PIPELINE_DEPTH * self.pool.num_actors if self.pool else 0

            def process_message(self, message: Any, context: Any) -> tuple[Any, Any]:
                import ray

                if self.pool is None or self.app_fn is None:
                    return super().process_message(message, context)  # Flower's own errors
                actors: list[Any] = list(self.pool.pool)
                with self._busy_lock:
                    i = min(range(len(actors)), key=lambda k: self._busy.get(k, 0))
                    self._busy[i] = self._busy.get(i, 0) + 1
                try:
                    cid = str(context.node_config[PARTITION_ID_KEY])
                    _, out, updated = ray.get(actors[i].run.remote(self.app_fn, message, cid, context))
                    return out, updated
                finally:
                    with self._busy_lock:
                        self._busy[i] -= 1

    return ReusableRayBackend


class PumpWake:
    """Wakes the message pump when the ServerApp pushed messages (set by the grid)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.stopping = False  # the ServerApp has ended: the engine is about to stop

    def set(self) -> None:
        self.event.set()

    def stop(self) -> None:
        self.stopping = True
        self.event.set()


def one_pass_pump(original: Callable[..., None], wake: PumpWake | None = None) -> Callable[..., None]:
    """``add_messages_to_queue`` with one scan of the stored messages per sweep.

    Same deliveries as Flower's pump: per sweep and node, the first undelivered message in
    store order, marked delivered and queued in node order. A sweep runs when the grid
    pushed messages (``wake``) or every ``PUMP_SWEEP_S``. Falls back to Flower's own pump
    for a link state without the in-memory store it reads.
    """

    def add_messages_to_queue(state: Any, queue: Any, nodes_mapping: dict[int, int], f_stop: Any) -> None:
        store = getattr(state, "message_ins_store", None)
        if not isinstance(store, dict) or not hasattr(state, "lock") or not hasattr(state, "_check_stored_messages"):
            original(state, queue, nodes_mapping, f_stop)
            return
        from flwr.supercore.date import now

        order = {node_id: i for i, node_id in enumerate(nodes_mapping)}
        event = wake.event if wake is not None else None
        while not f_stop.is_set():
            if event is not None:
                event.clear()  # a push after this point wakes the next wait
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
            if picked and event is not None:
                continue  # a node may hold more messages: deliver them without waiting
            if event is not None:
                assert wake is not None
                event.wait(STOP_POLL_S if wake.stopping else PUMP_SWEEP_S)
            else:
                f_stop.wait(PUMP_SWEEP_S)

    return add_messages_to_queue


class PromptQueue:
    """A view of a ``queue.Queue`` whose timed ``get`` waits at most ``STOP_POLL_S``.

    The threads that read it loop on ``Empty`` and check their stop event in between.
    """

    def __init__(self, queue: Any) -> None:
        self._queue = queue

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block and timeout is not None:
            timeout = min(timeout, STOP_POLL_S)
        return self._queue.get(block, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def prompt_worker(original: Callable[..., None]) -> Callable[..., None]:
    def worker(messageins_queue: Any, *args: Any, **kwargs: Any) -> None:
        original(PromptQueue(messageins_queue), *args, **kwargs)

    return worker


class NotifyingState:
    """A view of the link state whose ``store_message_res`` reports each stored reply."""

    def __init__(self, state: Any, on_stored: Callable[[str], None]) -> None:
        self._state = state
        self._on_stored = on_stored

    def store_message_res(self, message: Any) -> Any:
        stored = self._state.store_message_res(message)
        if stored:
            self._on_stored(message.metadata.reply_to_message_id)
        return stored

    def __getattr__(self, name: str) -> Any:
        return getattr(self._state, name)


def reply_injector(
    original: Callable[..., None], prompt: bool, on_stored: Callable[[str], None] | None
) -> Callable[..., None]:
    def put_message_into_state(state: Any, queue: Any, *args: Any, **kwargs: Any) -> None:
        if on_stored is not None:
            state = NotifyingState(state, on_stored)
        original(state, PromptQueue(queue) if prompt else queue, *args, **kwargs)

    return put_message_into_state


# -- a leaner Ray head -----------------------------------------------------------------------
def no_api_server(self: Any, *, include_dashboard: Any = None, raise_on_failure: Any = None) -> None:
    """``Node.start_api_server`` for a head without dashboard: no process, no web UI URL."""
    self._webui_url = None


def lean_ray_params(original: type, log_to_driver: bool) -> Callable[..., Any]:
    """``RayParams`` for a local one-node instance: no autoscaler monitor; no log monitor
    when worker output is not forwarded to the driver anyway."""

    @functools.wraps(original)  # the shape check (another thread) still sees RayParams' own
    def make(*args: Any, **kwargs: Any) -> Any:
        params = original(*args, **kwargs)
        params.no_monitor = True
        if not log_to_driver:
            params.include_log_monitor = False
        return params

    return make
