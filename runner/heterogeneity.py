"""System heterogeneity (the ``clients`` config node): stragglers and dropped replies.

* ``clients.straggler_fraction``: each round, each sampled client is a straggler with this
  probability; a straggler runs ``clients.straggler_epochs`` local epochs instead of the
  task's, or at most ``clients.straggler_steps`` optimizer steps when that is set.
* ``clients.dropout``: each round, each sampled client does not reply with this
  probability (it is never sent the message; the round counts it in ``num_failures``).

Both are drawn from (seed, round, partition id) alone with :func:`runner.runtime.derive_seed`:
the same in every run, in every process and across resume. A client dropped in a round
replies to neither that round's train nor its evaluate message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.runtime import derive_seed

__all__ = ["dropped", "straggler_limits", "uniform"]


def uniform(seed: int, rnd: int, pid: int, purpose: str) -> float:
    """A number in [0, 1) from (seed, round, partition id, purpose)."""
    return derive_seed(int(seed), int(rnd), int(pid), purpose) / 2.0**63


def _clients(run_cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    return run_cfg.get("clients") or {}


def dropped(run_cfg: Mapping[str, Any], rnd: int, pid: int) -> bool:
    """Whether client ``pid`` does not reply in round ``rnd`` (``clients.dropout``)."""
    p = float(_clients(run_cfg).get("dropout") or 0.0)
    return p > 0 and uniform(run_cfg["seed"], rnd, pid, "dropout") < p


def straggler_limits(run_cfg: Mapping[str, Any], rnd: int, pid: int) -> tuple[int | None, int | None]:
    """``(local_epochs, max_steps)`` of client ``pid`` in round ``rnd``: ``(None, None)``
    unless it is a straggler this round (``clients.straggler_fraction``)."""
    c = _clients(run_cfg)
    p = float(c.get("straggler_fraction") or 0.0)
    if not (p > 0 and uniform(run_cfg["seed"], rnd, pid, "straggler") < p):
        return None, None
    steps = c.get("straggler_steps")
    if steps is not None:
        return None, int(steps)
    return int(c.get("straggler_epochs") or 1), None
