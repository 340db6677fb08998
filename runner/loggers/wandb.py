"""Weights & Biases: offline by default; the resolved config as W&B config, metrics per round.

Offline runs live in ``<run dir>/wandb/offline-run-<time>-<id>/`` and nothing leaves the
machine; upload them later with ``wandb sync <run dir>/wandb/offline-run-*`` (a resumed
run has one such dir per session: give them all, ``wandb sync`` uploads the sessions of one
run in order). ``mode: online`` logs live.

Every metric is plotted against ``round`` (``define_metric("*", step_metric="round")``);
W&B's own ``_step`` just counts rows and keeps increasing across resumes. Sweeps: ``group``
= the sweep dir, ``name`` = the job's overrides. Resume: the run ``id`` lives in the
checkpoint manifest and the resumed run calls ``wandb.init(id=..., resume="allow")``; in
offline mode it reads the earlier sessions' transaction logs (``run-<id>.wandb``) to skip the
(metric, round) pairs they already hold.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from runner.loggers.base import Logger, Metrics, RunInfo, group_label, is_checkpoint_file, require

log = logging.getLogger("runner")

MODES = ("offline", "online", "disabled")
DEFAULT_SETTINGS = {"console": "off", "silent": True}
"""Keep the runner's terminal output as it is (runner.log has it); the runner logs where the run is."""
STEP_KEY = "round"
_INTERNAL = frozenset({"_step", "_runtime", "_timestamp", STEP_KEY})


class WandbLogger(Logger):
    def __init__(
        self,
        project: str = "flower-hydra-runner",
        entity: str | None = None,
        mode: str = "offline",
        dir: str | None = None,  # wandb.init's own name
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        job_type: str | None = None,
        settings: dict[str, Any] | None = None,
        log_clients: bool = True,
        log_checkpoint: bool = False,
    ) -> None:
        super().__init__(log_clients, log_checkpoint)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {mode!r})")
        require("wandb", "wandb", "wandb")
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = dir
        self.run_name = name
        self.group = group
        self.tags = list(tags or [])
        self.notes = notes
        self.job_type = job_type
        self.settings = dict(DEFAULT_SETTINGS if settings is None else settings)
        self.wb: Any = None
        self.output_dir: Path | None = None
        self.next_step = 0
        self.last_round = -1
        self.dirs: list[str] = []

    # -- start --------------------------------------------------------------------------
    def start(
        self, run: RunInfo, state: dict[str, Any] | None, history: list[tuple[int, Metrics]]
    ) -> Iterable[tuple[str, int]] | None:
        import wandb

        self.output_dir = run.output_dir
        root = Path(self.dir) if self.dir else run.output_dir
        root.mkdir(parents=True, exist_ok=True)
        resume_id = str(state["id"]) if state and state.get("id") else None
        kwargs: dict[str, Any] = {
            "project": (state or {}).get("project") or self.project,
            "entity": (state or {}).get("entity") or self.entity,
            "mode": self.mode,
            "dir": str(root),
            "name": self.run_name or run.name or None,
            "group": self.group or group_label(run.group),
            "tags": self.tags or None,
            "notes": self.notes,
            "job_type": self.job_type,
            "settings": wandb.Settings(**{"reinit": "create_new", **self.settings}),
        }
        present: set[tuple[str, int]] | None = None
        if resume_id:
            kwargs.update(id=resume_id, resume="allow")
            self.dirs = [str(d) for d in state.get("dirs", [])] if state else []
            self.next_step = int((state or {}).get("next_step", 0))
            present, max_step = self._scan_sessions(history)
            self.next_step = max(self.next_step, max_step + 1)
        else:
            kwargs["config"] = run.config
        self.wb = wandb.init(**kwargs)
        self.wb.define_metric(STEP_KEY)
        self.wb.define_metric("*", step_metric=STEP_KEY)
        if resume_id:
            self.wb.config.update(run.config, allow_val_change=True)
            self.next_step = max(self.next_step, int(getattr(self.wb, "step", 0) or 0))
        sync_dir = _sync_dir(self.wb) if self.mode != "disabled" else None
        if sync_dir and sync_dir not in self.dirs:
            self.dirs.append(sync_dir)
        if self.mode == "offline" and sync_dir:
            log.info("wandb: offline run %s in %s (upload with: wandb sync %s)", self.wb.id, sync_dir, sync_dir)
        return present

    def _scan_sessions(self, history: list[tuple[int, Metrics]]) -> tuple[set[tuple[str, int]], int]:
        """(metric, round) pairs and the highest ``_step`` the earlier sessions wrote."""
        assumed = {(key, step) for step, metrics in history for key in metrics}
        if self.mode != "offline":
            return assumed, self.next_step - 1  # online: the server continues its own _step
        present: set[tuple[str, int]] = set()
        max_step = -1
        for d in self.dirs:
            files = sorted(Path(d).glob("run-*.wandb"))
            if not files:
                log.warning("wandb: no transaction log in %s; assuming it holds the checkpoint's history", d)
                return assumed, self.next_step - 1
            for f in files:
                try:
                    for row in read_history(f):
                        max_step = max(max_step, int(row.get("_step", -1)))
                        if STEP_KEY in row:
                            rnd = int(row[STEP_KEY])
                            present.update((k, rnd) for k in row if k not in _INTERNAL)
                except Exception as exc:  # noqa: BLE001 - fall back to the checkpoint's history
                    log.warning("wandb: cannot read %s (%s); assuming it holds the checkpoint's history", f, exc)
                    return assumed, self.next_step - 1
        return present, max_step

    # -- logging ------------------------------------------------------------------------
    def log_metrics(self, metrics: Metrics, step: int) -> None:
        self.wb.log({STEP_KEY: step, **metrics}, step=self.next_step)
        self.next_step += 1
        self.last_round = max(self.last_round, step)

    def state_dict(self) -> dict[str, Any]:
        if self.wb is None:
            return {}
        return {
            "id": self.wb.id,
            "project": self.wb.project or self.project,
            "entity": self.wb.entity or self.entity,
            "mode": self.mode,
            "dirs": list(self.dirs),
            "next_step": self.next_step,
        }

    def finish(self, status: str, artifacts: list[Path]) -> None:
        error: Exception | None = None
        try:
            checkpoints = [p for p in artifacts if is_checkpoint_file(p)]
            files_dir = Path(self.wb.dir) if self.mode != "disabled" else None
            for path in artifacts:
                if path in checkpoints or files_dir is None:
                    continue
                try:  # a copy in the run's files dir: uploaded by `wandb sync` even if the run dir moves
                    dest = files_dir / _relative(path, self.output_dir)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest)
                    self.wb.save(str(dest), base_path=str(files_dir), policy="now")
                except Exception as exc:  # noqa: BLE001 - save the others, then report
                    error = error or exc
            if checkpoints and self.mode != "disabled":
                import wandb

                art = wandb.Artifact(f"model-{self.wb.id}", type="model", metadata={"round": self.last_round})
                for path in checkpoints:
                    art.add_file(str(path), name=path.name)
                self.wb.log_artifact(art, aliases=["latest", f"round-{self.last_round}"])
            self.wb.summary["runner/status"] = status
        finally:
            self.wb.finish(exit_code=1 if status == "failed" else 0)
        if error is not None:
            raise error


def _relative(path: Path, root: Path | None) -> Path:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve())
        except ValueError:
            pass
    return Path(path.name)


def _sync_dir(run: Any) -> str | None:
    try:
        value = run.settings.sync_dir
    except Exception:  # noqa: BLE001 - disabled runs have no dir
        return None
    return str(Path(value).resolve()) if value else None


# -- W&B transaction log (run-<id>.wandb) ----------------------------------------------------

_HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
_BLOCK = 32768
_CHUNK = 7  # crc32 (4) + length (2) + type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(path: Path) -> Iterator[bytes]:
    """The records of a W&B transaction log (LevelDB log format with zlib CRC32); stops at a
    torn or corrupt tail, which is what a killed process leaves."""
    data = path.read_bytes()
    if not data.startswith(_HEADER):
        raise ValueError(f"{path.name} is not a W&B transaction log")
    pos, parts = len(_HEADER), b""
    while pos + _CHUNK <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK:
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _CHUNK])
        body = data[pos + _CHUNK : pos + _CHUNK + length]
        if kind == 0 or len(body) < length or zlib.crc32(body, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            return
        pos += _CHUNK + length
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            parts = body
        elif kind == _MIDDLE:
            parts += body
        elif kind == _LAST:
            yield parts + body
            parts = b""


def read_history(path: Path) -> Iterator[dict[str, Any]]:
    """History rows ({"_step": 3, "round": 1, "train/loss": 0.2, ...}) of a .wandb file."""
    from wandb.proto import wandb_internal_pb2 as pb

    for raw in _records(path):
        record = pb.Record()  # type: ignore[attr-defined]
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = _item_value(item)
        yield row


def _item_value(item: Any) -> Any:
    kind = item.WhichOneof("value")
    if kind is None or kind == "value_json":
        return json.loads(item.value_json) if item.value_json else None
    if kind == "none":
        return None
    if kind == "json":
        return json.loads(item.json)
    return getattr(item, kind)
