"""The simulation engine in this process, with a tiny ServerApp/ClientApp of this module.

One local Ray instance serves the module's fast-path cases (``backend.reuse_workers``);
the Flower-paths and engine-failure cases start and end their own. ~30-60 s in all on 2
cores, most of it Ray and actor start-up.

- fast paths on: every piece is installed and the replies are right;
- a piece whose internal changed shape (broken here with monkeypatch): exactly one log line
  names it and why, Flower's own code runs for it, and the replies are the same;
- ``fast_paths=False``: none of Flower's internals is replaced during the run;
- the engine stops with an error while the ServerApp waits for replies (Flower's
  "ActorPool is empty", forced here): the run ends at once with ``EngineError`` naming it,
  instead of waiting for the ServerApp's timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from runner.engine import simulation
from runner.engine.guard import EngineError

pytestmark = pytest.mark.slow

NUM_CLIENTS = 4
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}, "reuse_workers": True}

client = ClientApp()


@client.query()
def query(msg: Message, context: Context) -> Message:
    pid = int(context.node_config["partition-id"])
    x = int(msg.content["x"]["v"])
    return Message(RecordDict({"y": ConfigRecord({"pid": pid, "twice": 2 * x})}), reply_to=msg)


def server_app(result: dict[str, Any], rounds: int = 3, timeout: float = 120) -> ServerApp:
    """Sends every node a number per round; records the answers and what ran the engine."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.server.superlink.fleet.vce.backend import raybackend

        result["backend"] = raybackend.RayBackend.__name__
        result["pump"] = vce_api.add_messages_to_queue.__module__
        result["worker"] = vce_api.worker.__module__
        result["injector"] = vce_api.put_message_into_state.__module__
        result["grid"] = type(grid).__name__
        result["thread"] = threading.current_thread()
        deadline = time.monotonic() + timeout
        while len(nodes := sorted(grid.get_node_ids())) < NUM_CLIENTS:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        answers = []
        for rnd in range(rounds):
            msgs = [
                Message(
                    RecordDict({"x": ConfigRecord({"v": 10 * rnd + i})}), dst_node_id=n, message_type=MessageType.QUERY
                )
                for i, n in enumerate(nodes)
            ]
            t = time.monotonic()
            replies = grid.send_and_receive(msgs, timeout=timeout)
            result.setdefault("round_s", []).append(time.monotonic() - t)
            answers.append(sorted((int(r.content["y"]["pid"]), int(r.content["y"]["twice"])) for r in replies))
        result["answers"] = answers

    return app


def expected(rounds: int = 3) -> list[list[tuple[int, int]]]:
    # node order is random per run but the multiset of (pid, 2x) pairs is not: x = 10*rnd + i
    # where i is the node's index among sorted node ids, so compare the sorted twice-values
    return [sorted(2 * (10 * rnd + i) for i in range(NUM_CLIENTS)) for rnd in range(rounds)]


def twice_values(answers: list[list[tuple[int, int]]]) -> list[list[int]]:
    return [sorted(t for _, t in a) for a in answers]


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    yield
    simulation.shutdown()


def test_fast_paths_all_on():
    result: dict[str, Any] = {}
    simulation.SimulationEngine(fast_paths=True).run(server_app(result), client, NUM_CLIENTS, BACKEND)
    assert twice_values(result["answers"]) == expected()
    assert sorted(pid for pid, _ in result["answers"][0]) == list(range(NUM_CLIENTS))
    assert result["pump"] == result["worker"] == result["injector"] == "runner.engine.fastpaths"
    assert result["grid"] == "GuardedGrid"
    assert result["backend"] == "ReusableRayBackend"  # reused, pipelined actors
    # a warm round trip of 4 messages takes milliseconds, not Flower's 0.1 s polls
    assert min(result["round_s"]) < 0.1, result["round_s"]


def test_a_changed_internal_falls_back_with_one_line(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    from flwr.server.superlink.fleet.vce import vce_api

    original = vce_api.add_messages_to_queue
    calls: list[int] = []

    def add_messages_to_queue(link_state, queue, node_map, stop):  # a future Flower's names
        calls.append(1)
        original(link_state, queue, node_map, stop)

    monkeypatch.setattr(vce_api, "add_messages_to_queue", add_messages_to_queue)
    result: dict[str, Any] = {}
    with caplog.at_level(logging.WARNING, logger="runner"):
        simulation.SimulationEngine(fast_paths=True).run(server_app(result), client, NUM_CLIENTS, BACKEND)
    lines = [r.getMessage() for r in caplog.records if r.name == "runner" and "fast path" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "'one-pass-pump' off" in lines[0] and "add_messages_to_queue takes (link_state" in lines[0]
    assert calls == [1], "Flower's own pump (here: the changed one) ran"
    assert result["pump"] == __name__  # not replaced
    assert result["worker"] == "runner.engine.fastpaths"  # the other pieces still in use
    assert twice_values(result["answers"]) == expected()


def test_flower_paths_only():
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    result: dict[str, Any] = {}
    backend_class = raybackend.RayBackend
    simulation.SimulationEngine(fast_paths=False).run(server_app(result), client, NUM_CLIENTS, BACKEND)
    assert twice_values(result["answers"]) == expected()
    assert result["pump"] == result["worker"] == result["injector"] == vce_api.__name__
    assert raybackend.RayBackend is backend_class and result["backend"] == "RayBackend"
    import ray

    assert not ray.is_initialized(), "Flower's own backend ends its Ray after the run"


def test_engine_failure_ends_the_server_app_at_once(monkeypatch: pytest.MonkeyPatch):
    from flwr.simulation.ray_transport import ray_actor

    def no_room(client_resources: dict) -> int:
        raise ValueError("ActorPool is empty. Stopping Simulation. Check `num_cpus` and/or `num_gpus`")

    monkeypatch.setattr(ray_actor, "pool_size_from_resources", no_room)
    result: dict[str, Any] = {}
    t = time.monotonic()
    with pytest.raises(EngineError, match="the simulation engine stopped: ValueError: ActorPool is empty"):
        simulation.SimulationEngine(fast_paths=True).run(
            server_app(result, timeout=600), client, NUM_CLIENTS, {**BACKEND, "reuse_workers": False}
        )
    assert time.monotonic() - t < 60, "the ServerApp waited for its 600 s timeout"
    server_thread = result.get("thread")
    assert server_thread is not None
    server_thread.join(timeout=10)
    assert not server_thread.is_alive(), "the ServerApp's thread still waits for replies"
