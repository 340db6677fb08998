"""``python -m runner``: the Hydra entry point. It only resolves paths and calls run()."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runner.errors import USER_ERRORS

log = logging.getLogger("runner")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        _start_engine_early(cfg)
    from runner.run import RunFailed, run

    try:
        multirun = hc.mode == RunMode.MULTIRUN
        return run(
            cfg,
            output_dir=Path(hc.runtime.output_dir),
            launch_dir=Path(hc.runtime.cwd),
            name=hc.job.override_dirname or Path(hc.runtime.output_dir).name,
            group=str(Path(hc.sweep.dir).resolve()) if multirun else None,
            last_job=not multirun,
        )
    except Exception as exc:
        from runner.engine.guard import EngineError  # lazily: Flower is imported after Hydra's logging setup

        if not isinstance(exc, (*USER_ERRORS, EngineError, RunFailed)):
            raise
        if hc.mode == RunMode.MULTIRUN:
            log.error("%s", exc)
            raise  # the sweeper records this job as failed and goes on with the others
        _to_log_file(f"error: {exc}")
        print(f"error: {exc}", file=sys.stderr)
        # 2: a setting the user can fix; 1: the engine failed during the run (not always the user's doing)
        # (RunFailed: more failed rounds than tolerate_failed_rounds, also 1)
        sys.exit(1 if isinstance(exc, (EngineError, RunFailed)) else 2)


def _start_engine_early(cfg: DictConfig) -> None:
    """Start the simulation's local Ray before the runner's own imports (torch and the
    runner: ~1.5 s), so that Ray's start overlaps them; its actors then warm up while the
    driver prepares the run. The engine's preflight would start it ~1.5 s later otherwise.

    Only a plain local start that the run's own checks accept anyway (no GPU, at most the
    CPUs this machine has, the fast paths on); otherwise, or on any doubt, preflight starts
    Ray as before. The run's checks all still run; a setting error exits as before (Ray is
    stopped at exit).
    """
    try:
        node = cfg.get("engine")
        if node is None or node.get("_target_") != "runner.engine.simulation.SimulationEngine":
            return
        if not bool(node.get("fast_paths", True)):
            return
        backend = OmegaConf.to_container(cfg.backend, resolve=True)
        assert isinstance(backend, dict)
        res = backend["client_resources"]
        if cfg.get("device") == "cuda" or float(res.get("num_gpus") or 0) > 0:
            return
        if not 0 < float(res.get("num_cpus") or 0) <= (os.cpu_count() or 1):
            return
        warmup = node.get("warmup_imports")
        from runner.engine import simulation

        modules = simulation.DEFAULT_WARMUP_IMPORTS if warmup is None else warmup
        simulation.prestart({str(k): v for k, v in backend.items()}, [str(m) for m in modules])
    except Exception as exc:  # noqa: BLE001 - the run's own checks will say what is wrong
        log.debug("engine: no early start (%s)", exc)


def _to_log_file(message: str) -> None:
    """Record the error in runner.log only: the console gets it once, as ``error: …``."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _searched_dirs(argv: list[str]) -> list[str]:
    dirs = [str(Path(__file__).resolve().parents[1] / "conf")]
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(str(Path(argv[i + 1]).resolve()))
        elif arg.startswith("--config-dir="):
            dirs.append(str(Path(arg.split("=", 1)[1]).resolve()))
    return dirs


def _install_option_hint() -> None:
    """An unknown group option (``model=my_net``): Hydra's message and list of options, then
    which config dirs were searched and how a project's own options come in; exit 2 (a setting)."""
    import hydra._internal.utils as hydra_utils
    from hydra.errors import MissingConfigException

    original = hydra_utils.run_and_report

    def run_and_report(func: object) -> object:
        def hinted() -> object:
            try:
                return func()  # type: ignore[operator]
            except MissingConfigException as exc:
                missing = exc.missing_cfg_file or ""
                if "/" not in missing or os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                group, option = missing.rsplit("/", 1)
                dirs = _searched_dirs(sys.argv[1:])
                print(str(exc).rstrip(), file=sys.stderr)
                print(
                    f"error: {group}={option}: no {missing}.yaml in the config dirs searched ({', '.join(dirs)}); "
                    f"a project's own options come in with --config-dir <dir> (a dir holding {missing}.yaml) "
                    "or hydra.searchpath=[file://<dir>]",
                    file=sys.stderr,
                )
                sys.exit(2)

        return original(hinted)

    hydra_utils.run_and_report = run_and_report


if __name__ == "__main__":
    _install_option_hint()
    main()
