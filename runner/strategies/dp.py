"""Privacy accounting for the ``dp`` group (conf/dp/): Flower's own RDP accountant."""

from __future__ import annotations

from typing import Any

__all__ = ["rdp_accountant"]


def rdp_accountant(target_delta: float, population_size: int, max_epsilon: float | None = None) -> Any:
    """``flwr.serverapp.RdpAccountant`` as Flower's fixed-clipping wrappers accept it:
    no sampling amplification, add-or-remove-one neighbouring (the one model they support)."""
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    config = PrivacyConfig(
        target_delta=float(target_delta),
        population_size=int(population_size),
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
        max_epsilon=None if max_epsilon is None else float(max_epsilon),
    )
    return RdpAccountant(config)
