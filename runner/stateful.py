"""One state protocol for everything a checkpoint must carry: ``state_dict()`` / ``load_state_dict()``.

A state dict is plain data: JSON scalars, lists, dicts and arrays (NumPy arrays, torch
tensors, Flower ``ArrayRecord``s). :func:`pack` splits it into a JSON skeleton and a flat
``{key: ndarray}`` map (arrays are stored in the checkpoint's own format, the skeleton in
the manifest); :func:`unpack` rebuilds it. Only a closed set of tags is ever read back, so
loading never imports or calls anything a file names.

Flower's built-in strategies keep state in plain attributes; :func:`stateful` gives them a
small adapter (:class:`AttrState`) from :data:`FLOWER_STATE`. A user's class that defines
``state_dict``/``load_state_dict`` is used as it is. Wrappers (the DP strategies) are walked
through their ``strategy`` attribute, and a privacy ``accountant`` is a component of its own.

:class:`StateAudit` is the "no silent loss" check: it fingerprints every attribute of every
stateful object before the first round and after it, and names the attributes that changed
but that no state dict covers.
"""

from __future__ import annotations

import hashlib
import logging
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

log = logging.getLogger("runner")

__all__ = [
    "AttrState",
    "Stateful",
    "StateAudit",
    "components",
    "pack",
    "stateful",
    "unpack",
]


@runtime_checkable
class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


# ------------------------------------------------------------------------- pack / unpack

_TAGS = ("__nd__", "__pt__", "__ar__", "__tuple__", "__items__")


def _contiguous(value: Any) -> np.ndarray:
    """A C-contiguous array of the same shape (np.ascontiguousarray turns 0-d into 1-d:
    a BatchNorm counter kept in a client's state came back as shape (1,))."""
    arr = np.asarray(value)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def pack(obj: Any, prefix: str = "") -> tuple[Any, dict[str, np.ndarray]]:
    """(JSON skeleton, arrays) of a state dict; array keys start with ``prefix``."""
    arrays: dict[str, np.ndarray] = {}

    def walk(value: Any, path: str) -> Any:
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{path}: object arrays cannot be checkpointed")
            arrays[path] = _contiguous(value)
            return {"__nd__": path}
        kind = type(value).__module__.split(".", 1)[0]
        if kind == "torch" and hasattr(value, "detach"):
            return _pack_tensor(value, path, arrays)
        if kind == "flwr" and type(value).__name__ == "ArrayRecord":
            return {"__ar__": {k: walk(v.numpy(), f"{path}/{k}") for k, v in value.items()}}
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v, f"{path}/{k}") for k, v in value.items()}
            items = []
            for k, v in value.items():
                if not isinstance(k, (str, int, float, bool)) and k is not None:
                    raise TypeError(f"{path}: key {k!r} of type {type(k).__name__} cannot be checkpointed")
                items.append([k, walk(v, f"{path}/{k}")])
            return {"__items__": items}
        raise TypeError(f"{path or 'state'}: a {type(value).__name__} cannot be checkpointed (arrays and JSON only)")

    return walk(obj, prefix), arrays


def _pack_tensor(value: Any, path: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    t = value.detach().cpu()
    dtype = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: keep the bits
        t = t.view(torch.int16)
    arrays[path] = _contiguous(t.numpy())
    return {"__pt__": path, "dtype": dtype}


def unpack(skeleton: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """Inverse of :func:`pack`. Unknown tags are plain dicts; nothing is imported or called."""
    if isinstance(skeleton, list):
        return [unpack(v, arrays) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__nd__" in skeleton:
        return np.array(arrays[skeleton["__nd__"]], copy=True)
    if "__pt__" in skeleton:
        return _unpack_tensor(arrays[skeleton["__pt__"]], str(skeleton.get("dtype", "")))
    if "__ar__" in skeleton:
        from flwr.app import Array, ArrayRecord

        return ArrayRecord({k: Array(_contiguous(unpack(v, arrays))) for k, v in skeleton["__ar__"].items()})
    if "__tuple__" in skeleton:
        return tuple(unpack(v, arrays) for v in skeleton["__tuple__"])
    if "__items__" in skeleton:
        return {k: unpack(v, arrays) for k, v in skeleton["__items__"]}
    return {k: unpack(v, arrays) for k, v in skeleton.items()}


def _unpack_tensor(array: np.ndarray, dtype: str) -> Any:
    import torch

    t = torch.from_numpy(np.array(array, copy=True))
    if dtype == "bfloat16":
        t = t.view(torch.bfloat16)
    return t


# --------------------------------------------------------------- adapters for Flower classes


@dataclass(frozen=True)
class AttrSpec:
    """Which attributes of a class carry state across rounds, and which change but are
    rebuilt every round from the global model (``transient``: not saved, not warned about)."""

    state: tuple[str, ...] = ()
    transient: tuple[str, ...] = ()


def _flower_state() -> list[tuple[type, AttrSpec]]:
    from flwr.serverapp import strategy as s

    # Most specific classes first: the first isinstance match wins.
    return [
        (s.FedAvgM, AttrSpec(state=("momentum_vector", "current_arrays"))),
        (s.FedAdam, AttrSpec(state=("m_t", "v_t"), transient=("current_arrays",))),
        (s.FedYogi, AttrSpec(state=("m_t", "v_t"), transient=("current_arrays",))),
        (s.FedAdagrad, AttrSpec(state=("m_t", "v_t"), transient=("current_arrays",))),
        (s.QFedAvg, AttrSpec(transient=("current_arrays",))),
        (s.DifferentialPrivacyServerSideFixedClipping, AttrSpec(transient=("current_arrays", "_pending_events"))),
        (s.DifferentialPrivacyClientSideFixedClipping, AttrSpec(transient=("_pending_events",))),
        (
            s.DifferentialPrivacyServerSideAdaptiveClipping,
            AttrSpec(state=("clipping_norm",), transient=("current_arrays",)),
        ),
        (s.DifferentialPrivacyClientSideAdaptiveClipping, AttrSpec(state=("clipping_norm",))),
        (s.FedAvg, AttrSpec()),
    ]


FLOWER_STATE: list[tuple[type, AttrSpec]] = []


def _spec_for(obj: Any) -> AttrSpec | None:
    if not FLOWER_STATE:
        FLOWER_STATE.extend(_flower_state())
    for cls, spec in FLOWER_STATE:
        if isinstance(obj, cls):  # a user subclass inherits what its Flower class keeps
            return spec
    return None


class AttrState:
    """``state_dict``/``load_state_dict`` over named attributes of an object (an adapter)."""

    def __init__(self, obj: Any, spec: AttrSpec) -> None:
        self.obj = obj
        self.spec = spec

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self.obj, name) for name in self.spec.state if hasattr(self.obj, name)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, value in state.items():
            if name not in self.spec.state:
                raise KeyError(f"{type(self.obj).__name__} has no checkpointed attribute {name!r}")
            setattr(self.obj, name, value)

    def covered(self) -> set[str]:
        return set(self.spec.state) | set(self.spec.transient)


class _Plain:
    """A stateless object (no protocol, no adapter): nothing to save; the audit watches it."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise KeyError(f"{type(self.obj).__name__} keeps no checkpointed state, got {sorted(state)}")

    def covered(self) -> set[str]:
        return set(getattr(self.obj, "transient_attributes", ()))


def stateful(obj: Any) -> Any:
    """The object itself if it speaks the protocol, else an adapter."""
    if isinstance(obj, Stateful) and not isinstance(obj, type):
        return obj
    spec = _spec_for(obj)
    return AttrState(obj, spec) if spec is not None else _Plain(obj)


def components(strategy: Any) -> list[tuple[str, Any]]:
    """(name, object) of a strategy, the strategies it wraps and their accountants.

    A class with its own ``state_dict`` is one component: it saves what it wraps itself.
    """
    out: list[tuple[str, Any]] = []
    name, obj = "strategy", strategy
    while obj is not None:
        out.append((name, obj))
        if isinstance(obj, Stateful):
            break
        accountant = getattr(obj, "accountant", None)
        if accountant is not None:
            out.append((f"{name}.accountant", accountant))
        obj = getattr(obj, "strategy", None)
        name += ".strategy"
    return out


def covered_attributes(obj: Any) -> set[str]:
    """Attributes a state dict covers: its keys (also with a leading underscore), the
    adapter's list, components handled separately, and ``transient_attributes``."""
    adapter = stateful(obj)
    covered = set(getattr(obj, "transient_attributes", ()))
    if hasattr(adapter, "covered"):
        covered |= adapter.covered()
    else:
        try:
            keys = set(adapter.state_dict())
        except Exception:  # the audit must never break a run
            keys = set()
        covered |= keys | {f"_{k}" for k in keys}
    return covered | {"strategy", "accountant"}


# -------------------------------------------------------------------------------- audit


def _digest(value: Any, depth: int = 0) -> str:
    h = hashlib.sha1()

    def feed(v: Any, d: int) -> None:
        if d > 6:
            h.update(f"<deep {id(v)}>".encode())
            return
        if v is None or isinstance(v, (bool, int, float, str, bytes)):
            h.update(repr(v).encode())
        elif isinstance(v, np.ndarray):
            h.update(str(v.dtype).encode() + str(v.shape).encode())
            h.update(np.ascontiguousarray(v).tobytes())
        elif type(v).__module__.startswith("torch") and hasattr(v, "detach"):
            feed(v.detach().cpu().numpy(), d + 1)
        elif type(v).__name__ == "ArrayRecord":
            for k, a in v.items():
                h.update(k.encode())
                feed(a.numpy(), d + 1)
        elif isinstance(v, Mapping):
            h.update(b"{")
            for k, item in v.items():
                h.update(repr(k).encode())
                feed(item, d + 1)
            h.update(b"}")
        elif isinstance(v, (list, tuple, set, frozenset)):
            h.update(b"[")
            for item in sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v:
                feed(item, d + 1)
            h.update(b"]")
        elif isinstance(v, (types.ModuleType, type)) or callable(v):  # code, not state
            h.update(f"<code {getattr(v, '__qualname__', getattr(v, '__name__', type(v).__name__))}>".encode())
        elif hasattr(v, "__dict__"):
            h.update(f"<{type(v).__qualname__}>".encode())
            feed(vars(v), d + 1)
        else:
            h.update(f"<{type(v).__qualname__} {id(v)}>".encode())

    feed(value, depth)
    return h.hexdigest()


@dataclass
class StateAudit:
    """Names attributes that changed during the first round but are not in any state dict."""

    objects: list[tuple[str, Any]]
    before: dict[str, dict[str, str]] = field(default_factory=dict)

    def snapshot(self) -> None:
        self.before = {name: self._digests(obj) for name, obj in self.objects}

    @staticmethod
    def _digests(obj: Any) -> dict[str, str]:
        try:
            attrs = vars(obj)
        except TypeError:
            return {}
        out = {}
        for attr, value in attrs.items():
            try:
                out[attr] = _digest(value)
            except Exception:  # an exotic attribute must not break the run
                out[attr] = f"<undigestable {id(value)}>"
        return out

    def uncovered(self) -> list[str]:
        """``Class.attr (component)`` for every changed, uncovered attribute."""
        found = []
        for name, obj in self.objects:
            before = self.before.get(name, {})
            after = self._digests(obj)
            covered = covered_attributes(obj)
            for attr in sorted(set(before) | set(after)):
                if attr in covered or before.get(attr) == after.get(attr):
                    continue
                found.append(f"{type(obj).__name__}.{attr} ({name})")
        return found
