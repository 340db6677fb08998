"""MOON (Li, He, Song, "Model-Contrastive Federated Learning", CVPR 2021), both halves.

The server half :class:`Moon` is plain FedAvg (``flwr.serverapp.strategy.FedAvg``). The client half
:class:`MoonClient` adds the model-contrastive loss to the task's loss:

    ℓ_con = -log( exp(sim(z, z_glob)/τ) / (exp(sim(z, z_glob)/τ) + exp(sim(z, z_prev)/τ)) ),
    loss  = ℓ_task + μ · ℓ_con,

``z``, ``z_glob``, ``z_prev`` the representations of the batch by the model being trained,
the global model of this round and this client's previous local model, ``sim`` the cosine
similarity. The representation is the model's body: what it feeds to ``model.head`` (a
forward pre-hook on ``head``; the built-in MLP and CNN have one; a model without ``head``
is an error). The previous local model is the client's state (key ``moon_prev``); in a
client's first round there is none, and the term is dropped (with ``z_prev = z_glob`` it
would be the constant ``log 2``, no gradient). ``mu`` and ``temperature`` are the paper's
μ and τ (defaults of its code: 1 and 0.5; the paper uses μ = 5 on CIFAR-10).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from flwr.serverapp.strategy import FedAvg

from runner.algorithms.base import ClientAlgorithm, ClientContext
from runner.config import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.hooks import RemovableHandle

__all__ = ["Moon", "MoonClient", "head_of"]


def head_of(model: nn.Module) -> nn.Module:
    """``model.head``, or a one-line error naming ``model``."""
    from torch import nn

    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ConfigError(
            "model",
            f"MOON needs a model with a `head` submodule (its input is the representation); "
            f"{type(model).__name__} has none",
            show_value=False,
        )
    return head


def _capture(model: nn.Module, store: dict[str, Any]) -> RemovableHandle:
    """Record the input of ``model.head`` (the representation) in ``store["z"]`` on every forward."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        store["z"] = args[0]

    return head_of(model).register_forward_pre_hook(hook)


class Moon(FedAvg):
    """MOON's server half: FedAvg, unchanged (named so that ``strategy=`` shows the algorithm)."""


class MoonClient(ClientAlgorithm):
    """MOON's client half: the model-contrastive term (module docstring)."""

    state_keys = ("moon_prev",)
    uses_loss_term = True

    def __init__(self, mu: float = 1.0, temperature: float = 0.5) -> None:
        if not temperature > 0:
            raise ValueError(f"MOON's temperature must be > 0, got {temperature}")
        self.mu = float(mu)
        self.temperature = float(temperature)
        # The hook on the (per-process, reused) model of the message in progress, by model:
        # a message that failed mid-training leaves one behind; the next setup removes it.
        self._handles: dict[int, RemovableHandle] = {}

    def setup(self, ctx: ClientContext) -> None:
        import torch

        stale = self._handles.pop(id(ctx.model), None)
        if stale is not None:
            stale.remove()
        head_of(ctx.model)
        prev_state = ctx.state.get("moon_prev")
        s: dict[str, Any] = {"z": None}
        if prev_state is not None and self.mu != 0:
            # frozen copies, made before the hook goes on ctx.model (deepcopy copies hooks)
            glob = copy.deepcopy(ctx.model).eval().requires_grad_(False)
            prev = copy.deepcopy(ctx.model).eval().requires_grad_(False)
            prev.load_state_dict({k: torch.from_numpy(v) for k, v in prev_state.items()})
            s["glob"], s["prev"] = glob, prev
            s["glob_z"], s["prev_z"] = {}, {}
            _capture(glob, s["glob_z"])
            _capture(prev, s["prev_z"])
        ctx.scratch["moon"] = s
        self._handles[id(ctx.model)] = _capture(ctx.model, s)

    def loss_term(
        self, ctx: ClientContext, model: nn.Module, inputs: torch.Tensor | None, outputs: torch.Tensor | None
    ) -> Any:
        import torch
        import torch.nn.functional as F

        s = ctx.scratch["moon"]
        if "prev" not in s or model is not ctx.model:
            return None
        if inputs is None:
            raise RuntimeError("MOON needs the batch: the task's loop must call ctx.penalty(model, inputs, outputs)")
        z = s["z"]
        if z is None:
            raise RuntimeError("MOON saw no forward through model.head before ctx.penalty(...)")
        with torch.no_grad():
            s["glob"](inputs)
            s["prev"](inputs)
        z = z.flatten(1)
        sim_glob = F.cosine_similarity(z, s["glob_z"]["z"].flatten(1), dim=-1)
        sim_prev = F.cosine_similarity(z, s["prev_z"]["z"].flatten(1), dim=-1)
        logits = torch.stack([sim_glob, sim_prev], dim=1) / self.temperature
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)  # the global model is the positive
        return self.mu * F.cross_entropy(logits, target)

    def finish(self, ctx: ClientContext) -> None:
        handle = self._handles.pop(id(ctx.model), None)
        if handle is not None:
            handle.remove()
        ctx.state["moon_prev"] = {k: v.detach().cpu().numpy().copy() for k, v in ctx.model.state_dict().items()}
        ctx.scratch.pop("moon", None)
