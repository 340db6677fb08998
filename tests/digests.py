"""Digests of a finished run: final weights, every client's state, metric rows.

Recorded on main before the client-algorithm refactor (issue 17) in
``tests/data/algorithm_digests.json`` by ``python -m tests.digests record``; the test in
``tests/test_algorithm_digests.py`` checks that the same configs still give the same bits.

The digests read checkpoints only through ``runner.checkpoint.store.load_checkpoint`` and
``runner.stateful.unpack``, so they describe what a checkpoint *means* (weights by name,
each client's state by partition id), not how it is laid out on disk.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers import FAST, ROOT, read_metrics, run_cli, run_dirs

DATA = ROOT / "tests" / "data" / "algorithm_digests.json"

CASE_DIR = ROOT / "tests" / "conf"
# tests/conf/case/digest_*.yaml: each spells out its sampling, so that changing an option's
# defaults never changes these digests.
CASES = ["digest_fedprox", "digest_scaffold", "digest_fedper", "digest_optimizer_state"]
COMMON = [*FAST, "num_rounds=3", "seed=3"]


def _digest_value(h: Any, value: Any) -> None:
    if isinstance(value, dict):
        for k in sorted(value, key=str):
            h.update(f"<{k}>".encode())
            _digest_value(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for v in value:
            _digest_value(h, v)
    elif hasattr(value, "detach"):  # a torch tensor
        _digest_value(h, value.detach().cpu().numpy())
    elif isinstance(value, np.ndarray):
        h.update(f"{value.dtype.str}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(json.dumps(value).encode())


def digest(value: Any) -> str:
    h = hashlib.sha256()
    _digest_value(h, value)
    return h.hexdigest()


def run_digests(run_dir: Path) -> dict[str, str]:
    """Digests of the final checkpoint's weights and of every client's state."""
    from runner.checkpoint.store import load_checkpoint
    from runner.stateful import unpack

    manifests = sorted((run_dir / "checkpoints").glob("round-*.json"))
    loaded = load_checkpoint(manifests[-1])
    clients = unpack(loaded.manifest["state"]["components"].get("clients", {}), loaded.state_arrays)
    return {"weights": digest(loaded.weights), "clients": digest(clients)}


def rows_of(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without elapsed_s (kept verbatim: later issues add keys to rows, and
    the recorded keys must keep their values)."""
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run_dir)]


def sweep_digests(cwd: Path, cases: list[str] = CASES) -> dict[str, dict[str, Any]]:
    """One multirun over every case (as CI runs it); digests by case name."""
    proc = run_cli(["-m", "--config-dir", str(CASE_DIR), f"+case={','.join(cases)}", *COMMON], cwd=cwd, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}\n{proc.stderr[-3000:]}")
    out = {}
    for run in run_dirs(cwd / "multirun"):
        overrides = (run / ".hydra" / "overrides.yaml").read_text()
        (case,) = [c for c in cases if f"+case={c}\n" in overrides + "\n"]
        out[case] = {**run_digests(run), "rows": rows_of(run)}
    return out


def main() -> None:
    import tempfile

    if sys.argv[1:] != ["record"]:
        raise SystemExit("usage: python -m tests.digests record")
    with tempfile.TemporaryDirectory() as tmp:
        cases = sweep_digests(Path(tmp))
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps({"common": COMMON, "cases": cases}, indent=2) + "\n")
    print(json.dumps(cases, indent=2))


if __name__ == "__main__":
    main()
