"""Keep ``torch._dynamo`` out of client processes that never compile.

``torch.optim`` reaches for the compiler even in plain eager training: ``step()`` of every
built-in optimizer runs ``import torch._dynamo; torch._dynamo.graph_break()`` around the
update, and ``__init__``/``add_param_group``/``zero_grad``/``state_dict`` go through
``torch._disable_dynamo``, which imports ``torch._dynamo`` on first call. That import costs
~0.5 s of CPU and ~150 MB (sympy, fx, ...) in every process that trains: each Ray actor, and
in deployment each ``flwr-clientapp`` process Flower starts per message.

While ``torch._dynamo`` is not imported, nothing can be compiling: ``graph_break()`` and
``disable()`` do nothing in eager mode. :func:`eager_optimizers` therefore gives
``torch.optim``'s built-in optimizers shortcuts that run the same method directly (same
grad-mode handling as torch's wrapper, same update code, same bits) while that holds, and
hand every call back to torch's own wrapper from the moment anything imports
``torch._dynamo`` (a task that calls ``torch.compile``). A user's own optimizer class is
left alone. If a torch version shapes these wrappers differently, nothing is patched and
torch imports ``torch._dynamo`` as before: slower, never different.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterator
from types import FunctionType
from typing import Any

__all__ = ["eager_optimizers"]

_CACHE_ATTR = "__dynamo_disable"  # what torch._compile._disable_dynamo's wrapper caches on fn
_done = False


def _compiler_loaded() -> bool:
    return "torch._dynamo" in sys.modules


# -- torch._disable_dynamo wrappers (add_param_group, zero_grad, state_dict, ...) -------------
def _disable_wrapper_code() -> Any:
    import torch

    probe = getattr(torch, "_disable_dynamo", None)
    if probe is None:
        return None
    code = getattr(probe(lambda: None), "__code__", None)
    if code is None or _CACHE_ATTR not in code.co_consts:
        return None  # another mechanism: leave torch alone
    return code


def _direct(wrapper: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    def direct(*args: Any, **kwargs: Any) -> Any:
        if _compiler_loaded():  # something may compile now: torch's own path from here on
            try:
                delattr(fn, _CACHE_ATTR)
            except AttributeError:
                pass
            return wrapper(*args, **kwargs)
        return fn(*args, **kwargs)

    return direct


def _wrappers(obj: Any, code: Any, depth: int = 0) -> Iterator[FunctionType]:
    """``obj`` if it is a ``_disable_dynamo`` wrapper, or such wrappers in its closure
    (``torch.optim.optimizer._disable_dynamo_if_unsupported`` keeps one there)."""
    if not isinstance(obj, FunctionType) or depth > 1:
        return
    if obj.__code__ is code:
        yield obj
        return
    for cell in obj.__closure__ or ():
        try:
            inner = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        yield from _wrappers(inner, code, depth + 1)


def _optim_objects() -> Iterator[Any]:
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "torch.optim" or name.startswith("torch.optim.")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == name:
                yield from list(vars(value).values())
            else:
                yield value


def _shortcut_disable_dynamo() -> int:
    code = _disable_wrapper_code()
    if code is None:
        return 0
    count = 0
    for value in _optim_objects():
        for wrapper in _wrappers(value, code):
            fn = getattr(wrapper, "__wrapped__", None)
            if fn is None or getattr(fn, _CACHE_ATTR, None) is not None:
                continue
            setattr(fn, _CACHE_ATTR, _direct(wrapper, fn))
            count += 1
    return count


# -- step(): torch.optim.optimizer._use_grad_for_differentiable ------------------------------
def _eager_step(original: Callable[..., Any], func: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    @functools.wraps(func)
    def step(*args: Any, **kwargs: Any) -> Any:
        if _compiler_loaded():
            return original(*args, **kwargs)
        # torch's _use_grad without its graph breaks (no-ops while nothing compiles)
        prev = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(args[0].defaults["differentiable"])
            return func(*args, **kwargs)
        finally:
            torch.set_grad_enabled(prev)

    step.__lean_original__ = original  # type: ignore[attr-defined]
    return step


def _shortcut_steps() -> int:
    import torch.optim

    count = 0
    for value in list(vars(torch.optim).values()):
        if not (isinstance(value, type) and issubclass(value, torch.optim.Optimizer)):
            continue
        step = value.__dict__.get("step")
        func = getattr(step, "__wrapped__", None)
        if (
            not isinstance(step, FunctionType)
            or func is None
            or step.__code__.co_name != "_use_grad"  # already hooked, or another torch
            or not {"_dynamo", "graph_break", "set_grad_enabled"} <= set(step.__code__.co_names)
        ):
            continue
        value.step = _eager_step(step, func)  # type: ignore[method-assign]
        count += 1
    return count


def eager_optimizers() -> int:
    """Install the shortcuts (module docstring) once per process, before the first optimizer
    is built; returns how many were installed (0 when ``torch._dynamo`` is already loaded)."""
    global _done
    if _done or _compiler_loaded():
        return 0
    _done = True
    return _shortcut_steps() + _shortcut_disable_dynamo()
