"""Client training and evaluation (conf/task/): the part of an experiment a user writes.

No Flower types here (as in Flower's ``task.py``). A task is any object with:

* ``configure_optimizer(model) -> torch.optim.Optimizer``
* ``train(model, optimizer, data: Split, ctx: TrainContext) -> dict[str, float]``
* ``evaluate(model, data: Split, ctx: EvalContext) -> dict[str, float]`` (include ``"loss"``)

``data`` is a :class:`runner.data.Split` (``len(data)``, ``data.x``/``data.y`` arrays and
``data.batches(batch_size, generator=ctx.generator, device=ctx.device)``). The returned
names become metrics (``train_<name>``, ``evaluate_<name>``, ``centralized_<name>`` in
metrics.jsonl, plots, the sweep summary, ``checkpoint.monitor``). A task may declare
``train_metrics`` (names its ``train`` returns) when they differ from ``evaluate``'s.

To take part in the client algorithms (:mod:`runner.algorithms`: FedProx, SCAFFOLD, a
user's own) a training loop calls, per optimizer step,
``loss = loss + ctx.penalty(model, inputs, outputs)`` (the algorithms' loss terms, e.g.
FedProx's proximal term) and ``ctx.before_step(model)`` after ``backward()`` (their step
hooks, e.g. SCAFFOLD's gradient correction); both are no-ops otherwise. It honours
``ctx.local_epochs`` / ``ctx.max_steps`` when set, and may read ``ctx.config``, the round's
config as the strategy sent it.
Randomness must come from ``ctx.generator`` or torch's global RNG (seeded per round and
client by the runner), never from wall-clock or unseeded sources, or resume is not exact.
A task object is built once per process and reused: keep per-client state out of it.
Per-client state (a personal model, optimizer state, a control variate) belongs to a client
algorithm, which keeps it in ``ctx.state`` (see README, "Write your own algorithm").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["Classification", "EvalContext", "TrainContext"]


@dataclass
class EvalContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class TrainContext(EvalContext):
    """What a task's ``train`` gets from the runner for one client and one round.

    ``config`` is the round's config as the server's strategy sent it (``server-round``,
    ``proximal-mu``, a learning-rate schedule, ...). ``local_epochs`` / ``max_steps``, when
    not None, override the task's own local epochs / cap its optimizer steps for this client
    (an algorithm sets them, e.g. for stragglers); a task honours them as
    :class:`Classification` does. :meth:`penalty` and :meth:`before_step` run the client
    algorithms' hooks (:mod:`runner.algorithms`).
    """

    seed: int = 0
    round: int = 0
    partition_id: int = 0
    generator: torch.Generator | None = None
    config: dict[str, Any] = field(default_factory=dict)
    local_epochs: int | None = None
    max_steps: int | None = None
    steps: int = 0  # optimizer steps taken (counted by before_step)
    penalty_calls: int = 0
    loss_terms: list[Callable[[nn.Module, Any, Any], Any]] = field(default_factory=list, repr=False)
    step_hooks: list[Callable[[nn.Module], None]] = field(default_factory=list, repr=False)

    def penalty(self, model: nn.Module, inputs: Any = None, outputs: Any = None) -> torch.Tensor | float:
        """The sum of the algorithms' loss terms for this step (FedProx's proximal term, ...);
        exactly ``0.0`` when no algorithm adds one. Pass ``inputs`` / ``outputs`` (the
        batch and the model's output) for algorithms whose term needs them."""
        self.penalty_calls += 1
        total: Any = None
        for term in self.loss_terms:
            value = term(model, inputs, outputs)
            if value is not None:
                total = value if total is None else total + value
        return 0.0 if total is None else total

    def before_step(self, model: nn.Module) -> None:
        """Call after ``loss.backward()``, before ``optimizer.step()`` (SCAFFOLD's gradient
        correction, ...); counts the optimizer steps."""
        self.steps += 1
        for hook in self.step_hooks:
            hook(model)


class Classification:
    """Supervised classification: ``loss`` (default cross-entropy), ``optimizer`` (a partial
    taking the parameters, e.g. ``torch.optim.SGD`` with ``_partial_: true``), metrics
    ``loss`` and ``accuracy``. ``transform`` (optional, a ``_target_`` node) is applied to
    each training batch, ``(x, y) -> (x, y)``, on the device, e.g. augmentation; if random,
    it must draw from torch's global RNG or a generator it is given (seeded per round and
    client), so that resume stays exact."""

    train_metrics = ("loss", "accuracy")

    def __init__(
        self,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        loss: nn.Module | None = None,
        local_epochs: int = 1,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        transform: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        if not callable(optimizer):
            raise TypeError("optimizer must be a callable taking the parameters (use _partial_: true)")
        self.optimizer = optimizer
        self.loss = loss if loss is not None else nn.CrossEntropyLoss()
        self.local_epochs = int(local_epochs)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        if transform is not None and not callable(transform):
            raise TypeError("transform must be a callable (x, y) -> (x, y)")
        self.transform = transform

    def configure_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return self.optimizer(model.parameters())

    def _check(self, out: torch.Tensor, y: torch.Tensor) -> None:
        if out.ndim != 2:
            raise ValueError(f"the model returns shape {tuple(out.shape)}; classification needs (batch, classes)")
        if len(y) and int(y.max()) >= out.shape[1]:
            raise ValueError(f"the model returns {out.shape[1]} class scores but labels go up to {int(y.max())}")

    def train(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, data: Any, ctx: TrainContext
    ) -> dict[str, float]:
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        epochs = self.local_epochs if ctx.local_epochs is None else int(ctx.local_epochs)
        limit, steps = ctx.max_steps, 0
        for _ in range(epochs):
            if limit is not None and steps >= limit:
                break
            for xb, yb in data.batches(self.batch_size, generator=ctx.generator, device=ctx.device):
                if self.transform is not None:
                    xb, yb = self.transform(xb, yb)
                optimizer.zero_grad()
                out = model(xb)
                if seen == 0:
                    self._check(out, yb)
                loss = self.loss(out, yb) + ctx.penalty(model, xb, out)
                loss.backward()
                ctx.before_step(model)
                optimizer.step()
                total_loss += float(loss.detach()) * len(yb)
                correct += int((out.argmax(1) == yb).sum())
                seen += len(yb)
                steps += 1
                if limit is not None and steps >= limit:
                    break
        return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Any, ctx: EvalContext) -> dict[str, float]:
        model.eval()
        total, correct, seen = 0.0, 0, 0
        for xb, yb in data.batches(self.eval_batch_size, device=ctx.device):
            out = model(xb)
            if seen == 0:
                self._check(out, yb)
            total += float(self.loss(out, yb)) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        if seen == 0:
            return {"loss": float("nan"), "accuracy": float("nan")}
        return {"loss": total / seen, "accuracy": correct / seen}
