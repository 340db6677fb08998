"""``python -m tests.slow_save <round> <runner args...>``: the runner whose checkpoint saves
from round ``<round>`` on stall for two minutes on the writer thread, so a crash drill can
SIGKILL the process while a save is in flight. A test seam: nothing of it is in the runner."""

from __future__ import annotations

import sys
import time

from runner.checkpoint import writer

FROM_ROUND = int(sys.argv.pop(1))
_original = writer.CheckpointWriter._save


def _stalled_save(self: writer.CheckpointWriter, data: writer.CheckpointData) -> None:
    if data.round >= FROM_ROUND:
        time.sleep(120)
    _original(self, data)


writer.CheckpointWriter._save = _stalled_save  # type: ignore[method-assign]

if __name__ == "__main__":
    import runpy

    # exactly `python -m runner` (Hydra finds conf/ relative to runner/__main__.py run as __main__)
    runpy.run_module("runner", run_name="__main__", alter_sys=True)
