"""``python -m runner``: the Hydra entry point. It only resolves paths and calls run()."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from runner.errors import USER_ERRORS

log = logging.getLogger("runner")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from runner.run import run

    hc = HydraConfig.get()
    try:
        multirun = hc.mode == RunMode.MULTIRUN
        return run(
            cfg,
            output_dir=Path(hc.runtime.output_dir),
            launch_dir=Path(hc.runtime.cwd),
            name=hc.job.override_dirname or Path(hc.runtime.output_dir).name,
            group=str(Path(hc.sweep.dir).resolve()) if multirun else None,
        )
    except Exception as exc:
        from runner.engine.guard import EngineError  # lazily: Flower is imported after Hydra's logging setup

        if not isinstance(exc, (*USER_ERRORS, EngineError)):
            raise
        if hc.mode == RunMode.MULTIRUN:
            log.error("%s", exc)
            raise  # the sweeper records this job as failed and goes on with the others
        _to_log_file(f"error: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        # 2: a setting the user can fix; 1: the engine failed during the run (not always the user's doing)
        sys.exit(1 if isinstance(exc, EngineError) else 2)


def _to_log_file(message: str) -> None:
    """Record the error in runner.log only: the console gets it once, as ``error: …``."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    main()
