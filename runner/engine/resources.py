"""``preflight``: can this Ray instance host one client with the configured resources?

Flower sizes its actor pool from Ray's resources per node (``pool_size_from_resources``):
``int(node CPUs / num_cpus)`` actors, and none at all on a node without GPUs when
``num_gpus > 0``. Zero actors is Flower's "ActorPool is empty" error, after the ServerApp
has started. This module asks the same question before anything starts, against what Ray
will offer: for a local instance the CPUs and GPUs Ray detects (or ``init_args.num_cpus`` /
``num_gpus``), for a cluster (``init_args.address``) its live nodes. ``device=cuda`` needs a
CUDA GPU in the driver (the server evaluates there) and a GPU share per client (Ray hides
the GPUs from an actor with ``num_gpus: 0``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from runner.config import ConfigError

CPUS = "backend.client_resources.num_cpus"
GPUS = "backend.client_resources.num_gpus"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _plural(n: float, word: str) -> str:
    return f"{_fmt(n)} {word}{'' if n == 1 else 's'}"


def local_cpus() -> float:
    """CPUs a new local Ray instance detects (cgroup limits included)."""
    try:
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - Ray's helper moved: the scheduler's view is close
        return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def local_gpus() -> float:
    """GPUs a new local Ray instance detects (visible devices only)."""
    try:
        from ray._private import accelerators

        manager = accelerators.get_accelerator_manager_for_resource("GPU")
        if manager is None:
            return 0.0
        n = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
        if visible is not None:
            n = min(n, len(visible))
        return float(n)
    except Exception:  # noqa: BLE001 - Ray's helper moved: ask torch
        try:
            import torch

            return float(torch.cuda.device_count())
        except Exception:  # noqa: BLE001
            return 0.0


def _cluster_nodes() -> list[tuple[float, float]]:
    """(CPUs, GPUs) of every live node of the Ray instance this process is connected to."""
    import ray

    out = []
    for node in ray.nodes():
        res = node.get("Resources") or {}
        if node.get("Alive", True) and res:
            out.append((float(res.get("CPU", 0)), float(res.get("GPU", 0))))
    return out


def _cuda_in_driver() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def check_resources(run_cfg: dict[str, Any], connect: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Raise a one-line ConfigError if no Ray node can host one client."""
    backend = run_cfg["backend"]
    res = backend["client_resources"]
    init_args = dict(backend.get("init_args") or {})
    need_cpus = float(res.get("num_cpus", 0) or 0)
    need_gpus = float(res.get("num_gpus", 0) or 0)
    device = run_cfg.get("device", "auto")

    if device == "cuda" and not _cuda_in_driver():
        raise ConfigError(
            "device",
            "cuda, but this process sees no CUDA GPU (torch.cuda.is_available() is False); use device=cpu or auto",
            show_value=False,
        )
    if device == "cuda" and need_gpus <= 0:
        raise ConfigError(
            GPUS,
            "device=cuda needs a GPU share per client (e.g. 0.5); with 0 Ray hides the GPUs from the clients",
            show_value=False,
        )

    import ray

    address = init_args.get("address")
    if address and not ray.is_initialized() and connect is not None:
        connect(init_args)
    if ray.is_initialized():
        nodes = _cluster_nodes()
        where = f"the Ray cluster at {address}" if address else "this Ray instance"
        best_cpus = max((c for c, _ in nodes), default=0.0)
        best_gpus = max((g for _, g in nodes), default=0.0)
        fits = any(c >= need_cpus and (need_gpus <= 0 or g >= need_gpus) for c, g in nodes)
        if fits:
            return
        if best_cpus < need_cpus:
            raise ConfigError(
                CPUS,
                f"{_plural(need_cpus, 'CPU')} per client, but {where} offers at most {_fmt(best_cpus)} per node",
                show_value=False,
            )
        if best_gpus <= 0:
            raise ConfigError(GPUS, f"{_plural(need_gpus, 'GPU')} per client, but {where} has no GPU", show_value=False)
        raise ConfigError(
            GPUS if best_gpus < need_gpus else CPUS,
            f"no node of {where} offers {_plural(need_cpus, 'CPU')} and {_plural(need_gpus, 'GPU')} at once",
            show_value=False,
        )
    if address:
        return  # not connected (no way to ask): Flower's own checks apply
    cpus = float(init_args["num_cpus"]) if init_args.get("num_cpus") is not None else local_cpus()
    if need_cpus > cpus:
        raise ConfigError(
            CPUS, f"{_plural(need_cpus, 'CPU')} per client, but this Ray instance offers {_fmt(cpus)}", show_value=False
        )
    if need_gpus > 0:
        gpus = float(init_args["num_gpus"]) if init_args.get("num_gpus") is not None else local_gpus()
        if gpus <= 0:
            raise ConfigError(
                GPUS,
                f"{_plural(need_gpus, 'GPU')} per client, but this machine has no GPU Ray can use",
                show_value=False,
            )
        if need_gpus > gpus:
            raise ConfigError(
                GPUS,
                f"{_plural(need_gpus, 'GPU')} per client, but this Ray instance offers {_fmt(gpus)}",
                show_value=False,
            )
