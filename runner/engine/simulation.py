"""The one place that starts Flower's simulation engine.

``flwr.simulation.run_simulation`` is the in-process Python entry; it is deprecated
upstream in favour of ``flwr run``, so nothing else in the runner calls it.

What the runner adds around it (runner/engine/):

- ``preflight`` (resources.py): settings that cannot host one client are a one-line
  ``ConfigError`` before anything starts, instead of Flower's "ActorPool is empty" and a
  round loop that waits for clients that never come.
- The ServerApp gets a guarded grid (guard.py): if the engine stops with an error, the
  round loop ends with that error at once; the run never waits for ``round_timeout``.
- A watchdog (reaper.py) ends this run's local Ray processes once the driver is gone, also
  after a SIGKILL or an OOM kill.
- Speed-ups of Flower internals (fastpaths.py), each checked against the installed
  Flower's shapes at start and replaced by Flower's own code, with one log line, when a
  shape differs; ``fast_paths: false`` (``engine.fast_paths=false``) runs Flower's own
  code for all of them. Results never depend on them (replies are ordered by partition
  id, training is seeded per round and partition):

  * ``backend.reuse_workers``: Ray and the warm actor pool stay alive between the
    simulations of one process (a sweep, a test session). Actors hold no run state.
  * A local Ray instance is started by the runner, with Flower's arguments but without its
    ``runtime_env`` (Ray never hands an actor with a runtime env to the workers it
    prestarted; it starts and sets up new ones: ~2 s per run on 2 cores) and without the
    autoscaler monitor. With worker reuse it starts in ``preflight``, on a thread of its
    own, while the driver loads data and builds the model; the actor pool is built and
    each actor imports the ClientApp's modules (``warmup_imports``) meanwhile.
  * Messages move on events, not timers: the grid wakes the message pump when it pushes,
    the pump delivers in one pass over the stored messages (Flower: one pass per node,
    every 0.1 s), and the grid pulls a reply as soon as the engine stored it (Flower:
    every ``pull_interval``, 0.1 s). The engine's threads see the stop event within 50 ms
    (Flower: 1 s).
"""

from __future__ import annotations

import atexit
import gc
import json
import logging
import os
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from runner.engine import fastpaths as fp
from runner.engine import reaper
from runner.engine.guard import EngineError, RunSignals, describe, guarded_server_app

log = logging.getLogger("runner")

DEFAULT_WARMUP_IMPORTS = (
    "runner.client_app",
    "runner.runtime",
    "runner.tasks",
    "runner.algorithms.compose",
    "runner.lean_torch",  # not torch._dynamo: client processes never import it (runner.lean_torch)
)
SERVER_GRACE_S = 30.0  # after an engine failure: how long the ServerApp may take to notice


# -- the Ray instance this process started -------------------------------------------------------
class _Ray:
    """What this process started: Ray's init key, the start-up thread, the prestarted pool."""

    init_key: str | None = None
    starter: _Starter | None = None
    atexit_registered = False
    stopping: threading.Thread | None = None  # stop_in_background's thread


def _flower_backend_config(backend: dict[str, Any]) -> dict[str, Any]:
    """The backend config as ``run_simulation`` hands it to the RayBackend."""
    from flwr.supercore.constant import DEFAULT_SIMULATION_CONFIG

    init_args = dict(backend.get("init_args") or {})
    init_args.setdefault("logging_level", DEFAULT_SIMULATION_CONFIG.init_args_logging_level)
    init_args.setdefault("log_to_driver", DEFAULT_SIMULATION_CONFIG.init_args_log_to_driver)
    return {
        "client_resources": dict(backend["client_resources"]),
        "init_args": init_args,
        "actor": {"tensorflow": 0},
    }


def _is_local(init_args: dict[str, Any]) -> bool:
    return not init_args.get("address") and "runtime_env" not in init_args


def _init_key(init_args: dict[str, Any]) -> str:
    return json.dumps(init_args, sort_keys=True, default=str)


def _start_local_ray(init_args: dict[str, Any]) -> None:
    """Start a local Ray instance as Flower's RayBackend would, minus runtime_env and monitor.

    The driver's ``sys.path`` reaches the workers through ``PYTHONPATH`` in the environment
    raylet inherits (Flower puts it there too, and in a runtime_env on top). Callers have
    run :func:`_quiet_ray` on the driver's thread.
    """
    import ray
    import ray._private.node as ray_node
    import ray._private.parameter as ray_parameter

    if ray.is_initialized():
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
    original, api_server = ray_parameter.RayParams, ray_node.Node.start_api_server
    ray_parameter.RayParams = fp.lean_ray_params(original, bool(args["log_to_driver"]))  # type: ignore[misc, assignment]
    if not args["include_dashboard"]:
        ray_node.Node.start_api_server = fp.no_api_server  # type: ignore[method-assign]
    try:
        with reaper.TaggedEnv(reaper.watchdog_token()):
            ray.init(**args)
    finally:
        ray_parameter.RayParams = original  # type: ignore[misc]
        ray_node.Node.start_api_server = api_server  # type: ignore[method-assign]


def _quiet_ray() -> None:
    """Ray's notices off the console, by filters installed for good (on the driver's thread,
    before Ray starts) rather than inside ``warnings.catch_warnings``: that context manager is
    not thread-safe, and Ray starts on a thread of its own while the driver's thread uses it
    (partitioning, checkpoint loading). Interleaved, the two threads can leave *another*
    thread's filters installed at exit (seen: "always", which put ResourceWarnings on the
    console of a failing run). Idempotent: filterwarnings drops an equal entry before
    inserting it again."""
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    # Ray's notice about a future default for GPU env vars; num_gpus=0 actors rely on
    # today's behaviour (GPUs hidden), so the notice is only noise.
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray")


def _warm(actor: Any, modules: list[str]) -> int:
    """Runs inside an actor (``__ray_call__``): import what the ClientApp will need."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S110 - best effort: the first message imports it anyway
            pass
    return os.getpid()


class _Starter(threading.Thread):
    """Starts Ray (and optionally the actor pool) while the driver prepares the run.

    The thread lives as long as the Ray instance: Ray ties its head processes to the
    *thread* that started them (the kernel's parent-death signal), so it must not end
    before ``ray.shutdown()``.
    """

    def __init__(self, backend: dict[str, Any], warmup_imports: list[str]) -> None:
        super().__init__(name="runner-ray-start", daemon=True)
        self.backend = backend
        self.backend_config: dict[str, Any] = {}
        self.warmup_imports = warmup_imports
        self.ray_ready = threading.Event()
        self.pool_ready = threading.Event()
        self.error: BaseException | None = None
        self.release = threading.Event()
        self.cancel = threading.Event()  # the run ended early: skip or cut the warm-up short

    def run(self) -> None:
        try:
            self.backend_config = _flower_backend_config(self.backend)
            _start_local_ray(self.backend_config["init_args"])
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that needs Ray
            self.error = exc
            return
        finally:
            self.ray_ready.set()
        try:
            self._build_pool()
        except Exception as exc:  # noqa: BLE001 - the run builds its pool itself then
            log.debug("engine: prestarting the actor pool failed: %s", exc)
        finally:
            self.pool_ready.set()
        self.release.wait()

    def _build_pool(self) -> None:
        import ray

        with fp._pool_lock:
            if self.cancel.is_set() or fp.cached_pool(self.backend_config["client_resources"]) is not None:
                return
            backend = fp.reusable_backend_class()(self.backend_config)
            backend.build(None)
            pool = backend.pool
        if self.warmup_imports and pool is not None:
            pending = [a.__ray_call__.remote(_warm, list(self.warmup_imports)) for a in list(pool.pool)]
            deadline = time.monotonic() + 300
            # In short waits: a driver that exits early (a setting error found while Ray
            # started) must not find this thread inside a Ray call at interpreter teardown.
            while pending and not self.cancel.is_set() and time.monotonic() < deadline:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)

    def wait_ray(self) -> None:
        self.ray_ready.wait()
        if self.error is not None:
            raise self.error


def _drop_starter() -> None:
    starter = _Ray.starter
    _Ray.starter = None
    if starter is not None:
        starter.ray_ready.wait(timeout=120)
        starter.release.set()
        starter.join(timeout=10)  # ended before the interpreter tears down what it uses


def shutdown() -> None:
    """Stop kept actors and Ray (at exit, or before Ray must restart with other args)."""
    starter = _Ray.starter
    if starter is not None:
        starter.cancel.set()
        starter.ray_ready.wait(timeout=120)  # never shut down under a running ray.init
        starter.pool_ready.wait(timeout=60)  # nor under the pool's start (its waits are short)
    fp.forget_pools()  # ray.shutdown() ends the actors; no per-actor goodbye on the console
    _Ray.init_key = None
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001, S110 - interpreter shutting down: nothing to report
        pass
    _drop_starter()


def stop_in_background() -> None:
    """This process runs no more simulations (a single run, not a sweep): Ray and its
    actors stop on a thread while the driver writes its last files (checkpoint, summary,
    plots), instead of after them at exit. The exit waits for it."""
    if _Ray.stopping is None:
        _Ray.stopping = threading.Thread(target=shutdown, name="runner-ray-stop", daemon=True)
        _Ray.stopping.start()


def _at_exit() -> None:
    if _Ray.stopping is not None:
        _Ray.stopping.join(timeout=120)
    shutdown()
    reaper.release_watchdog()  # Ray is down: nothing left for it to end
    # What remains is the interpreter's own teardown; its last garbage collections walk
    # every object torch, flwr, ray and datasets created (~1.3 s on 2 cores). Nothing in
    # the runner relies on a finalizer of an unreachable cycle at exit: freeze them.
    gc.freeze()


def _register_atexit() -> None:
    if not _Ray.atexit_registered:
        _Ray.atexit_registered = True
        atexit.register(_at_exit)


class _NotMainThreadNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _sigterm_like_ray() -> None:
    """What ``ray.init`` does on the main thread, for a Ray started on another thread:
    SIGTERM becomes ``SystemExit`` so ``finally`` blocks and ``ray.shutdown`` run."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def sigterm_handler(signum: int, frame: Any) -> None:
            sys.exit(signum)

        signal.signal(signal.SIGTERM, sigterm_handler)
    ray_worker_log = logging.getLogger("ray._private.worker")
    if not any(isinstance(f, _NotMainThreadNotice) for f in ray_worker_log.filters):
        ray_worker_log.addFilter(_NotMainThreadNotice())


def prestart(backend: dict[str, Any], warmup_imports: list[str]) -> bool:
    """Start local Ray and the actor pool on a thread, if the fast paths allow it.

    Ray's start and the actors' warm-up then overlap with what the driver does next (data,
    model, resume point, config tree).
    """
    init_args = dict(backend.get("init_args") or {})
    if not _is_local(init_args) or not bool(backend.get("reuse_workers", True)):
        return False
    # The checks import what ray.init needs anyway; on this thread they start Ray sooner
    # than on the starter thread, where they would compete with the driver's imports.
    if not (fp.available("local-ray-start") and fp.available("reusable-actor-pool")):
        return False
    key = _init_key(init_args)
    ray_mod = sys.modules.get("ray")
    up = ray_mod is not None and ray_mod.is_initialized()
    if _Ray.init_key is not None and _Ray.init_key != key:
        shutdown()
        up = False
    if up or _Ray.starter is not None:
        return False  # already up (a previous job of this process) or starting
    _register_atexit()
    _sigterm_like_ray()
    _quiet_ray()  # on this thread, before the starter's
    _Ray.init_key = key
    _Ray.starter = _Starter(backend, list(warmup_imports))
    _Ray.starter.start()
    return True


# -- console noise of an engine crash ---------------------------------------------------------------
class _EngineCrashFilter(logging.Filter):
    """Keeps Flower's crash tracebacks (engine and runner re-raise) off the console; the log
    file still has them. The runner reports the crash itself, in one line."""

    FUNCS: ClassVar[set[str]] = {"run_api", "_main_loop", "start_vce", "pool_size_from_resources"}

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.funcName in self.FUNCS and record.levelno >= logging.WARNING)


@contextmanager
def _engine_console_filter() -> Iterator[None]:
    try:
        from flwr.supercore import logger as flwr_logger

        handler: logging.Handler | None = flwr_logger.console_handler
    except Exception:  # noqa: BLE001 - no such handler: nothing to filter
        handler = None
    flt = _EngineCrashFilter()
    if handler is not None:
        handler.addFilter(flt)
    try:
        yield
    finally:
        if handler is not None:
            handler.removeFilter(flt)


# -- one simulation ---------------------------------------------------------------------------------
def simulate(
    server_app: ServerApp,
    client_app: ClientApp,
    num_clients: int,
    backend: dict[str, Any],
    fast_paths: bool = True,
) -> None:
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": dict(backend["client_resources"]),
        "init_args": dict(backend.get("init_args") or {}),
    }
    init_args = backend_config["init_args"]
    local = _is_local(init_args)
    import ray

    starter = _Ray.starter
    if starter is not None:  # preflight started Ray: wait until it is up, whatever follows
        try:
            starter.wait_ray()
        except BaseException:  # noqa: BLE001 - whatever failed, the run starts Ray itself
            shutdown()  # start again below, on this thread, and fail here if it fails again
    use = (
        {name: fast_paths and fp.available(name) for name in fp.PIECES}
        if fast_paths
        else dict.fromkeys(fp.PIECES, False)
    )
    reuse = bool(backend.get("reuse_workers", True)) and use["reusable-actor-pool"]
    own_start = local and use["local-ray-start"]

    if reuse:
        key = _init_key(init_args)
        if _Ray.init_key is not None and _Ray.init_key != key:
            shutdown()  # Ray must restart with the new init_args
        _Ray.init_key = key
        _register_atexit()
    elif _Ray.starter is not None or ray.is_initialized():
        shutdown()  # Flower's own backend starts (and ends) its own Ray

    originals: dict[str, Any] = {
        "RayBackend": raybackend.RayBackend,
        "add_messages_to_queue": vce_api.add_messages_to_queue,
        "worker": vce_api.worker,
        "put_message_into_state": vce_api.put_message_into_state,
    }
    wake = fp.PumpWake() if use["one-pass-pump"] else None
    signals = RunSignals(reply_events=use["reply-events"], pump_wake=wake)
    app = guarded_server_app(server_app, signals)
    try:
        if reuse:
            raybackend.RayBackend = fp.reusable_backend_class(use["pipelined-actors"])  # type: ignore[misc, assignment]
        if use["one-pass-pump"]:
            vce_api.add_messages_to_queue = fp.one_pass_pump(originals["add_messages_to_queue"], wake)
        if use["prompt-stop"]:
            vce_api.worker = fp.prompt_worker(originals["worker"])
        if use["prompt-stop"] or use["reply-events"]:
            vce_api.put_message_into_state = fp.reply_injector(
                originals["put_message_into_state"],
                prompt=use["prompt-stop"],
                on_stored=signals.reply_stored if use["reply-events"] else None,
            )
        _quiet_ray()
        with _engine_console_filter():
            if own_start and not ray.is_initialized():
                _start_local_ray(init_args)
            tag = local and not ray.is_initialized()  # Flower starts a local Ray: tag it too
            with reaper.TaggedEnv(reaper.watchdog_token()) if tag else _nothing():
                run_simulation(
                    server_app=app,
                    client_app=client_app,
                    num_supernodes=num_clients,
                    backend_config=backend_config,
                )
    except BaseException as exc:
        own_error = exc is signals.server_error  # the round loop's, re-raised by Flower
        if not own_error:
            # The engine stopped (or the driver is interrupted) while the ServerApp may still
            # wait for replies: its grid raises from now on, so its thread ends too.
            signals.engine_failed(exc)
        if reuse:
            shutdown()  # never carry a half-broken pool into the next run
        if own_error or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if signals.server_started.is_set():
            signals.server_done.wait(SERVER_GRACE_S)
        log.debug("engine failure", exc_info=exc)
        raise EngineError(f"the simulation engine stopped: {describe(exc)}") from exc
    finally:
        raybackend.RayBackend = originals["RayBackend"]  # type: ignore[misc]
        vce_api.add_messages_to_queue = originals["add_messages_to_queue"]
        vce_api.worker = originals["worker"]
        vce_api.put_message_into_state = originals["put_message_into_state"]


@contextmanager
def _nothing() -> Iterator[None]:
    yield


class SimulationEngine:
    """Flower's simulation engine (``run_simulation``, Ray backend), in this process.

    ``fast_paths``: the runner's speed-ups of Flower internals (module docstring); false
    runs Flower's own code paths only (slower, same results).
    ``warmup_imports``: modules each client actor imports while the driver prepares the run
    (with ``backend.reuse_workers``; best effort).
    """

    def __init__(self, fast_paths: bool = True, warmup_imports: list[str] | tuple[str, ...] | None = None) -> None:
        self.fast_paths = bool(fast_paths)
        self.warmup_imports = list(DEFAULT_WARMUP_IMPORTS if warmup_imports is None else warmup_imports)
        self.last_run = False  # set by the runner for a single run: Ray stops as soon as the rounds end

    def preflight(self, run_cfg: dict[str, Any]) -> None:
        """Refuse settings that cannot host one client; then start Ray in the background."""
        from runner.engine.resources import check_resources

        check_resources(run_cfg, connect=self._connect)
        if self.fast_paths:
            prestart(run_cfg["backend"], self.warmup_imports)

    def _connect(self, init_args: dict[str, Any]) -> None:
        """Join the cluster at ``init_args.address`` as the simulation would (for its resources)."""
        connect_to_cluster(init_args)

    def run(self, server_app: ServerApp, client_app: ClientApp, num_clients: int, backend: dict[str, Any]) -> None:
        try:
            simulate(server_app, client_app, num_clients, backend, fast_paths=self.fast_paths)
        finally:
            if self.last_run:
                stop_in_background()


def connect_to_cluster(init_args: dict[str, Any]) -> None:
    """``ray.init`` for a cluster address with exactly Flower's arguments (its runtime_env
    carries the driver's ``sys.path`` to the cluster's workers), so the simulation that
    follows finds Ray initialized as Flower would have left it."""
    import ray

    if ray.is_initialized():
        return
    try:
        init_ray = fp.require_callable(f"{fp.RAYBACKEND}:RayBackend.init_ray", ["self", "backend_config"])
        fp.require_names(f"{fp.RAYBACKEND}:RayBackend.init_ray", ["init_args_key", "is_initialized"], "uses")
    except fp.ShapeError as exc:
        log.warning("engine: not checking the cluster's resources before the run (%s)", exc)
        return

    class _Args:
        init_args_key = "init_args"

    config = _flower_backend_config({"client_resources": {}, "init_args": init_args})
    _quiet_ray()
    init_ray(_Args(), config)
    _Ray.init_key = _init_key(dict(init_args))
    _register_atexit()
