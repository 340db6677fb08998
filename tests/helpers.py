"""Helpers shared by the tests: composed configs and the CLI run in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

# The built-in strategies sample every client (Flower's fraction_train=1.0); tests sample half
# of them, as they did before, so that sampling is exercised and rounds stay cheap.
SAMPLED = ["strategy.fraction_train=0.5", "strategy.fraction_evaluate=0.5"]
# Tiny but real settings: enough to exercise every code path in a few seconds of rounds.
FAST = ["num_clients=4", "train.local_epochs=1", "progress=log", *SAMPLED]


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides or []), return_hydra_config=False)


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, module: str = "runner", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m runner ...`` as a user runs it, in ``cwd`` (outputs land there)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_dirs(root: Path) -> list[Path]:
    """Run dirs (those with a .hydra folder) under root, oldest first by name."""
    return sorted(p.parent for p in root.glob("**/.hydra"))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def checkpoint_state(run_dir: Path, rnd: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(components, state arrays) of round ``rnd``'s checkpoint as it means them: every
    client's state read back from its blob (``clients/<pid>/...`` arrays and the clients'
    JSON skeleton), whatever the layout on disk."""
    from runner.checkpoint.store import load_checkpoint

    loaded = load_checkpoint(run_dir / "checkpoints" / f"round-{rnd:04d}.json")
    return loaded.manifest["state"]["components"], loaded.state_arrays
