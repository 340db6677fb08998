"""The floor's ClientApp: imports torch (as any real ClientApp does) and echoes the arrays."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    import torch  # noqa: F401 - the cost every real ClientApp pays in each message's process

    arrays = msg.content.array_records.get("arrays") or ArrayRecord()
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    import torch  # noqa: F401

    metrics = MetricRecord({"num-examples": 1, "loss": 0.0})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
