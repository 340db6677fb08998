"""TensorBoard: scalars per round, the config as hparams + text, plots as images.

Layout: ``<run dir>/tensorboard/<job name>/events.out.tfevents.*``, so ``tensorboard
--logdir outputs`` lists one run per job and a sweep's jobs sit under its sweep dir
(``--logdir multirun/<date>/<time>``). A resumed run writes into the log dir of the run it
continues (kept in the checkpoint manifest), not a new one: what that dir already holds up
to the checkpoint's round is kept, anything after it is purged with ``purge_step`` (so a
step is never shown twice) and logged again as the resumed run replays those rounds.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from runner.loggers.base import Logger, Metrics, RunInfo, require, safe_name

log = logging.getLogger("runner")

HPARAM_METRICS = ("centralized/accuracy", "centralized/loss", "evaluate/accuracy", "evaluate/loss", "train/loss")
"""Scalar tags the HPARAMS tab shows next to each run's hyperparameters."""

_EVENTS = re.compile(r"events\.out\.tfevents\.(\d+)\.")


class TensorBoardLogger(Logger):
    def __init__(
        self,
        log_dir: str | None = None,
        log_clients: bool = True,
        log_checkpoint: bool = False,
        flush_secs: int = 30,
    ) -> None:
        super().__init__(log_clients, log_checkpoint)
        require("tensorboard", "tensorboard", "tensorboard")
        self.root = log_dir
        self.flush_secs = int(flush_secs)
        self.log_dir: Path | None = None
        self.writer: Any = None
        self.run: RunInfo | None = None
        self.last_step = -1

    # -- start --------------------------------------------------------------------------
    def start(
        self, run: RunInfo, state: dict[str, Any] | None, history: list[tuple[int, Metrics]]
    ) -> Iterable[tuple[str, int]] | None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        old = Path(state["log_dir"]) if state and state.get("log_dir") else None
        if old is not None and not old.is_dir():
            log.warning("tensorboard: the resumed run's log dir %s is gone; logging to a new one", old)
            old = None
        if old is None or not history:
            self.log_dir = _new_dir(Path(self.root) if self.root else run.output_dir / "tensorboard", run.name)
            self.writer = SummaryWriter(str(self.log_dir), flush_secs=self.flush_secs)
            return None
        # Reopen: keep what the dir holds up to the checkpoint's round, purge what came after.
        self.log_dir = old
        purge = max(step for step, _ in history) + 1
        present = read_scalars(old)
        stale = any(step >= purge for events in present.values() for step, _ in events)
        _wait_for_next_second(old)  # TensorBoard orders event files by name (time first)
        self.writer = SummaryWriter(str(old), flush_secs=self.flush_secs, purge_step=purge if stale else None)
        if stale:
            log.info("tensorboard: continuing %s; steps >= %d purged and logged again", old, purge)
        else:
            log.info("tensorboard: continuing %s at step %d", old, purge)
        return {(tag, step) for tag, events in present.items() for step, _ in events if step < purge}

    # -- logging ------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        from omegaconf import OmegaConf
        from torch.utils.tensorboard.summary import hparams

        hp = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()}
        for summary in hparams(hp, {name: 0.0 for name in HPARAM_METRICS}):
            self.writer.file_writer.add_summary(summary)
        if self.run is not None:
            text = OmegaConf.to_yaml(self.run.config)
            self.writer.add_text("config", "```yaml\n" + text + "```", global_step=0)
        self.writer.flush()

    def log_metrics(self, metrics: Metrics, step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.last_step = max(self.last_step, step)
        self.writer.flush()

    def state_dict(self) -> dict[str, Any]:
        return {"log_dir": str(self.log_dir.resolve())} if self.log_dir else {}

    def finish(self, status: str, artifacts: list[Path]) -> None:
        try:
            step = max(self.last_step, 0)
            for path in artifacts:
                if path.suffix.lower() == ".png":
                    import matplotlib.image as mpimg

                    image = mpimg.imread(path)
                    self.writer.add_image(f"plots/{path.stem}", image[..., :3], global_step=step, dataformats="HWC")
                elif path.suffix.lower() == ".json":
                    text = json.dumps(json.loads(path.read_text()), indent=2)
                    self.writer.add_text(path.stem, "```json\n" + text + "\n```", global_step=step)
            self.writer.add_text("status", status, global_step=step)
        finally:
            self.writer.close()


# -- helpers ---------------------------------------------------------------------------------


def _new_dir(root: Path, name: str) -> Path:
    """<root>/<job name>; a second fresh run with the same name gets <job name>-2, -3, ..."""
    base = safe_name(name) if name else "run"
    candidate, n = root / base, 1
    while candidate.is_dir() and any(candidate.glob("events.out.tfevents.*")):
        n += 1
        candidate = root / f"{base}-{n}"
    return candidate


def _wait_for_next_second(log_dir: Path) -> None:
    """A new event file must sort after the old ones: its name starts with the time in seconds."""
    stamps = [int(m.group(1)) for p in log_dir.iterdir() if (m := _EVENTS.match(p.name))]
    if stamps:
        newest = max(stamps)
        while int(time.time()) <= newest:
            time.sleep(0.05)


@contextmanager
def _quiet_tensorboard() -> Any:
    tb_log = logging.getLogger("tensorboard")
    level = tb_log.level
    tb_log.setLevel(logging.ERROR)  # "Detected out of order event.step ..." is the purge we asked for
    try:
        yield
    finally:
        tb_log.setLevel(level)


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} as TensorBoard shows them (purged steps left out)."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    with _quiet_tensorboard():
        acc = ea.EventAccumulator(str(log_dir), size_guidance={ea.SCALARS: 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
