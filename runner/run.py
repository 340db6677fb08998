"""``run(cfg)``: one experiment, from a composed config to a finished run dir.

The Hydra entry point (``runner/__main__.py``) only calls this. Everything here happens on
the driver: the config is resolved and validated, the model, strategy and resume point are
prepared, then Flower's simulation runs the ServerApp's round loop.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord
from omegaconf import DictConfig

from runner import task
from runner.checkpoint.fingerprint import fingerprint
from runner.checkpoint.resume import ResumePoint, resolve_resume
from runner.config import ConfigError, to_container, validate
from runner.server_app import LoopState, RoundLoop, ServerHooks, make_server_app
from runner.state import capture_rng, flat_metrics, restore_rng, round_metric, round_metrics
from runner.strategy import build_strategy, restore_strategy_state, strategy_state

log = logging.getLogger("runner")

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


def _to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def _record_to_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in arrays.items()}


# Test hook for crash drills: saves of this round and later stall on the writer thread, so
# a test can SIGKILL the process while a save is in flight. Unset in normal use.
_SLOW_SAVE_FROM = int(os.environ.get("RUNNER_TEST_SLOW_SAVE_FROM_ROUND", "0") or 0)


def _weights_for_save(arrays: ArrayRecord, rnd: int) -> Any:
    def weights() -> dict[str, np.ndarray]:
        if _SLOW_SAVE_FROM and rnd >= _SLOW_SAVE_FROM:
            time.sleep(120)
        return _record_to_numpy(arrays)

    return weights


def _apply_telemetry(setting: bool | None) -> None:
    if setting is None:
        return
    import flwr.supercore.telemetry as telemetry

    telemetry.FLWR_TELEMETRY_ENABLED = "1" if setting else "0"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from runner.checkpoint.formats import atomic_write

    text = json.dumps(data, indent=2, default=str).encode()
    atomic_write(path, lambda f: f.write(text))


class Experiment:
    """State and hooks of one run; the round loop calls back into it."""

    def __init__(self, run_cfg: dict[str, Any], output_dir: Path, launch_dir: Path) -> None:
        from runner.checkpoint.policy import CheckpointPolicy

        self.cfg = run_cfg
        self.out = output_dir
        self.launch_dir = launch_dir
        self.t_start = time.monotonic()
        self.fp = fingerprint(run_cfg)
        self.ck = run_cfg["checkpoint"]
        self.num_rounds = int(run_cfg["num_rounds"])
        self.policy = CheckpointPolicy(
            every_n_rounds=self.ck["every_n_rounds"],
            keep_last=self.ck["keep_last"],
            monitor=self.ck["monitor"],
            mode=self.ck["mode"],
        )
        self.writer: Any = None
        self.saved_rounds: set[int] = set()
        self.resumed_from: str | None = None
        self.first_round_s: float | None = None
        self.progress: Any = None

    # -- preparation --------------------------------------------------------------------
    def initial_state(self, strategy: Any) -> tuple[LoopState, ResumePoint | None]:
        import torch

        torch.manual_seed(int(self.cfg["seed"]))
        reference = task.state_to_numpy(task.build_model(self.cfg))
        weights = reference
        if self.cfg.get("init_weights"):
            from runner.checkpoint.migrate import load_foreign_weights

            weights = load_foreign_weights(Path(self.cfg["init_weights"]), reference)
            log.info("warm start from %s (weights only; round 1)", self.cfg["init_weights"])
        point = resolve_resume(self.cfg, self.fp, self.launch_dir, reference)
        if point is None:
            return LoopState(arrays=_to_record(weights)), None
        self.resumed_from = str(point.manifest_path)
        manifest = point.manifest
        rnd = int(manifest["round"])
        state = manifest["state"]
        restored = ["weights", "round", "metrics history"]
        skipped = []
        if point.restore_state:
            restored += ["strategy: " + n for n in restore_strategy_state(strategy, state["strategy"], point.state_arrays)]
            restore_rng(state["rng"])
            self.policy.load_state_dict(state["policy"])
            restored += ["rng (python, numpy, torch)", "best tracker"]
        else:
            skipped += ["strategy state", "rng", "best tracker"]
        log.info(
            "resuming from %s (round %d, phase %s): restored %s%s",
            point.manifest_path,
            rnd,
            manifest["phase"],
            ", ".join(restored),
            f"; not restored (config differs): {', '.join(skipped)}" if skipped else "",
        )
        eval_pending = bool(state.get("eval_pending")) and rnd <= self.num_rounds
        loop_state = LoopState(
            arrays=_to_record(point.weights),
            start_round=rnd + 1,
            eval_pending_round=rnd if eval_pending else None,
            history=list(state["history"]),
            rounds_done=rnd,
        )
        return loop_state, point

    # -- hooks --------------------------------------------------------------------------
    def on_row(self, row: dict[str, Any]) -> None:
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _submit(
        self,
        rnd: int,
        phase: str,
        arrays: ArrayRecord,
        st: LoopState,
        strategy: Any,
        is_best: bool,
        metrics: dict[str, float],
    ) -> None:
        from runner.checkpoint.store import CheckpointData

        meta, state_arrays = strategy_state(strategy)
        data = CheckpointData(
            round=rnd,
            phase=phase,
            weights=_weights_for_save(arrays, rnd),
            state_arrays=state_arrays,
            state={
                "eval_pending": phase == "fit",
                "history": list(st.history),
                "rng": capture_rng(),
                "strategy": meta,
                "policy": self.policy.state_dict(),
            },
            metrics=metrics,
            fingerprint=self.fp,
            config=self.cfg,
            resumed_from=self.resumed_from,
            is_best=is_best,
        )
        self.writer.submit(data)
        self.saved_rounds.add(rnd)

    def hooks(self, strategy: Any) -> ServerHooks:
        def after_fit(rnd: int, arrays: ArrayRecord, st: LoopState) -> None:
            if self.writer and self.ck["phase"] == "fit" and self.policy.should_save(rnd, self.num_rounds):
                self._submit(rnd, "fit", arrays, st, strategy, False, round_metrics(st.history, rnd))

        def after_evaluate(rnd: int, arrays: ArrayRecord, st: LoopState) -> None:
            metrics = round_metrics(st.history, rnd)
            is_best = self.policy.update_best(rnd, metrics)
            if not self.writer:
                return
            if self.ck["phase"] == "evaluate" and self.policy.should_save(rnd, self.num_rounds):
                self._submit(rnd, "evaluate", arrays, st, strategy, is_best, metrics)
            elif is_best and rnd in self.saved_rounds:
                self.writer.mark_best(rnd)  # fit-phase checkpoint saved before its metrics

        def on_round_end(rnd: int, st: LoopState) -> None:
            if self.first_round_s is None:
                self.first_round_s = time.monotonic() - self.t_start
            if self.progress is not None:
                self.progress.update(rnd, flat_metrics(st.history, rnd))

        return ServerHooks(self.on_row, after_fit, after_evaluate, on_round_end)

    # -- summary ------------------------------------------------------------------------
    def finish(self, status: str, st: LoopState | None, error: BaseException | None) -> dict[str, Any]:
        """Flush checkpoints, then write summary.json and the plots, also for a failed run."""
        try:
            if self.writer is not None:
                self.writer.close()
        except BaseException as exc:
            status, error = "failed", error or exc
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
            reason = None if error is None else f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
            summary = self.summary(status, st, reason)
            _write_json(self.out / SUMMARY_FILE, summary)
            _plot(self.out)
        return summary

    def summary(self, status: str, st: LoopState | None, error: str | None) -> dict[str, Any]:
        history = st.history if st else []
        monitor = self.ck["monitor"]
        best = self.policy.state_dict() if self.policy else {}
        ckdir = self.out / "checkpoints"
        pointers = {}
        for name in ("last", "best"):
            p = ckdir / f"{name}.json"
            pointers[name] = str(ckdir / json.loads(p.read_text())["manifest"]) if p.exists() else None
        return {
            "status": status,
            "num_rounds": self.num_rounds,
            "rounds_done": st.rounds_done if st else 0,
            "wall_time_s": round(time.monotonic() - self.t_start, 3),
            "time_to_first_round_s": None if self.first_round_s is None else round(self.first_round_s, 3),
            "final": flat_metrics(history),
            "best": {
                "metric": monitor,
                "mode": self.ck["mode"],
                "value": best.get("best_value"),
                "round": best.get("best_round"),
            },
            "resumed_from": self.resumed_from,
            "fingerprint": self.fp,
            "checkpoints": pointers,
            "error": error,
        }


def _progress(run_cfg: dict[str, Any], start_round: int) -> Any:
    from runner.report.progress import RoundProgress

    mode = run_cfg["progress"]
    if mode == "off":
        return None
    interactive = {"auto": None, "bar": True, "log": False}[mode]
    return RoundProgress(int(run_cfg["num_rounds"]), start_round=start_round, interactive=interactive)


def run(cfg: DictConfig, output_dir: Path, launch_dir: Path) -> float | None:
    """Run one experiment; returns the best value of ``checkpoint.monitor`` (for sweepers)."""
    from hydra.utils import instantiate

    from runner import client_app
    from runner.logs import tame_flower_logging

    tame_flower_logging()
    run_cfg = to_container(cfg)
    validate(run_cfg)
    _apply_telemetry(run_cfg["telemetry"])
    _refuse_used_dir(output_dir)
    if run_cfg["print_config"]:
        from runner.report.config_tree import print_config_tree

        print_config_tree(run_cfg, save_to=output_dir / "config_tree.txt")
    exp = Experiment(run_cfg, output_dir, launch_dir)
    try:
        strategy = build_strategy(run_cfg["strategy"])
        st, point = exp.initial_state(strategy)
    except BaseException as exc:
        exp.finish("failed", None, exc)
        raise
    if point is not None and int(point.manifest["round"]) >= exp.num_rounds:
        rnd = int(point.manifest["round"])
        log.warning("already complete at round %d (num_rounds=%d): nothing to do", rnd, exp.num_rounds)
        return round_metric(st.history, rnd, run_cfg["checkpoint"]["monitor"])

    log.info(
        "run dir %s | strategy %s | model %s | dataset %s | %d clients | rounds %d..%d | fingerprint %s",
        output_dir,
        run_cfg["strategy"]["_target_"].rsplit(".", 1)[-1],
        run_cfg["model"]["name"],
        run_cfg["dataset"]["name"],
        run_cfg["num_clients"],
        st.eval_pending_round or st.start_round,
        exp.num_rounds,
        exp.fp,
    )
    for row in st.history:  # carried-over history: the metrics file covers rounds 1..N
        exp.on_row(row)
    status, error = "failed", None
    try:
        if run_cfg["checkpoint"]["enabled"]:
            from runner.checkpoint.writer import CheckpointWriter

            exp.writer = CheckpointWriter(output_dir / "checkpoints", run_cfg["checkpoint"]["format"], exp.policy)
        exp.progress = _progress(run_cfg, st.eval_pending_round or st.start_round)
        loop = RoundLoop(run_cfg, strategy, exp.hooks(strategy), st)
        result: dict[str, Any] = {}
        engine = instantiate(run_cfg["engine"])
        engine.run(make_server_app(loop, result), client_app.app, int(run_cfg["num_clients"]), run_cfg["backend"])
        if "state" not in result:
            raise RuntimeError("the simulation ended without finishing the round loop")
        status = "stopped" if st.stopped_early else "completed"
    except BaseException as exc:
        error = exc
        raise
    finally:
        summary = exp.finish(status, st, error)
    best = summary["best"]["value"]
    log.info(
        "%s: %d/%d rounds in %.1fs | final %s | best %s=%s (round %s)",
        status,
        st.rounds_done,
        exp.num_rounds,
        summary["wall_time_s"],
        _fmt(summary["final"]),
        run_cfg["checkpoint"]["monitor"],
        best,
        summary["best"]["round"],
    )
    return None if best is None or (isinstance(best, float) and math.isnan(best)) else float(best)


def _refuse_used_dir(output_dir: Path) -> None:
    """Two runs must never share a dir: Hydra's default names it by the second it started."""
    if (output_dir / METRICS_FILE).exists() or list((output_dir / "checkpoints").glob("round-*.json")):
        raise ConfigError(
            "hydra.run.dir",
            f"{output_dir} already holds a run; start again (or set hydra.run.dir) so nothing is overwritten",
            show_value=False,
        )


def _fmt(metrics: dict[str, float]) -> str:
    keys = ("centralized_accuracy", "centralized_loss", "evaluate_accuracy", "train_loss")
    return " ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def _plot(output_dir: Path) -> None:
    try:
        from runner.report.plots import plot_run

        plot_run(output_dir)
    except Exception as exc:  # a plot must never fail a finished run
        log.warning("could not write plots: %s", exc)

