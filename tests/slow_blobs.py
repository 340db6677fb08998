"""``python -m tests.slow_blobs <write|gc> <n> <runner args...>``: the runner whose checkpoint
writer stalls for two minutes in the middle of writing client-state blobs (``write``: right
after the n-th blob file is written, before the save's manifest) or in the middle of
garbage collection (``gc``: right after the n-th blob is removed), so a crash drill can
SIGKILL it there. It touches ``$STALL_MARKER`` when it stalls. A test seam: nothing of it
is in the runner."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from runner.checkpoint import blobs

MODE = sys.argv.pop(1)
AT = int(sys.argv.pop(1))
_count = 0


def _stall() -> None:
    Path(os.environ["STALL_MARKER"]).touch()
    time.sleep(120)


if MODE == "write":
    _save = blobs.save_arrays

    def _slow_save(*args: Any, **kwargs: Any) -> Any:
        global _count
        result = _save(*args, **kwargs)
        _count += 1
        if _count == AT:
            _stall()
        return result

    blobs.save_arrays = _slow_save  # type: ignore[assignment]
elif MODE == "gc":
    _unlink = os.unlink

    class _SlowOs:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        @staticmethod
        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            global _count
            _unlink(path, *args, **kwargs)
            if not Path(path).name.startswith("."):  # a blob, not a temp file
                _count += 1
                if _count == AT:
                    _stall()

    blobs.os = _SlowOs()  # type: ignore[assignment]
else:
    raise SystemExit(f"unknown mode {MODE!r}")

if __name__ == "__main__":
    import runpy

    runpy.run_module("runner", run_name="__main__", alter_sys=True)
