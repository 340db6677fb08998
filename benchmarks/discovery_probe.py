"""Time the runner's start-up node discovery (one query message per node) at several sizes.

One process, Ray and the actors kept warm between simulations (``backend.reuse_workers``):
a warm-up simulation, then per size a simulation whose ServerApp runs
``runner.server_app.discover_partitions`` twice (the first is what a run pays; the second
shows the steady per-message cost) and one bare ``send_and_receive`` of the same query
messages, without the runner. Prints ``PROBE {json}``.

    python benchmarks/discovery_probe.py [--flower-pump] 10 100 1000

``--flower-pump`` runs Flower's own message path (pump, queue waits, reply polling) while
Ray and the actor pool stay warm.
"""

from __future__ import annotations

import json
import time

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from runner import client_app
from runner.engine import fastpaths
from runner.engine import simulation as engine
from runner.server_app import discover_partitions

BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {}, "reuse_workers": True}


def probe(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        t = time.monotonic()
        while len(list(grid.get_node_ids())) < n:
            time.sleep(0.01)
        out["nodes_up_s"] = time.monotonic() - t
        t = time.monotonic()
        mapping = discover_partitions(grid, n, timeout=3600)
        out["discover_s"] = time.monotonic() - t
        assert sorted(mapping.values()) == list(range(n))
        t = time.monotonic()
        discover_partitions(grid, n, timeout=3600)
        out["discover_again_s"] = time.monotonic() - t
        t = time.monotonic()
        replies = list(
            grid.send_and_receive(
                [Message(RecordDict(), dst_node_id=i, message_type=MessageType.QUERY) for i in grid.get_node_ids()],
                timeout=3600,
            )
        )
        out["flower_send_and_receive_s"] = time.monotonic() - t
        assert len(replies) == n

    t = time.monotonic()
    engine.simulate(app, client_app.app, n, BACKEND)
    out["simulation_s"] = time.monotonic() - t
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[10, 100, 1000])
    ap.add_argument("--flower-pump", action="store_true", help="use Flower's own message pump, not the runner's")
    ap.add_argument("--num-cpus", type=float, default=1.0, help="Ray CPUs per actor")
    a = ap.parse_args()
    sizes = a.sizes
    BACKEND["client_resources"]["num_cpus"] = a.num_cpus
    if a.flower_pump:
        message_path = {"one-pass-pump", "prompt-stop", "reply-events"}
        checked = fastpaths.available
        fastpaths.available = lambda name: name not in message_path and checked(name)
    probe(2)  # warm-up: Ray start, actor pool, client app import in the actors
    result = {str(n): probe(n) for n in sizes}
    print("PROBE " + json.dumps(result), flush=True)
    engine.shutdown()


if __name__ == "__main__":
    main()
