"""``Checkpointer``: the one owner of a run's checkpoints (built from ``checkpoint.*``).

It decides when to save (``phase`` fit or evaluate, ``every_n_rounds``, the final round),
tracks the best round (:class:`CheckpointPolicy`, the single best tracker also used by
``resume=best``), captures everything a run needs to continue exactly and restores it.

The manifest's ``state`` layout is defined here and nowhere else::

    state = {
      "layout": 3,
      "eval_pending": bool,            # a fit-phase checkpoint precedes its round's evaluation
      "history": [...metrics rows...],
      "rng": {...},                    # python, numpy, torch (runner.state)
      "components": {name: skeleton},  # every registered state_dict(), arrays replaced by keys
    }

Components are registered by name: ``strategy`` (and ``strategy.strategy``,
``strategy.accountant`` for wrappers), ``clients`` (every client's state), ``policy`` (best
tracker), ``loggers`` (tracker run ids). Their arrays go to ``round-NNNN.state.<ext>`` under
``<name>/...`` keys, in the checkpoint's own format; nothing is pickled. The ``clients``
component (a :class:`~runner.client_state.ClientStateStore`) is the exception since layout 3:
each client's state is a content-addressed blob written once, when it changes, and the
component is ``{"__blobs__": {pid: blob name}}`` (:mod:`runner.checkpoint.blobs`). Layout 2
(every client's arrays in the state file) still restores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from runner.checkpoint.policy import CheckpointPolicy
from runner.stateful import pack, stateful, unpack

log = logging.getLogger("runner")

__all__ = ["LAYOUT", "Checkpointer"]

LAYOUT = 3
READABLE_LAYOUTS = (2, 3)  # 2: client states in the state file, before blobs


def _record_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


class Checkpointer:
    def __init__(
        self,
        ckpt_cfg: Mapping[str, Any],
        out_dir: Path,
        *,
        fingerprint: str,
        config: dict[str, Any],
        num_rounds: int,
        write: Callable[..., Any] | None = None,
    ) -> None:
        self.cfg = dict(ckpt_cfg)
        self.dir = Path(out_dir) / "checkpoints"
        self.fingerprint = fingerprint
        self.config = config
        self.num_rounds = int(num_rounds)
        self.enabled = bool(self.cfg.get("enabled", True))
        self.phase = str(self.cfg["phase"])
        self.policy = CheckpointPolicy(
            every_n_rounds=self.cfg["every_n_rounds"],
            keep_last=self.cfg["keep_last"],
            monitor=self.cfg["monitor"],
            mode=self.cfg["mode"],
        )
        self.components: dict[str, Any] = {"policy": self.policy}
        self.blob_stores: dict[str, Any] = {}  # components checkpointed as blobs (client states)
        self.writer: Any = None
        self.saved_rounds: set[int] = set()
        self.resumed_from: str | None = None
        self.code_digest: dict[str, str] = {}  # issue 21: user modules' source digest, per manifest
        self._writer_factory = write

    # -- components ---------------------------------------------------------------------
    def register(self, name: str, obj: Any) -> None:
        """Capture ``obj`` in every checkpoint (its own ``state_dict`` or an adapter)."""
        self.components[name] = stateful(obj)
        if name == "clients" and callable(getattr(obj, "records", None)):
            self.blob_stores[name] = obj
        else:
            self.blob_stores.pop(name, None)

    def capture(
        self, history: list[dict[str, Any]], eval_pending: bool
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(manifest state, state arrays) of the run right now."""
        from runner.state import capture_rng

        skeletons: dict[str, Any] = {}
        arrays: dict[str, np.ndarray] = {}
        for name, comp in self.components.items():
            if name in self.blob_stores:  # filled in by the writer: references to blobs
                skeletons[name] = {}
                continue
            skeletons[name], comp_arrays = pack(comp.state_dict(), prefix=name)
            arrays.update(comp_arrays)
        state = {
            "layout": LAYOUT,
            "eval_pending": eval_pending,
            "history": list(history),
            "rng": capture_rng(),
            "components": skeletons,
        }
        return state, arrays

    def restore(self, state: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> list[str]:
        """Load every registered component from a manifest's state; returns what was restored."""
        from runner.state import restore_rng

        if state.get("layout") not in READABLE_LAYOUTS:
            log.warning(
                "checkpoint state has layout %r (this version reads %s): only weights and metrics history are restored",
                state.get("layout"),
                ", ".join(map(str, READABLE_LAYOUTS)),
            )
            return []
        saved = state.get("components", {})
        restored = []
        for name, comp in self.components.items():
            if name not in saved:
                if name not in ("loggers",):
                    log.warning("checkpoint has no state for %s: it starts fresh", name)
                continue
            comp.load_state_dict(unpack(saved[name], arrays))
            restored.append(name)
        unknown = sorted(set(saved) - set(self.components))
        if unknown:
            log.warning("checkpoint holds state for %s, which this run does not have: ignored", ", ".join(unknown))
        restore_rng(state["rng"])
        return [*restored, "rng"]

    # -- saving -------------------------------------------------------------------------
    def open(self) -> None:
        if not self.enabled:
            return
        from runner.checkpoint.writer import CheckpointWriter

        factory = self._writer_factory or CheckpointWriter
        self.writer = factory(self.dir, self.cfg["format"], self.policy)

    def _submit(
        self,
        rnd: int,
        phase: str,
        arrays: ArrayRecord,
        history: list[dict[str, Any]],
        metrics: dict[str, float],
        is_best: bool,
    ) -> None:
        from runner.checkpoint.store import CheckpointData

        state, state_arrays = self.capture(history, eval_pending=phase == "fit")
        self.writer.submit(
            CheckpointData(
                round=rnd,
                phase=phase,
                weights=lambda: _record_to_numpy(arrays),  # converted on the writer thread
                state_arrays=state_arrays,
                state=state,
                metrics=metrics,
                fingerprint=self.fingerprint,
                config=self.config,
                resumed_from=self.resumed_from,
                is_best=is_best,
                code_digest=self.code_digest,
                clients=self.blob_stores["clients"].records() if "clients" in self.blob_stores else None,
            )
        )
        self.saved_rounds.add(rnd)

    def after_fit(
        self, rnd: int, arrays: ArrayRecord, history: list[dict[str, Any]], metrics: dict[str, float]
    ) -> None:
        if self.writer and self.phase == "fit" and self.policy.should_save(rnd, self.num_rounds):
            self._submit(rnd, "fit", arrays, history, metrics, False)

    def after_evaluate(
        self, rnd: int, arrays: ArrayRecord, history: list[dict[str, Any]], metrics: dict[str, float]
    ) -> bool:
        """Update the best tracker, save an evaluate-phase checkpoint; True if ``rnd`` is the new best."""
        is_best = self.policy.update_best(rnd, metrics)
        if not self.writer:
            return is_best
        if self.phase == "evaluate" and self.policy.should_save(rnd, self.num_rounds):
            self._submit(rnd, "evaluate", arrays, history, metrics, is_best)
        elif is_best and rnd in self.saved_rounds:
            self.writer.mark_best(rnd)  # a fit-phase checkpoint saved before its metrics
        return is_best

    def close(self) -> None:
        """Flush the save in flight (re-raises its error)."""
        if self.writer is not None:
            self.writer.close()

    def pointers(self) -> dict[str, str | None]:
        from runner.checkpoint.store import read_pointer

        out: dict[str, str | None] = {}
        for name in ("last", "best"):
            p = read_pointer(self.dir, name)
            out[name] = str(self.dir / p["manifest"]) if p else None
        return out
