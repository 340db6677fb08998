"""``build(node, key)``: the one factory of config-group nodes (``_target_`` + arguments).

A target that does not import, or arguments that do not fit it, become one line naming
the config key (``model: my_fl.models.Net: __init__() got an unexpected keyword ...``).
"""

from __future__ import annotations

from typing import Any

from runner.config import ConfigError

__all__ = ["build", "targets"]


def _cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def build(node: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)`` with user-facing errors."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError(key, "expected a config with _target_ (a class or function to build it)", show_value=False)
    target = node["_target_"]
    try:
        return instantiate(node, _convert_="all", **kwargs)
    except InstantiationException as exc:
        cause = _cause(exc)
        if _is_user_error(cause):  # already one line that says what to do (missing files, ...)
            raise cause from None
        text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if cause is exc or "Error locating target" in str(exc):
            first = str(exc).splitlines()[0]
            if "Error locating target" in first:
                missing = _missing_attribute(target)
                if missing:
                    raise ConfigError(f"{key}._target_", missing, show_value=False) from None
                raise ConfigError(
                    f"{key}._target_", f"cannot import {target!r} ({_import_reason(exc)})", show_value=False
                ) from None
        raise ConfigError(key, f"{target}: {text}", show_value=False) from None
    except Exception as exc:  # the target itself raised on its arguments
        if _is_user_error(exc):
            raise
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(key, f"{target}: {text}", show_value=False) from None


def _is_user_error(exc: BaseException) -> bool:
    from runner.datasets import DatasetNotFound

    return isinstance(exc, (ConfigError, DatasetNotFound))


def _missing_attribute(target: str) -> str | None:
    """``my_pkg.task.Nett``: when ``my_pkg.task`` imports but has no ``Nett``, say that (and
    the close names) instead of Python's "No module named 'my_pkg.task.Nett'"."""
    import difflib
    import importlib

    module_name, _, attr = target.rpartition(".")
    if not module_name:
        return None
    try:
        module = importlib.import_module(module_name)  # the config's own target: Hydra imported it already
    except Exception:  # noqa: BLE001 - the module itself does not import: the usual message
        return None
    if hasattr(module, attr):
        return None
    names = [n for n in dir(module) if not n.startswith("_")]
    close = difflib.get_close_matches(attr, names, n=3, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else f"; it has: {', '.join(names[:10])}"
    return f"module {module_name!r} imports but has no attribute {attr!r}{hint}"


def _import_reason(exc: BaseException) -> str:
    cause = _cause(exc)
    if cause is not exc:
        return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}".rstrip(": ")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if len(lines) > 1 else "not found"


def targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every ``(key, _target_)`` in a config tree (nested ones included)."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append((path or "<root>", str(node["_target_"])))
        for k, v in node.items():
            found += targets(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += targets(v, f"{path}[{i}]")
    return found
