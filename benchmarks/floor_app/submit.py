"""Submit the floor app to a SuperLink the way ``python -m runner engine=deployment`` does.

Same machinery as the runner's DeploymentEngine (runner/engine/deployment.py): a private
``FLWR_HOME`` with one connection (``_write_home``), the app staged into a temp dir
(``stage_app``), ``flwr run <app> runner --run-config … --format json`` (``_submit``),
``flwr log <id> runner --stream`` echoed to stdout (``_follow``: the ServerApp's
``round i/N`` lines) and the final status from ``flwr ls``. Exit 0 when the run completed.

    python benchmarks/floor_app/submit.py --superlink 127.0.0.1:PORT --num-rounds 5 --out DIR

``DIR`` gets ``.flwr/`` (config, run config, ``run.json``: Flower's record of the run) and
``stamps.jsonl`` (the ServerApp's per-round time stamps).
"""

from __future__ import annotations

import time

T_START = time.time()  # process start, close enough (before the imports below)

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

APP_DIR = Path(__file__).resolve().parent
ROOT = APP_DIR.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--superlink", required=True)
    ap.add_argument("--num-rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)

    import tomli_w

    from runner.engine.deployment import (
        HOME_DIR,
        RUN_CONFIG_FILE,
        RUN_RECORD_FILE,
        DeploymentEngine,
        _flwr_cli,
        stage_app,
    )

    out = a.out.resolve()
    home = out / HOME_DIR
    stamps = out / "stamps.jsonl"
    engine = DeploymentEngine(superlink=a.superlink, app_dir=str(APP_DIR), stop_on_exit=False)
    engine._cli = _flwr_cli(None)
    if engine._cli is None:
        print("error: the flwr CLI was not found", file=sys.stderr)
        return 2
    engine._write_home(home)
    overrides = home / RUN_CONFIG_FILE
    overrides.write_text(tomli_w.dumps({"num-server-rounds": a.num_rounds, "stamp-file": str(stamps)}))
    run_cfg: dict = {}
    with tempfile.TemporaryDirectory(prefix="floor-fab-") as tmp:
        app = stage_app(APP_DIR, Path(tmp) / "app")
        run = engine._submit(app, overrides, run_cfg)
    print(f"floor: Flower run {run.run_id} submitted {time.time() - T_START:.2f}s after start", flush=True)
    engine._follow(run, out, run_cfg)
    if run.info is not None:
        (home / RUN_RECORD_FILE).write_text(json.dumps(run.info, indent=2))
    if run.status != "finished:completed":
        print(f"error: Flower run {run.run_id} {run.status}: {run.details}", file=sys.stderr)
        return 1
    print(f"floor: Flower run {run.run_id} completed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
