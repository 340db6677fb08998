"""One train message through the real ClientApp, in a fresh process (tests/test_partition_cache.py).

    python -m tests.client_probe <run config JSON file> <partition id>

Prints one JSON line: a digest of the reply's weights, its metrics, and which of the
loader/partitioner libraries the process imported.
"""

from __future__ import annotations

import hashlib
import json
import sys

HEAVY = ("sklearn", "datasets", "flwr_datasets", "pandas", "pyarrow", "scipy")


def main() -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import runner.client_app as client_app
    from runner.runtime import build_model

    cfg = json.loads(open(sys.argv[1]).read())
    pid = int(sys.argv[2])
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1  # what a SuperNode sets
    content = RecordDict(
        {
            "arrays": ArrayRecord(build_model(cfg).state_dict()),
            "config": ConfigRecord({"server-round": 1, client_app.RUN_CONFIG_KEY: json.dumps(cfg)}),
        }
    )
    msg = Message(content=content, dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={client_app.PARTITION_KEY: pid}, state=RecordDict(), run_config={})
    reply = client_app.app(msg, ctx)
    assert not reply.has_error(), reply.error
    h = hashlib.sha256()
    for name, array in reply.content["arrays"].items():
        h.update(name.encode())
        h.update(array.numpy().tobytes())
    heavy = [m for m in HEAVY if m in sys.modules]
    print(json.dumps({"weights": h.hexdigest(), "metrics": dict(reply.content["metrics"]), "heavy": heavy}))


if __name__ == "__main__":
    main()
