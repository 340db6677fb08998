"""One message through the real ClientApp, in a fresh process (tests/test_partition_cache.py),
as a SuperNode's ``flwr-clientapp`` process handles it.

    python -m tests.client_probe <run config JSON file> <partition id>   # a train message
    python -m tests.client_probe query <partition id>                    # node discovery

Prints one JSON line: a digest of the reply's weights and its metrics (train), and which of
torch and the loader/partitioner libraries the process imported.
"""

from __future__ import annotations

import hashlib
import json
import sys

HEAVY = ("sklearn", "datasets", "flwr_datasets", "pandas", "pyarrow", "scipy", "torch._dynamo")


def _imported() -> list[str]:
    return [m for m in ("torch", *HEAVY) if m in sys.modules]


def main() -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import runner.client_app as client_app

    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1  # what a SuperNode sets
    pid = int(sys.argv[2])
    ctx = Context(run_id=1, node_id=1, node_config={client_app.PARTITION_KEY: pid}, state=RecordDict(), run_config={})
    if sys.argv[1] == "query":
        reply = client_app.app(Message(content=RecordDict(), dst_node_id=1, message_type="query"), ctx)
        info = dict(reply.content["info"])
        print(json.dumps({"partition": info[client_app.PARTITION_KEY], "imported": _imported()}))
        return
    from runner.runtime import build_model

    cfg = json.loads(open(sys.argv[1]).read())
    content = RecordDict(
        {
            "arrays": ArrayRecord(build_model(cfg).state_dict()),
            "config": ConfigRecord({"server-round": 1, client_app.RUN_CONFIG_KEY: json.dumps(cfg)}),
        }
    )
    msg = Message(content=content, dst_node_id=1, message_type="train")
    reply = client_app.app(msg, ctx)
    assert not reply.has_error(), reply.error
    h = hashlib.sha256()
    for name, array in reply.content["arrays"].items():
        h.update(name.encode())
        h.update(array.numpy().tobytes())
    print(json.dumps({"weights": h.hexdigest(), "metrics": dict(reply.content["metrics"]), "imported": _imported()}))


if __name__ == "__main__":
    main()
