"""FedBN: Li, Jiang, Zhang, Kamp, Dou, "FedBN: Federated Learning on Non-IID Features via
Local Batch Normalization", ICLR 2021 (arXiv:2102.07623).

FedAvg, except that the normalization layers (BatchNorm and the other ``_NormBase`` layers:
affine weight and bias, running mean and variance, batch counter) never leave the client:
each client trains with its own, keeps them in its state and sends back the ones the server
sent. The personal model is the global model with the client's normalization layers; the
global model keeps its initial ones (no client changes them), so ``evaluate_<metric>`` and
``centralized_<metric>`` of FedBN measure a model no client uses.

``strategy=fedbn model=cnn_bn`` (the CNN with a BatchNorm2d after each convolution). A
model without such layers is refused: FedBN would be FedAvg.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from runner.algorithms._shared import KeepLocal, KeepUnchanged
from runner.algorithms.base import ClientContext
from runner.config import ConfigError

__all__ = ["FedBN", "FedBNClient", "norm_keys"]

# The buffers every tracked _NormBase layer has: how the server, which sees only the
# weights' names, tells that the model has normalization layers.
_STAT_SUFFIXES = (".running_mean", ".running_var")


def _refuse() -> ConfigError:
    return ConfigError(
        "model",
        "strategy=fedbn keeps the normalization layers local, but this model has none (no BatchNorm); "
        "use model=cnn_bn or a model with BatchNorm layers",
        show_value=False,
    )


def norm_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the model's normalization layers (BatchNorm*, InstanceNorm*, SyncBatchNorm)."""
    keys = []
    for prefix, module in model.named_modules():
        if isinstance(module, _NormBase):
            keys += [f"{prefix}.{k}" if prefix else k for k in module.state_dict()]
    return keys


class FedBN(KeepUnchanged):
    """FedBN's server half: FedAvg of everything but the normalization layers, which come
    back from every client as sent and so stay the server's. Refuses a model whose weights
    hold no normalization statistics (one line naming ``model``, before round 1 trains)."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not any(k.endswith(_STAT_SUFFIXES) for k in arrays.keys()):
            raise _refuse()
        return super().configure_train(server_round, arrays, config, grid)


class FedBNClient(KeepLocal):
    """FedBN's client half: the normalization layers are loaded from and saved to this
    client's state; the rest trains and is averaged as in FedAvg."""

    state_keys = ("fedbn_norm",)
    state_key = "fedbn_norm"

    def local_keys(self, model: nn.Module) -> list[str]:
        keys = norm_keys(model)
        if not keys:
            raise _refuse()
        return keys

    def setup(self, ctx: ClientContext) -> None:
        self.local_keys(ctx.model)
        super().setup(ctx)
