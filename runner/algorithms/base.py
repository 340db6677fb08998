"""The public client-side algorithm API: what a client does in local training, what it keeps
between rounds, what extra payload it exchanges with its server half.

An FL algorithm is two halves selected together by one option, ``strategy=<name>``:

* the **server half**, a Flower strategy (``flwr.serverapp.strategy`` or a subclass), the
  ``strategy`` node's ``_target_``;
* the **client half**, a :class:`ClientAlgorithm` subclass, the ``strategy.client`` node's
  ``_target_`` (``null``: plain local training, as FedAvg).

No Flower types are needed to write a client half. The runner calls its hooks per client
and per round, in this order (``ctx`` is a :class:`ClientContext`)::

    train message:    setup(ctx) -> fit(ctx) [the task's train loop, which calls
                      ctx.penalty(...) -> loss_term and ctx.before_step(...) ->
                      after_backward every step] -> finish(ctx)
    evaluate message: setup_evaluate(ctx) -> personal_model(ctx)

Per-client state lives in ``ctx.state``, a dict of arrays, tensors, optimizer state dicts
and JSON scalars under keys the algorithm owns (declare them in ``state_keys``). The runner
keeps it in the client-state store: checkpointed, resumed and retained exactly, and handed
back to the same client the next time it is sampled. Keep nothing per client on ``self``:
one algorithm object serves every client of a process.

Extra payload is declared once with :class:`Payload` in the algorithm's module and used by
both halves: the server half with :meth:`Payload.attach` / :meth:`Payload.take`, the client
half through ``ctx.payload[P.name]`` (received) and ``ctx.reply[P.name]`` (sent back).
A ``down`` payload must be in every train message; every ``up`` payload must be in
``ctx.reply`` after ``finish``. Values in ``ctx.reply`` are NumPy arrays or tensors.

On an evaluate message the runner evaluates the global model (``ctx.model``) first
(``evaluate_<m>``); then, for the one ``personal`` algorithm, it calls ``setup_evaluate``
on every algorithm and evaluates ``personal_model(ctx)`` (``evaluate_personal_<m>``). An
evaluate message has ``ctx.optimizer``, ``ctx.generator`` and ``ctx.train`` too (e.g. for
fine-tuning), but what it changes in ``ctx.state`` is not kept: only train replies carry
state.

Which algorithms run (:mod:`runner.algorithms.compose`): the built-in features selected by
their own keys (``personalization.layers``: FedPer; ``train.keep_optimizer_state``) first,
then the ``strategy.client`` node. They must not share state keys; at most one overrides
``fit`` and at most one is ``personal``.

Changes since the first version of this API (all additions): ``ClientContext`` gained
``message``, ``local_epochs`` / ``max_steps`` (passed on to the task's ``TrainContext``)
and ``scratch`` (per-message working space, e.g. SCAFFOLD's variates on the device).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ClientAlgorithm", "ClientContext", "Payload"]

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Payload:
    """A named extra record between the halves: ``Payload("scaffold-c")``.

    Its value is a dict of NumPy arrays (scalars as 0-d arrays), carried as one Flower
    ``ArrayRecord`` under ``name`` next to the model's arrays.
    """

    name: str

    # -- server half -------------------------------------------------------------------
    def attach(
        self, messages: Iterable[Any], arrays: Mapping[str, np.ndarray] | Callable[[Any], Mapping[str, Any]]
    ) -> list[Any]:
        """The messages with this payload added (``arrays``, or ``arrays(message)`` for a
        value per destination). Each message gets its own content: Flower's strategies
        share one content between all messages of a round."""
        from flwr.app import Array, ArrayRecord, Message, RecordDict

        out = []
        for msg in messages:
            value = arrays(msg) if callable(arrays) else arrays
            record = ArrayRecord({k: Array(np.asarray(v)) for k, v in value.items()})
            content = RecordDict({**dict(msg.content), self.name: record})
            out.append(
                Message(content=content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type)
            )
        return out

    def take(self, reply: Any) -> Arrays | None:
        """This payload of a client's reply as NumPy arrays, removed from the reply (Flower's
        aggregation expects exactly one ArrayRecord); None when absent or the reply failed."""
        if reply.has_error() or self.name not in reply.content:
            return None
        record = reply.content[self.name]
        del reply.content[self.name]
        return {k: v.numpy() for k, v in record.items()}


@dataclass
class ClientContext:
    """Everything a client half sees for one message of one client.

    Set by the runner: ``message`` (``"train"`` / ``"evaluate"``), ``round``,
    ``partition_id``, ``seed``, ``device``, ``generator``,
    ``config`` (the round's config as the server sent it, e.g. ``proximal-mu``,
    ``server-round``, a learning-rate schedule; the runner's own run config is in
    ``run_config``), ``model`` (global weights loaded, on ``device``), ``global_weights``
    (what the server sent, read-only), ``state`` (this client's state, mutable), ``payload``
    (payload records received), ``task``, ``train_data`` / ``val_data``, ``optimizer`` (the
    task's optimizer for ``model``). Written by the algorithm: ``state``, ``reply`` (payload
    records to send back), ``send_weights`` (the weights the server gets back; by default
    ``model``'s after training), ``metrics`` (extra train metrics), ``local_epochs`` /
    ``max_steps`` (set in ``setup``: shorten this client's local training, e.g. a straggler),
    ``scratch`` (anything the hooks of one message share, e.g. a control variate on the
    device; never kept: per-client state goes in ``state``).
    """

    round: int
    partition_id: int
    seed: int
    device: torch.device
    config: dict[str, Any]
    run_config: dict[str, Any]
    model: nn.Module
    global_weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    payload: dict[str, Arrays]
    task: Any
    train_data: Any
    val_data: Any
    generator: torch.Generator | None = None
    optimizer: torch.optim.Optimizer | None = None
    reply: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    send_weights: dict[str, torch.Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0  # optimizer steps of the last ``train`` call (counted by ctx.before_step)
    local_epochs: int | None = None  # override the task's local epochs for this message (None: the task's)
    max_steps: int | None = None  # stop the task's loop after this many optimizer steps (None: no limit)
    scratch: dict[str, Any] = field(default_factory=dict)  # per-message working space, dropped after it
    message: str = "train"  # "train" or "evaluate"
    train_fn: Callable[..., dict[str, float]] | None = field(default=None, repr=False)

    def train(self, model: nn.Module | None = None, optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """Run the task's training loop on ``model`` (default ``ctx.model`` with
        ``ctx.optimizer``), with every algorithm's loss terms and step hooks; the metrics
        the task returns. An algorithm that trains several models (Ditto) calls it twice."""
        assert self.train_fn is not None
        return self.train_fn(model, optimizer)

    def evaluate(self, model: nn.Module, data: Any = None) -> dict[str, float]:
        """The task's evaluation of ``model`` on ``data`` (default: this client's held-out split)."""
        from runner.tasks import EvalContext

        return dict(self.task.evaluate(model, self.val_data if data is None else data, EvalContext(device=self.device)))


class ClientAlgorithm:
    """The client half of an algorithm. Override the hooks you need; each default does nothing.

    Class attributes declare what the runner must know before a message runs:

    * ``state_keys``: keys of ``ctx.state`` this algorithm owns (two algorithms combined
      in one run, e.g. SCAFFOLD with ``personalization.layers``, must not share keys);
    * ``down`` / ``up``: the :class:`Payload` records it expects from / returns to the
      server half (a missing ``down`` payload is an error naming it);
    * ``uses_loss_term`` / ``uses_step_hook``: the task's loop must call
      ``ctx.penalty(...)`` / ``ctx.before_step(model)``; a task that never does is an error
      (the algorithm would silently be plain FedAvg);
    * ``personal``: the algorithm has a personal model, evaluated by
      :meth:`personal_model` on each evaluated client's held-out split, reported as
      ``evaluate_personal_<metric>`` next to the global model's ``evaluate_<metric>``.
    """

    state_keys: tuple[str, ...] = ()
    down: tuple[Payload, ...] = ()
    up: tuple[Payload, ...] = ()
    uses_loss_term: bool = False
    uses_step_hook: bool = False
    personal: bool = False

    def setup(self, ctx: ClientContext) -> None:
        """Before local training: load personal layers, remember the global weights, ..."""

    def fit(self, ctx: ClientContext) -> dict[str, float]:
        """Local training; the default runs the task's loop once on ``ctx.model``.
        Only one algorithm of a run may override it."""
        return ctx.train()

    def loss_term(
        self, ctx: ClientContext, model: nn.Module, inputs: torch.Tensor | None, outputs: torch.Tensor | None
    ) -> torch.Tensor | float | None:
        """A term added to the task's loss (``ctx.penalty(model, inputs, outputs)``); None: none."""
        return None

    def after_backward(self, ctx: ClientContext, model: nn.Module) -> None:
        """After ``loss.backward()``, before ``optimizer.step()``: e.g. gradient correction."""

    def finish(self, ctx: ClientContext) -> None:
        """After training: update ``ctx.state``, fill ``ctx.reply``, adjust ``ctx.send_weights``."""

    def setup_evaluate(self, ctx: ClientContext) -> None:
        """Before evaluation, with this client's state: e.g. load personal layers into a copy."""

    def personal_model(self, ctx: ClientContext) -> nn.Module | None:
        """The model whose ``evaluate_personal_<metric>`` this client reports (``personal``)."""
        return None
