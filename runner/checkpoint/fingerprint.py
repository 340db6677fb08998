"""Config fingerprint: which runs share a training trajectory (and may resume each other).

Keys that do not change the trajectory are left out: how long to run, where and how to
save, what to resume, logging/progress, timeouts, Ray's cluster address, data paths.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

EXCLUDED = (
    "resume",
    "resume_roots",
    "num_rounds",
    "stop_after_round",
    "checkpoint",
    "hydra",
    "progress",
    "print_config",
    "telemetry",
    "round_timeout",
    "backend.init_args",
    "engine",
    "logger",
    "backend.reuse_workers",
    "dataset.root",
    "dataset.download",
    # how failures are judged and which checks are waived, not what is trained
    "tolerate_failed_rounds",
    "unsafe",
    "init_weights_match",
    "data_cache",  # where client rows are cached, not which rows
    "report",  # report.targets: what the summary computes, not what is trained
)


def trajectory_config(cfg: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for key in EXCLUDED:
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def fingerprint(cfg: dict[str, Any]) -> str:
    canonical = json.dumps(trajectory_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
