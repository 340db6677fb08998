"""``engine=deployment``: the same experiment on a real Flower federation, through Flower's CLI.

The user runs a SuperLink and SuperNodes (``flower-superlink``, ``flower-supernode
--node-config "partition-id=i num-partitions=N"``); ``python -m runner engine=deployment
engine.superlink=HOST:PORT`` then:

1. ``preflight``: the ``flwr`` CLI is there, ``engine.superlink`` is ``host:port`` and
   answers, TLS files exist, the app dir holds a ``[tool.flwr.app]`` pyproject, and enough
   SuperNodes are online (``flwr supernode ls``, waiting up to ``nodes_timeout``);
2. (runner.run: data, model and resume are checked on the driver as in simulation)
3. ``launch``: writes a private Flower config (``<run dir>/.flwr/config.toml``, one
   connection named ``runner``; the user's ``~/.flwr`` is never read or written unless
   ``engine.connection`` names one of its connections) and the run config
   (``<run dir>/.flwr/run-config.toml``: the resolved config as JSON, the absolute run and
   launch dirs, the job's name and group); copies the Flower App (``pyproject.toml`` and
   the files its ``fab-include`` lists: ``runner/`` and ``conf/``) to a temp dir, so the
   FAB build does not walk a virtualenv or old outputs; ``flwr run <app> runner
   --run-config … --format json``; follows ``flwr log <id> runner --stream`` (the
   ServerApp's log lines go to the console; the ServerApp writes ``runner.log`` itself) and
   reads the final status with ``flwr ls runner --run-id <id> --format json``.

The ServerApp (runner/engine/deployment_app.py) runs :func:`runner.run.serve` on the
SuperLink's machine: checkpoints, metrics, plots and summary.json land in the run dir given
by absolute path, so the SuperLink must see that dir (same machine or a shared file
system). ``launch`` returns the best ``checkpoint.monitor`` value from that summary.json.

Ending: a ``finished:failed``/``finished:stopped`` run is one line (``error: Flower run
…``, exit 1, as every engine failure during a run; preflight's setting errors exit 2).
Ctrl-C or SIGTERM of the driver stops the Flower run (``flwr stop``) before it exits. A
SIGKILLed (or OOM-killed) driver cannot do that itself: a small watchdog process in its
own session holds a pipe from the driver and runs ``flwr stop`` when the pipe closes
without the driver having said it is done. ``stop_on_exit: false`` leaves the run
going instead (it finishes on its own and writes its outputs; follow it with
``FLWR_HOME=<run dir>/.flwr flwr log <id> runner``). When the ServerApp process dies
(killed, OOM) on this machine, Flower only notices after its heartbeat timeout (~40-60 s);
the driver sees the process gone (pid in ``<run dir>/serverapp.json``), stops the run and
reports it at once.

``LocalFederation`` starts a SuperLink and N SuperNodes on loopback (``--insecure``) for a
first try, the tests and the benchmark: ``python -m runner.engine.deployment local 3``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.config import ConfigError
from runner.engine.deployment_app import JOB_GROUP, JOB_NAME, LAUNCH_DIR, OUTPUT_DIR, PROCESS_FILE, RUN_CONFIG
from runner.engine.guard import EngineError

log = logging.getLogger("runner")

CONNECTION = "runner"  # the connection name in the private Flower config
HOME_DIR = ".flwr"  # <run dir>/.flwr: the private FLWR_HOME of the driver's flwr CLI calls
RUN_CONFIG_FILE = "run-config.toml"
RUN_RECORD_FILE = "run.json"  # `flwr ls --run-id` of the finished run
SUMMARY_FILE = "summary.json"
SERVERAPP_GRACE_S = 15.0  # the ServerApp process is gone: how long the run may take to end on its own
STATUS_WAIT_S = 30.0  # after the log stream ended: how long the status may stay unfinished
STREAM_RETRIES = 3
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NOISE = ("HTTP Request:", "Starting logstream for run_id", "Exiting logstream", "Using SuperLink:")


class DeploymentError(EngineError):
    """The Flower run did not complete (failed, stopped, interrupted, lost): one ``error:``
    line and exit 1, as any engine failure during a run; settings the user can fix are
    ``ConfigError`` from ``preflight`` (exit 2)."""


# ------------------------------------------------------------------------------ helpers


def _flwr_cli(explicit: str | None) -> str | None:
    """The ``flwr`` CLI: ``engine.flwr``, else the one beside this Python, else PATH."""
    if explicit:
        found = shutil.which(explicit)
        return found or (explicit if Path(explicit).is_file() else None)
    beside = Path(sys.executable).with_name("flwr")
    if beside.is_file():
        return str(beside)
    return shutil.which("flwr")


def parse_address(address: Any) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError otherwise."""
    text = str(address or "").strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\s\[\]]+):(\d+)", text)
    if not m:
        raise ValueError("expected host:port of the SuperLink (flower-superlink --port), e.g. 127.0.0.1:9093")
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _parse_json(text: str) -> dict[str, Any]:
    """The JSON object a ``flwr … --format json`` call printed (other lines around it ignored)."""
    text = text.strip()
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict):
            return data
    start = text.find("{")
    if start >= 0:
        with contextlib.suppress(ValueError):
            data, _ = json.JSONDecoder().raw_decode(text[start:])
            if isinstance(data, dict):
                return data
    raise ValueError(f"no JSON object in the flwr CLI output: {text[-300:]!r}")


def _one_line(text: Any) -> str:
    lines = [ln.strip() for ln in _ANSI.sub("", str(text or "")).splitlines() if ln.strip()]
    return " | ".join(lines)[-600:] if lines else ""


def runner_project_dir() -> Path:
    """The runner's own project dir (an editable install or a checkout: pyproject.toml next
    to the ``runner`` package)."""
    import runner

    return Path(runner.__file__).resolve().parents[1]


def _read_pyproject(app_dir: Path) -> dict[str, Any]:
    import tomllib

    with open(app_dir / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def stage_app(app_dir: Path, dest: Path, ship: list[Path] | None = None) -> Path:
    """Copy the Flower App at ``app_dir`` into ``dest``: pyproject.toml and the files its
    ``[tool.flwr.app] fab-include`` patterns match (everything when it has none), plus the
    packages or modules in ``ship`` (added to ``fab-include``). ``flwr run`` then builds
    the FAB from a small tree instead of walking a project with a virtualenv in it."""
    import tomli_w
    from flwr.cli.utils import build_pathspec  # Flower's own pattern rules (gitignore style)

    config = _read_pyproject(app_dir)
    app_table = config.setdefault("tool", {}).setdefault("flwr", {}).setdefault("app", {})
    include = app_table.get("fab-include")
    dest.mkdir(parents=True, exist_ok=True)
    if include:
        spec = build_pathspec(include)
        tops = {p.split("/", 1)[0] for p in include if "/" in p and not any(c in p.split("/", 1)[0] for c in "*?[")}
        roots = [app_dir / t for t in sorted(tops)] if tops and all((app_dir / t).exists() for t in tops) else [app_dir]
        for root in roots:
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames[:] = [d for d in dirnames if d != "__pycache__" and not d.startswith(".")]
                for name in filenames:
                    path = Path(dirpath) / name
                    rel = path.relative_to(app_dir).as_posix()
                    if spec.match_file(rel):
                        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(path, dest / rel)
    else:
        shutil.copytree(app_dir, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    extra: list[str] = []
    for src in ship or []:
        if src.is_dir():
            shutil.copytree(src, dest / src.name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
            extra += [f"{src.name}/**/*.py", f"{src.name}/**/*.yaml"]
        else:
            shutil.copy2(src, dest / src.name)
            extra.append(src.name)
    if include and extra:
        app_table["fab-include"] = [*include, *[e for e in extra if _matches_any(dest, e)]]
    (dest / "pyproject.toml").write_text(tomli_w.dumps(config))
    return dest


def _matches_any(root: Path, pattern: str) -> bool:
    """Flower refuses a fab-include pattern that matches no file."""
    from flwr.cli.utils import build_pathspec

    spec = build_pathspec([pattern])
    return any(spec.match_file(p.relative_to(root).as_posix()) for p in root.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the engine


@dataclass
class FlowerRun:
    run_id: str
    status: str = ""
    details: str = ""
    info: dict[str, Any] | None = None


class DeploymentEngine:
    """Runs the experiment's round loop as a Flower App on a running SuperLink.

    Arguments (``engine.*``, conf/engine/deployment.yaml):

    - ``superlink``: ``host:port`` of ``flower-superlink --port`` (one port serves the
      Fleet, Control and Runtime APIs in Flower 1.42).
    - ``insecure``: plain HTTP to the SuperLink; ``null`` (default): insecure for a
      loopback address, TLS otherwise. ``root_certificates``: the CA certificate (PEM)
      that signed the SuperLink's certificate; null with TLS: the system CA store.
    - ``federation``: ``@account/name`` on a SuperLink with several federations.
    - ``connection``: the name of a connection in your own Flower config
      (``$FLWR_HOME/config.toml``, default ``~/.flwr/config.toml``), e.g. after ``flwr
      login`` for an account-authenticated SuperLink; used instead of the keys above.
    - ``app_dir``: the Flower App dir (pyproject.toml with the runner's
      ``[tool.flwr.app]``); null: the runner's own project.
    - ``ship``: extra packages/modules (paths, relative to the launch dir) copied into the
      FAB, e.g. your own model code, so the ServerApp and every SuperNode import it from
      the FAB instead of needing it installed.
    - ``run_args``: extra arguments for ``flwr run`` (e.g. ``[--federation-config,
      'k=v']``).
    - ``flwr``: the ``flwr`` CLI (null: the one beside this Python, else PATH).
    - ``min_nodes``: SuperNodes that must be online before the run is submitted (null:
      ``num_clients``; 0: do not check); ``nodes_timeout``: how long preflight waits for
      them.
    - ``submit_timeout``: seconds for ``flwr run`` to submit (build the FAB, upload).
    - ``stop_on_exit``: stop the Flower run when the driver ends early (Ctrl-C, SIGTERM,
      SIGKILL through the watchdog).
    - ``stream_logs``: show the ServerApp's log lines on the console.
    """

    def __init__(
        self,
        superlink: str = "127.0.0.1:9093",
        insecure: bool | None = None,
        root_certificates: str | None = None,
        federation: str | None = None,
        connection: str | None = None,
        app_dir: str | None = None,
        ship: list[str] | None = None,
        run_args: list[str] | None = None,
        flwr: str | None = None,
        min_nodes: int | None = None,
        nodes_timeout: float = 60.0,
        submit_timeout: float = 120.0,
        stop_on_exit: bool = True,
        stream_logs: bool = True,
    ) -> None:
        self.superlink = superlink
        self.insecure = insecure
        self.root_certificates = root_certificates
        self.federation = federation
        self.connection = connection
        self.app_dir = app_dir
        self.ship = list(ship or [])
        self.run_args = [str(a) for a in run_args or []]
        self.flwr = flwr
        self.min_nodes = min_nodes
        self.nodes_timeout = float(nodes_timeout)
        self.submit_timeout = float(submit_timeout)
        self.stop_on_exit = bool(stop_on_exit)
        self.stream_logs = bool(stream_logs)
        self._cli: str | None = None
        self._home: Path | None = None  # FLWR_HOME of the CLI calls (None: the user's own)

    # -- configuration -----------------------------------------------------------------------
    def _use_tls(self, host: str) -> bool:
        if self.insecure is not None:
            return not self.insecure
        return bool(self.root_certificates) or not is_loopback(host)

    def connection_table(self) -> dict[str, Any]:
        """The ``[superlink.runner]`` connection of the private Flower config."""
        host, _ = parse_address(self.superlink)
        table: dict[str, Any] = {"address": str(self.superlink).strip()}
        if self._use_tls(host):
            if self.root_certificates:
                table["root-certificates"] = str(Path(self.root_certificates).expanduser().resolve())
        else:
            table["insecure"] = True
        if self.federation:
            table["federation"] = str(self.federation)
        return table

    def _conn_name(self) -> str:
        return self.connection or CONNECTION

    def _env(self, run_cfg: dict[str, Any] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        if self._home is not None:
            env["FLWR_HOME"] = str(self._home)
        telemetry = None if run_cfg is None else run_cfg.get("telemetry")
        if telemetry is not None:
            env["FLWR_TELEMETRY_ENABLED"] = "1" if telemetry else "0"
        else:
            env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env["PYTHONUNBUFFERED"] = "1"
        env.setdefault("NO_COLOR", "1")
        return env

    def _write_home(self, home: Path) -> None:
        import tomli_w

        home.mkdir(parents=True, exist_ok=True)
        config = {"superlink": {"default": CONNECTION, CONNECTION: self.connection_table()}}
        (home / "config.toml").write_text(tomli_w.dumps(config))
        self._home = home

    def _flwr(
        self, args: list[str], timeout: float, run_cfg: dict[str, Any] | None = None
    ) -> subprocess.CompletedProcess[str]:
        assert self._cli is not None
        return subprocess.run(
            [self._cli, *args],
            env=self._env(run_cfg),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def _app_dir(self) -> Path:
        return Path(self.app_dir).expanduser().resolve() if self.app_dir else runner_project_dir()

    # -- preflight -----------------------------------------------------------------------------
    def preflight(self, run_cfg: dict[str, Any]) -> None:
        """Everything that can be checked before the data is loaded: one-line errors."""
        self._cli = _flwr_cli(self.flwr)
        if self._cli is None:
            raise ConfigError(
                "engine.flwr",
                "the `flwr` CLI was not found (beside this Python or on PATH): pip install flwr",
                show_value=False,
            )
        self._check_app_dir()
        for key, path in (("engine.ship", p) for p in self.ship):
            if not Path(path).expanduser().exists():
                raise ConfigError(
                    key, f"{path} does not exist (paths are relative to the launch dir)", show_value=False
                )
        if self.connection:
            self._home = None  # the user's own Flower config
            self._check_nodes(run_cfg)
            return
        try:
            host, port = parse_address(self.superlink)
        except ValueError as exc:
            raise ConfigError("engine.superlink", str(exc), self.superlink) from None
        if self.root_certificates is not None:
            cert = Path(self.root_certificates).expanduser()
            if not cert.is_file():
                raise ConfigError("engine.root_certificates", f"{cert} is not a file", show_value=False)
            if self.insecure:
                raise ConfigError(
                    "engine.root_certificates", "set with engine.insecure=true: choose TLS or not", show_value=False
                )
        reason = _reachable(host, port, timeout=5.0)
        if reason is not None:
            raise ConfigError(
                "engine.superlink",
                f"no SuperLink answers at {host}:{port} ({reason}); start one with "
                f"`flower-superlink --port {port} …` or point engine.superlink at it",
                show_value=False,
            )
        self._home = Path(tempfile.mkdtemp(prefix="runner-flwr-"))  # until launch() moves it into the run dir
        try:
            self._write_home(self._home)
            self._check_nodes(run_cfg)
        finally:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def _check_app_dir(self) -> None:
        app = self._app_dir()
        pyproject = app / "pyproject.toml"
        key = "engine.app_dir"
        if not pyproject.is_file():
            where = "the runner's project dir" if not self.app_dir else str(app)
            raise ConfigError(
                key,
                f"no pyproject.toml in {where} ({app}): install the runner with `pip install -e <checkout>` "
                "or set engine.app_dir to a checkout",
                show_value=False,
            )
        try:
            table = _read_pyproject(app).get("tool", {}).get("flwr", {}).get("app", {})
        except Exception as exc:  # noqa: BLE001 - a broken pyproject is a user error
            raise ConfigError(key, f"{pyproject}: {_one_line(exc)}", show_value=False) from None
        components = table.get("components", {})
        if not components.get("serverapp") or not components.get("clientapp"):
            raise ConfigError(
                key, f"{pyproject} has no [tool.flwr.app.components] serverapp/clientapp", show_value=False
            )
        missing = [k for k in (RUN_CONFIG, OUTPUT_DIR, LAUNCH_DIR) if k not in table.get("config", {})]
        if missing:
            raise ConfigError(
                key,
                f"{pyproject} [tool.flwr.app.config] lacks {', '.join(missing)} (see the runner's pyproject)",
                show_value=False,
            )

    def _check_nodes(self, run_cfg: dict[str, Any]) -> None:
        """Wait (up to ``nodes_timeout``) until enough SuperNodes are online."""
        need = int(run_cfg["num_clients"]) if self.min_nodes is None else int(self.min_nodes)
        if need <= 0:
            return
        deadline = time.monotonic() + self.nodes_timeout
        online, note = -1, ""
        while True:
            try:
                p = self._flwr(["supernode", "ls", self._conn_name(), "--format", "json"], timeout=60, run_cfg=run_cfg)
                data = _parse_json(p.stdout)
            except (ValueError, subprocess.TimeoutExpired) as exc:
                note = _one_line(exc)
                data = {}
            if data.get("success") is False:
                raise ConfigError(
                    "engine.superlink",
                    f"the SuperLink at {self.superlink} refused the Control API call: "
                    f"{_one_line(data.get('error-message'))}",
                    show_value=False,
                )
            if "nodes" in data:
                online = sum(1 for n in data["nodes"] if str(n.get("status")) == "online")
                if online >= need:
                    log.info(
                        "%d SuperNodes online at %s", online, self.superlink if not self.connection else self.connection
                    )
                    return
            if time.monotonic() >= deadline:
                break
            time.sleep(2.0)
        if online < 0:
            log.warning("could not count the SuperNodes (flwr supernode ls: %s); the ServerApp waits for them", note)
            return
        raise ConfigError(
            "engine.superlink",
            f"{online} SuperNode(s) online at {self.superlink}, this run needs {need} (num_clients): start one per "
            f"partition with `flower-supernode --superlink {self.superlink} --node-config "
            f'"partition-id=<i> num-partitions={run_cfg["num_clients"]}" --port <own port> …`',
            show_value=False,
        )

    # -- launch ------------------------------------------------------------------------------
    def launch(self, run_cfg: dict[str, Any], job: Any) -> float | None:
        """Submit the run to the SuperLink, follow it to the end, return the best monitored value."""
        if self._cli is None:
            self.preflight(run_cfg)
        output_dir = Path(job.output_dir).resolve()
        launch_dir = Path(job.launch_dir).resolve()
        home = output_dir / HOME_DIR
        if not self.connection:
            self._write_home(home)
        else:
            home.mkdir(parents=True, exist_ok=True)
        overrides = home / RUN_CONFIG_FILE
        _write_run_config(overrides, run_cfg, output_dir, launch_dir, job)
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="runner-fab-") as tmp:
            ship = [(launch_dir / p).resolve() for p in self.ship]
            app = stage_app(self._app_dir(), Path(tmp) / "app", ship)
            watchdog = _Watchdog.start(self, home, run_cfg) if self.stop_on_exit else None
            try:
                run = self._submit(app, overrides, run_cfg)
            except BaseException:
                if watchdog is not None:
                    watchdog.done()
                raise
        log.info(
            "Flower run %s submitted to %s in %.1fs; follow it with: FLWR_HOME=%s flwr log %s %s",
            run.run_id,
            self.connection or self.superlink,
            time.monotonic() - t0,
            home if not self.connection else "$FLWR_HOME",
            run.run_id,
            self._conn_name(),
        )
        if watchdog is not None:
            watchdog.watch(run.run_id)
        finished = False
        try:
            with _raise_on_sigterm():
                reason = self._follow(run, output_dir, run_cfg)
            finished = True
        except BaseException as exc:
            if self.stop_on_exit and not finished:
                why = {KeyboardInterrupt: "Ctrl-C", _Terminated: "SIGTERM"}.get(type(exc), type(exc).__name__)
                self._stop(run, run_cfg, why=f"driver: {why}")
                if isinstance(exc, (KeyboardInterrupt, _Terminated)):
                    _record_failure(output_dir, f"Flower run {run.run_id} stopped: the driver was interrupted ({why})")
                    raise DeploymentError(
                        f"Flower run {run.run_id} stopped: the driver was interrupted ({why}); "
                        f"{_progress_note(output_dir)}"
                    ) from None
            raise
        finally:
            if watchdog is not None:
                watchdog.done()
        return self._outcome(run, output_dir, reason)

    def _submit(self, app: Path, overrides: Path, run_cfg: dict[str, Any]) -> FlowerRun:
        args = ["run", str(app), self._conn_name(), "--run-config", str(overrides), "--format", "json", *self.run_args]
        try:
            p = self._flwr(args, timeout=self.submit_timeout, run_cfg=run_cfg)
        except subprocess.TimeoutExpired:
            raise DeploymentError(
                f"`flwr run` did not submit the run within {self.submit_timeout:.0f}s (engine.submit_timeout)"
            ) from None
        try:
            data = _parse_json(p.stdout)
        except ValueError:
            raise DeploymentError(
                f"`flwr run` failed (exit {p.returncode}): {_one_line(p.stderr or p.stdout)}"
            ) from None
        if not data.get("success") or not data.get("run-id"):
            raise DeploymentError(f"the SuperLink refused the run: {_one_line(data.get('error-message') or data)}")
        return FlowerRun(str(data["run-id"]))

    def _follow(self, run: FlowerRun, output_dir: Path, run_cfg: dict[str, Any]) -> str | None:
        """Stream the run's logs until it ends; returns why the driver had to stop it, if it did."""
        monitor = _ServerAppMonitor(output_dir / PROCESS_FILE, run.run_id)
        echoed = 0
        reason: str | None = None
        for attempt in range(STREAM_RETRIES + 1):
            stream = _LogStream(self, run, run_cfg)
            try:
                skip = echoed
                while True:
                    try:
                        line = stream.lines.get(timeout=1.0)
                    except queue.Empty:
                        line = ""
                    if line is None:  # the stream ended
                        break
                    if line:
                        if skip > 0:
                            skip -= 1
                        else:
                            echoed += 1
                            self._echo(line)
                    if reason is None:
                        dead = monitor.dead_for()
                        if dead is not None and dead > SERVERAPP_GRACE_S:
                            reason = monitor.describe()
                            log.error("%s; stopping Flower run %s", reason, run.run_id)
                            self._stop(run, run_cfg, why="ServerApp process gone")
            finally:
                stream.close()
            self._status(run, run_cfg)
            if run.status.startswith("finished"):
                return reason
            if attempt < STREAM_RETRIES:
                log.warning(
                    "the log stream of Flower run %s ended while it is %s; reconnecting", run.run_id, run.status
                )
                time.sleep(2.0 * (attempt + 1))
        raise DeploymentError(
            f"lost the log stream of Flower run {run.run_id} ({run.status or 'status unknown'}): it may still be "
            f"running; see `FLWR_HOME={self._home or '$FLWR_HOME'} flwr ls {self._conn_name()} --run-id {run.run_id}`"
        )

    def _echo(self, line: str) -> None:
        text = _ANSI.sub("", line.rstrip("\n"))
        if not self.stream_logs or not text.strip() or any(n in text for n in _NOISE):
            return
        print(text, flush=True)

    def _status(self, run: FlowerRun, run_cfg: dict[str, Any]) -> None:
        deadline = time.monotonic() + STATUS_WAIT_S
        while True:
            try:
                p = self._flwr(
                    ["ls", self._conn_name(), "--run-id", run.run_id, "--format", "json"], timeout=60, run_cfg=run_cfg
                )
                data = _parse_json(p.stdout)
                runs = data.get("runs") or []
                if runs:
                    run.info = runs[0]
                    run.status = str(runs[0].get("status", ""))
                    run.details = str(runs[0].get("status-details", ""))
            except (ValueError, subprocess.TimeoutExpired) as exc:
                log.warning("flwr ls: %s", _one_line(exc))
            if run.status.startswith("finished") or time.monotonic() > deadline:
                return
            time.sleep(1.0)

    def _stop(self, run: FlowerRun, run_cfg: dict[str, Any], why: str) -> None:
        try:
            p = self._flwr(["stop", run.run_id, self._conn_name(), "--format", "json"], timeout=60, run_cfg=run_cfg)
            ok = _parse_json(p.stdout).get("success", False) if p.stdout.strip() else p.returncode == 0
            log.warning("stopped Flower run %s (%s)%s", run.run_id, why, "" if ok else f": {_one_line(p.stdout)}")
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("could not stop Flower run %s: %s", run.run_id, _one_line(exc))

    def _outcome(self, run: FlowerRun, output_dir: Path, reason: str | None) -> float | None:
        if run.info is not None:  # Flower's record of the run: status, timestamps, traffic, compute time
            with contextlib.suppress(OSError):
                (output_dir / HOME_DIR / RUN_RECORD_FILE).write_text(json.dumps(run.info, indent=2))
        summary = _read_summary(output_dir)
        elapsed = (run.info or {}).get("elapsed")
        if run.status == "finished:completed" and reason is None:
            log.info("Flower run %s completed%s", run.run_id, f" in {float(elapsed):.1f}s" if elapsed else "")
            if summary is None:
                log.warning(
                    "no %s in %s: the ServerApp writes its outputs on the SuperLink's machine; "
                    "the run dir must be on a file system both see",
                    SUMMARY_FILE,
                    output_dir,
                )
                return None
            value = (summary.get("best") or {}).get("value")
            if value is None or (isinstance(value, float) and value != value):
                return None
            return float(value)
        why = reason or (run.details if run.details and run.details != "N/A" else run.status or "unknown status")
        if summary is None or summary.get("status") == "completed":
            _record_failure(output_dir, f"Flower run {run.run_id} {run.status}: {why}")
        raise DeploymentError(
            f"Flower run {run.run_id} {run.status.replace('finished:', '') or 'ended'}: {_one_line(why)}; "
            f"{_progress_note(output_dir)}"
        )


# ------------------------------------------------------------------------ run bookkeeping


def _write_run_config(path: Path, run_cfg: dict[str, Any], output_dir: Path, launch_dir: Path, job: Any) -> None:
    import tomli_w

    values = {
        RUN_CONFIG: json.dumps(run_cfg, sort_keys=True),
        OUTPUT_DIR: str(output_dir),
        LAUNCH_DIR: str(launch_dir),
        JOB_NAME: str(getattr(job, "name", "") or ""),
        JOB_GROUP: str(getattr(job, "group", "") or ""),
    }
    path.write_text(tomli_w.dumps(values))


def _read_summary(output_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((output_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_round(output_dir: Path) -> int | None:
    from runner.checkpoint.store import CHECKPOINTS_DIR, CheckpointError, scan

    try:
        manifests = scan(output_dir / CHECKPOINTS_DIR)  # sorted by round
    except CheckpointError:
        return None
    return manifests[-1].round if manifests else None


def _progress_note(output_dir: Path) -> str:
    last = _last_round(output_dir)
    if last is None:
        return f"no checkpoint in {output_dir}; details in {output_dir / 'runner.log'}"
    return f"checkpoints up to round {last} in {output_dir} (resume=latest continues); details in runner.log"


def _record_failure(output_dir: Path, error: str) -> None:
    """summary.json for a run whose ServerApp could not write one (killed): sweeps list it."""
    summary = _read_summary(output_dir)
    if summary is not None and summary.get("status") not in (None, "completed"):
        return
    from runner.report._atomic import atomic_write_text

    last = _last_round(output_dir)
    data = {
        "status": "failed",
        "rounds_done": last or 0,
        "last_round": last,  # the last checkpointed round: resume=latest continues after it
        "warnings": [f"the ServerApp did not finish: {error}"],
        "failures": {"failed_rounds": 0, "failed_round_numbers": [], "client_failures": 0, "first_error": error},
        "error": error,
    }
    with contextlib.suppress(OSError):
        atomic_write_text(output_dir / SUMMARY_FILE, json.dumps(data, indent=2))


class _Terminated(BaseException):
    """SIGTERM of the driver (a scheduler's preemption, `kill`): stop the Flower run first."""


@contextlib.contextmanager
def _raise_on_sigterm() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _ServerAppMonitor:
    """Watches the ServerApp process of this run when it runs on this machine."""

    def __init__(self, record: Path, run_id: str) -> None:
        self.record = record
        self.run_id = run_id
        self.pid: int | None = None
        self.created: float | None = None
        self.gone_at: float | None = None
        self.checked_at = 0.0

    def dead_for(self) -> float | None:
        """Seconds since this run's ServerApp process (on this host) disappeared, else None."""
        now = time.monotonic()
        if now - self.checked_at < 1.0:
            return None if self.gone_at is None else now - self.gone_at
        self.checked_at = now
        import psutil

        if self.pid is None:
            try:
                info = json.loads(self.record.read_text())
            except (OSError, ValueError):
                return None
            if str(info.get("run_id")) != self.run_id or info.get("host") != socket.gethostname():
                return None
            # only a process this driver has seen alive as flwr-serverapp counts (another host
            # or pid namespace with the same host name must never look like a dead ServerApp)
            try:
                proc = psutil.Process(int(info["pid"]))
                if not any("flwr-serverapp" in a for a in proc.cmdline()):
                    return None
                self.pid, self.created = proc.pid, proc.create_time()
            except psutil.Error:
                return None
        if self.gone_at is None and not self._alive(psutil):
            self.gone_at = now
        return None if self.gone_at is None else now - self.gone_at

    def _alive(self, psutil: Any) -> bool:
        try:
            p = psutil.Process(self.pid)
            return (self.created is None or p.create_time() == self.created) and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def describe(self) -> str:
        return f"the ServerApp process (pid {self.pid}) is gone but its run did not end (killed? out of memory?)"


class _LogStream:
    """``flwr log <id> <conn> --stream`` in a child process; its lines in a queue (None: ended)."""

    def __init__(self, engine: DeploymentEngine, run: FlowerRun, run_cfg: dict[str, Any]) -> None:
        assert engine._cli is not None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.proc = subprocess.Popen(
            [engine._cli, "log", run.run_id, engine._conn_name(), "--stream"],
            env=engine._env(run_cfg),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _die_with_parent() -> None:
    """In the child: SIGKILL when the driver dies (prctl PR_SET_PDEATHSIG), so a killed
    driver leaves no log stream behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


# --------------------------------------------------------------------------------- watchdog

_WATCHDOG_CODE = r"""
import subprocess, sys
flwr, conn = sys.argv[1], sys.argv[2]
run_id, done = None, False
for line in sys.stdin:
    line = line.strip()
    if line.startswith("run "):
        run_id = line[4:]
    elif line == "done":
        done = True
if run_id and not done:
    sys.stderr.write("driver gone: stopping Flower run %s\n" % run_id)
    subprocess.run([flwr, "stop", run_id, conn], timeout=120, stdin=subprocess.DEVNULL)
"""


class _Watchdog:
    """A tiny process in its own session (stdlib only) that stops the Flower run if the
    driver dies without saying it is done: the kernel closes the driver's end of the pipe
    whatever killed it (SIGKILL, OOM)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc

    @classmethod
    def start(cls, engine: DeploymentEngine, home: Path, run_cfg: dict[str, Any]) -> _Watchdog:
        assert engine._cli is not None
        out = open(home / "watchdog.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG_CODE, engine._cli, engine._conn_name(), str(home)],
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=out,
                env=engine._env(run_cfg),
                start_new_session=True,
                cwd=str(home),
            )
        finally:
            out.close()
        return cls(proc)

    def _send(self, text: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.write(text.encode())
            self.proc.stdin.flush()

    def watch(self, run_id: str) -> None:
        self._send(f"run {run_id}\n")

    def done(self) -> None:
        self._send("done\n")
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ------------------------------------------------------------------------ local federation


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class LocalFederation:
    """A SuperLink and ``num_supernodes`` SuperNodes on loopback, ``--insecure``, for trying
    ``engine=deployment`` on one machine, for tests and for the benchmark.

    Each process gets its own free port, its own ``FLWR_HOME`` under ``base_dir`` and its
    own session; SuperNode ``i`` holds ``--node-config "partition-id=i
    num-partitions=N"``. The SuperLink runs with ``--disable-runtime-dependency-installation``
    (the runner is installed here). ``poll_interval`` sets
    ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (Flower's default 1.0 s; 0.1 s makes rounds
    ~3 s faster). ``stop()`` ends every process it started and their descendants (the
    SuperExecs, ServerApp and ClientApp processes), SIGKILL after ``grace`` seconds.
    """

    def __init__(
        self,
        num_supernodes: int,
        base_dir: Path,
        poll_interval: float | None = 0.1,
        env: dict[str, str] | None = None,
        python_bin: Path | None = None,
    ) -> None:
        self.num_supernodes = num_supernodes
        self.base_dir = Path(base_dir).resolve()
        self.poll_interval = poll_interval
        self.extra_env = dict(env or {})
        self.bin = python_bin or Path(sys.executable).parent
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.node_ports: list[int] = []
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._seen: dict[int, Any] = {}

    def _env(self, name: str) -> dict[str, str]:
        home = self.base_dir / f"home-{name}"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "FLWR_TELEMETRY_ENABLED": os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
            "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if self.poll_interval is not None:
            env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(self.poll_interval)
        env.update(self.extra_env)
        return env

    def _start(self, name: str, args: list[str]) -> None:
        with open(self.base_dir / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                args,
                env=self._env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.base_dir),
                start_new_session=True,
                # a killed test or benchmark takes its federation along (their SuperExecs
                # follow through --parent-pid)
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
            )
        self.procs.append((name, proc))

    def start(self, timeout: float = 120.0) -> str:
        """Start everything; returns the SuperLink address once all SuperNodes are online."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._start(
            "superlink",
            [
                str(self.bin / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while _reachable("127.0.0.1", self.port, 1.0) is not None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the SuperLink did not open port {self.port}: {self.log_tail('superlink')}")
            time.sleep(0.1)
        n = self.num_supernodes
        for i in range(n):
            port = free_port()
            self.node_ports.append(port)
            self._start(
                f"supernode-{i}",
                [
                    str(self.bin / "flower-supernode"), "--insecure", "--superlink", self.address,
                    "--host", "127.0.0.1", "--port", str(port),
                    "--node-config", f"partition-id={i} num-partitions={n}",
                ],
            )  # fmt: skip
        while self.online() < n:
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.online()} of {n} SuperNodes came online in {timeout:.0f}s")
            time.sleep(0.2)
        self._remember()
        return self.address

    def online(self) -> int:
        """SuperNodes that activated (from the SuperLink's log: no CLI call)."""
        try:
            text = (self.base_dir / "superlink.log").read_text(errors="replace")
        except OSError:
            return 0
        return len(set(re.findall(r"Activated node_id=(\d+)", text)))

    def log_tail(self, name: str, chars: int = 2000) -> str:
        try:
            return (self.base_dir / f"{name}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")

    def _remember(self) -> list[Any]:
        """Every live process of this federation (remembered with its start time)."""
        import psutil

        for _, proc in self.procs:
            try:
                top = psutil.Process(proc.pid)
                for p in [top, *top.children(recursive=True)]:
                    self._seen.setdefault(p.pid, p)
            except psutil.Error:
                pass
        marks = [f"127.0.0.1:{self.port}", str(self.base_dir)] + [f"127.0.0.1:{p}" for p in self.node_ports]
        for p in psutil.process_iter(["cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.pid != os.getpid() and any(m in cmd for m in marks):
                    self._seen.setdefault(p.pid, p)
            except psutil.Error:
                pass
        return self.processes()

    def processes(self) -> list[Any]:
        """The live (non-zombie) processes of this federation."""
        import psutil

        alive = []
        for p in list(self._seen.values()):
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        return alive

    def stop(self, grace: float = 10.0) -> list[str]:
        """SIGTERM everything of this federation, SIGKILL what is left after ``grace``;
        returns the command lines that needed SIGKILL."""
        import psutil

        procs = self._remember()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=grace)
        stubborn = []
        for p in alive:
            with contextlib.suppress(psutil.Error):
                stubborn.append(" ".join(p.cmdline())[:160])
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        for _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return stubborn

    def __enter__(self) -> LocalFederation:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _main(argv: list[str]) -> int:
    """``python -m runner.engine.deployment local [N]``: a loopback federation until Ctrl-C."""
    if not argv or argv[0] != "local":
        print("usage: python -m runner.engine.deployment local [NUM_SUPERNODES]", file=sys.stderr)
        return 2
    n = int(argv[1]) if len(argv) > 1 else 3
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the federation on `kill` too
    base = Path(tempfile.mkdtemp(prefix="runner-federation-"))
    fed = LocalFederation(n, base)
    try:
        address = fed.start()
        print(f"SuperLink at {address} with {n} SuperNodes (logs in {base}); Ctrl-C stops them.", flush=True)
        print(f"  python -m runner engine=deployment engine.superlink={address} num_clients={n}", flush=True)
        while True:
            time.sleep(1.0)
            fed._check_alive()
    except KeyboardInterrupt:
        return 0
    finally:
        fed.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
