"""What the personalized algorithms of the zoo share (FedRep, FedBN, APFL, local, fine-tuning):
a FedAvg that hands back bit for bit the arrays no client changed, the task's loop run for a
given number of epochs, and a client half that keeps some of the model's weights local."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import nn

from runner.algorithms.base import ClientAlgorithm, ClientContext
from runner.config import ConfigError

__all__ = ["KeepLocal", "KeepUnchanged", "RemembersSent", "frozen", "matching", "non_negative", "train_epochs"]


def matching(names: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The names matching any of the fnmatch ``patterns`` (``head.*``), in order."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def non_negative(key: str, value: Any) -> int:
    """An epoch count from the config: an integer >= 0, else a one-line error naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, "expected an integer >= 0", value)
    return int(value)


class RemembersSent(FedAvg):
    """FedAvg that keeps the global arrays it sent for the round in progress (``self._sent``):
    for server halves that step from them (SCAFFOLD's ``global_lr``, FedNova, FedDyn) or hand
    them back (local, :class:`KeepUnchanged`). Set again by every ``configure_train``."""

    transient_attributes = ("_sent",)  # the global arrays of the round in progress

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = arrays
        return super().configure_train(server_round, arrays, config, grid)


class KeepUnchanged(RemembersSent):
    """FedAvg whose aggregate is, bit for bit, what it sent for every array that no client
    changed. Weighted averaging of identical arrays gives them back only up to rounding;
    the layers a personalized client keeps local (FedRep's head, FedBN's normalization
    layers) come back as the server sent them, so they stay exactly the server's."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        sent = self._sent
        if arrays is None or sent is None:
            return arrays, metrics
        returned = [next(iter(r.content.array_records.values())) for r in replies if not r.has_error()]
        for key in list(arrays.keys()):
            if key in sent and all(_same(r[key], sent[key]) for r in returned if key in r):
                arrays[key] = sent[key]
        return arrays, metrics


def _same(a: Any, b: Any) -> bool:
    """Two Flower Arrays hold the same values (same dtype, shape and bytes)."""
    return bool(a.dtype == b.dtype and list(a.shape) == list(b.shape) and a.data == b.data)


def train_epochs(
    ctx: ClientContext, model: nn.Module | None, optimizer: torch.optim.Optimizer | None, epochs: int
) -> dict[str, float]:
    """The task's loop (``ctx.train``) for ``epochs`` epochs instead of the task's own
    local epochs (through ``ctx.local_epochs``; a straggler's ``ctx.max_steps`` still caps
    each call); {} for 0 epochs."""
    if epochs == 0:
        return {}
    saved = ctx.local_epochs
    ctx.local_epochs = int(epochs)
    try:
        return ctx.train(model, optimizer)
    finally:
        ctx.local_epochs = saved


@contextmanager
def frozen(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Parameters ``names`` of ``model`` get no gradient (so no optimizer step) inside."""
    params = dict(model.named_parameters())
    saved = {n: params[n].requires_grad for n in names}
    try:
        for n in saved:
            params[n].requires_grad_(False)
        yield
    finally:  # the model object is reused by the process's next message
        for n, flag in saved.items():
            params[n].requires_grad_(flag)


def to_numpy(weights: dict[str, torch.Tensor], keys: Iterable[str]) -> dict[str, np.ndarray]:
    return {k: weights[k].detach().cpu().numpy().copy() for k in keys}


def load_into(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Copy ``arrays`` into ``model``'s weights in place (an optimizer built on it stays valid)."""
    device = next(iter(model.state_dict().values())).device
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)).to(device) for k, v in arrays.items()}, strict=False)


class KeepLocal(ClientAlgorithm):
    """A client half that keeps some weights local (:meth:`local_keys`): they are loaded from
    this client's state before training and before personal evaluation, saved after
    training, and the server gets back what it sent for them (never aggregated)."""

    personal = True
    state_key = ""  # the key of ctx.state holding the local weights

    def local_keys(self, model: nn.Module) -> list[str]:
        raise NotImplementedError

    def setup(self, ctx: ClientContext) -> None:
        kept = ctx.state.get(self.state_key)
        if kept:
            load_into(ctx.model, kept)

    def finish(self, ctx: ClientContext) -> None:
        weights = dict(ctx.model.state_dict()) if ctx.send_weights is None else dict(ctx.send_weights)
        keys = self.local_keys(ctx.model)
        ctx.state[self.state_key] = to_numpy(dict(ctx.model.state_dict()), keys)
        for k in keys:  # the server gets back what it sent: these are never averaged
            weights[k] = ctx.global_weights[k]
        ctx.send_weights = {k: v.detach().cpu() for k, v in weights.items()}

    def personal_model(self, ctx: ClientContext) -> nn.Module:
        """The global model with this client's local weights (the global one if it never trained)."""
        model = copy.deepcopy(ctx.model)
        kept = ctx.state.get(self.state_key)
        if kept:
            load_into(model, kept)
        return model
