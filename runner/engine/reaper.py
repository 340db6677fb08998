"""A watchdog that ends this run's local Ray processes once the driver is gone.

Why it exists: Ray ties its head processes (GCS, raylet, dashboard, log monitor) to the
driver with the kernel's parent-death signal, so they die with it, but the raylet's own
children do not: the dashboard agent and the runtime-env agent notice the raylet's death
after ~2 s, then try to report it to the (dead) GCS and stay alive about a minute; client
actors take a few seconds. After a SIGKILL or an OOM kill of the driver nothing of Ray's
cleans them up sooner.

How: before the runner starts a local Ray instance it starts this file as a tiny process
(stdlib only, ``python -I -S``, in a session of its own) with a pipe from the driver as its
stdin, and puts a token unique to this driver into the environment Ray's processes are
started with. While the driver runs, the watchdog notes every process of this run: the
driver's children that carry the token (GCS, raylet, dashboard, log monitor) and all their
descendants (agents, workers, actors; the agents rewrite their environment, so descent
from the raylet is what identifies them), with their start times. It looks when the
driver writes to the pipe (after Ray started, after the actor pool) and every
``SCAN_S`` seconds. When the pipe reports end-of-file the driver has exited (normally,
SIGKILL, OOM: the kernel closes the pipe in every case); the watchdog SIGKILLs every noted
process that still runs with the same start time (so a reused pid is never hit), a few
times over two seconds, and exits. Another run's processes, and a cluster the user started
(``backend.init_args.address``), are never noted. After a normal exit ``ray.shutdown()`` has
already ended everything and the watchdog finds nothing.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

ENV_VAR = "RUNNER_RAY_OWNER"
SCAN_S = 2.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()  # after "pid (comm) "
    if fields[0] in (b"Z", b"X"):  # zombie or dead: nothing to end
        return None
    return int(fields[1]), int(fields[19])


def _has_token(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return needle in f.read().split(b"\0")
    except OSError:
        return False


def scan(driver: int, token: str, known: dict[int, int]) -> None:
    """Note this run's processes in ``known`` (pid -> start time)."""
    needle = f"{ENV_VAR}={token}".encode()
    me = os.getpid()
    procs: dict[int, tuple[int, int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me:
            st = _stat(int(name))
            if st is not None:
                procs[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    # the head processes: the driver's children started with the token; then whatever was
    # noted before and still runs (its new children: workers, actors)
    stack = [pid for pid in children.get(driver, []) if _has_token(pid, needle)]
    stack += [pid for pid, start in known.items() if pid in procs and procs[pid][1] == start]
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen or pid not in procs or pid == driver:
            continue
        seen.add(pid)
        start = procs[pid][1]
        if known.setdefault(pid, start) != start:
            continue  # a reused pid: not ours
        stack.extend(children.get(pid, []))


def reap(known: dict[int, int], passes: int = 5, pause: float = 0.4) -> list[int]:
    """SIGKILL every noted process that still runs with its noted start time."""
    killed: list[int] = []
    for _ in range(passes):
        alive = [pid for pid, start in known.items() if (st := _stat(pid)) is not None and st[1] == start]
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        if not alive:
            break
        time.sleep(pause)
    return killed


def main(argv: list[str]) -> int:
    driver, token = int(argv[1]), argv[2]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the driver
    known: dict[int, int] = {}
    fd = sys.stdin.fileno()
    while True:
        try:
            ready, _, _ = select.select([fd], [], [], SCAN_S)
            data = os.read(fd, 4096) if ready else b"-"
        except OSError:
            data = b""
        if not data:  # end of file: the driver is gone
            break
        scan(driver, token, known)
    scan(driver, token, known)  # orphans now hang from init; tokens still show the head processes
    reap(known)
    return 0


# -- driver side ---------------------------------------------------------------------------
_watchdog: dict[str, object] = {}  # "proc", "token" of this process's watchdog


def watchdog_token() -> str:
    """Start this driver's watchdog if it is not running; its token for ``TaggedEnv``."""
    import subprocess
    import uuid

    proc = _watchdog.get("proc")
    if "token" in _watchdog and (proc is None or proc.poll() is None):  # type: ignore[attr-defined]
        return str(_watchdog["token"])  # running, or could not be started: do not retry
    token = uuid.uuid4().hex
    _watchdog.update(proc=None, token=token)
    try:
        _watchdog["proc"] = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), str(os.getpid()), token],
            stdin=subprocess.PIPE,  # our end is close-on-exec: Ray's processes do not hold it
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C or a signal to the driver's group spares it
        )
    except OSError:  # no interpreter to start (frozen app, no pids left): run without one
        pass
    return token


def release_watchdog(timeout: float = 2.0) -> None:
    """At a clean exit: close the watchdog's pipe (its end of file) and wait for it to end,
    so no process or pipe of this driver outlives it unaccounted for."""
    import subprocess

    proc = _watchdog.pop("proc", None)
    _watchdog.pop("token", None)
    if proc is None:
        return
    try:
        proc.stdin.close()  # type: ignore[attr-defined]
        proc.wait(timeout=timeout)  # type: ignore[attr-defined]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        pass


def poke() -> None:
    """Ask the watchdog to note this run's processes now (after Ray or actors started)."""
    proc = _watchdog.get("proc")
    try:
        if proc is not None and proc.poll() is None:  # type: ignore[attr-defined]
            proc.stdin.write(b"\n")  # type: ignore[attr-defined]
            proc.stdin.flush()  # type: ignore[attr-defined]
    except (OSError, ValueError):
        pass


class TaggedEnv:
    """``ENV_VAR=token`` in os.environ while Ray starts its processes, then as before."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.before: str | None = None

    def __enter__(self) -> None:
        self.before = os.environ.get(ENV_VAR)
        os.environ[ENV_VAR] = self.token

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = self.before
        poke()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
