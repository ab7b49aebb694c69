"""Start and stop server processes: argv lists, their own process group, health by /health.

The same launcher starts the built-in emulator and real vLLM; nothing here knows which. A server
that dies while starting is reported at once with the last lines of its log, and every server is
stopped on every exit path (SIGINT, then SIGTERM, then SIGKILL to the whole group): each started
server is kept in a registry until stopped, and whatever is still in it when the interpreter exits
is stopped then (servers started with keep=True are left running on purpose, for `deploy up`).
"""

from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from core.errors import RidgelineError
from core.plan import CpuSplit
from core.net import free_port  # noqa: F401 - launcher.free_port is what callers use
from deploy.cpu_split import pin_engine


class LaunchError(RidgelineError, RuntimeError):
    """A server that could not be started; the message carries its last log lines."""


@dataclass
class ServerCommand:
    """Everything needed to start one variant's server (what --dry-run prints)."""

    variant: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the inherited environment
    host: str = "127.0.0.1"
    port: int = 0
    health_path: str = "/health"
    startup_timeout_s: float = 900.0
    cwd: Optional[str] = None
    base_url: Optional[str] = None  # an external server's own URL (scheme, path prefix); else http://host:port
    notes: dict[str, Any] = field(default_factory=dict)  # what the manifest should say about how it was built
    cpus: Optional[CpuSplit] = None  # server.cpus: once healthy, the group's other processes move to its engine CPUs

    @property
    def url(self) -> str:
        return self.base_url or f"http://{self.host}:{self.port}"

    def to_dict(self) -> dict:
        return {"variant": self.variant, "argv": list(self.argv), "env": dict(self.env), "url": self.url}


@dataclass
class Server:
    """A started server process."""

    command: ServerCommand
    process: subprocess.Popen
    log_path: Path
    started: float
    pinned: dict[str, str] = field(default_factory=dict)  # pid -> name of processes moved to the engine CPUs

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return self.command.url

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, n: int = 30) -> str:
        return log_tail(self.log_path, n)


def log_tail(path: Path, n: int = 30) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except FileNotFoundError:
        return ""


# an exception's last line ("ValueError: ..."), an argparse failure ("prog: error: ..."), or a
# logged error's message; the first few distinct ones are the root cause a log tail often misses
_ERROR_LINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception): .+$|^\S+: error: .+$|^\s+Value error, .+$")
_NOT_ERROR = re.compile(r"\b(?:DEBUG|INFO|WARNING)\b")  # a log line of another level that mentions an error


def error_lines(path: Path, limit: int = 3, max_bytes: int = 4 * 1024 * 1024) -> list[str]:
    """The first distinct error messages in a log (what the server said went wrong)."""
    out: list[str] = []
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            text = fh.read(max_bytes)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        m = _ERROR_LINE.search(line)
        if not m or _NOT_ERROR.search(line[:m.start()]):
            continue
        msg = m.group(0).strip()
        if any(msg[-80:] in seen or seen[-80:] in msg for seen in out):
            continue
        out.append(msg)
        if len(out) >= limit:
            break
    return out


def _why(server: "Server") -> str:
    errs = error_lines(server.log_path)
    said = ("; it said:\n" + "\n".join(f"  {e}" for e in errs)) if errs else ""
    return f"{said}\nlast lines of {server.log_path}:\n{server.log_tail()}"


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return False


_registry: dict[int, Server] = {}
_registry_lock = threading.Lock()


def running() -> list[Server]:
    """Servers started by this process and not stopped yet (keep=True ones excluded)."""
    with _registry_lock:
        return list(_registry.values())


def start(command: ServerCommand, log_path: Path, wait: bool = True, poll_s: float = 0.25,
          keep: bool = False) -> Server:
    """Start the server in its own process group; with wait, return once /health answers 200.

    The server is registered so that it is stopped at interpreter exit if nobody stopped it; keep=True
    leaves it running after this process ends (its pid and group are the caller's to record).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(command.env)
    log = open(log_path, "ab", buffering=0)
    try:
        proc = subprocess.Popen(
            command.argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=command.cwd,
            start_new_session=True,
        )
    except OSError as exc:
        log.close()
        raise LaunchError(f"variant {command.variant}: cannot start {command.argv[0]!r}: {exc}") from None
    log.close()
    server = Server(command=command, process=proc, log_path=log_path, started=time.time())
    if not keep:
        with _registry_lock:
            _registry[proc.pid] = server
    if wait:
        try:
            wait_ready(server, poll_s=poll_s)
        except BaseException:
            stop(server)
            raise
    return server


def wait_ready(server: Server, poll_s: float = 0.25) -> float:
    """Block until /health answers; fail at once if the process dies, or at the deadline."""
    cmd = server.command
    deadline = server.started + cmd.startup_timeout_s
    url = cmd.url + cmd.health_path
    while True:
        if not server.alive():
            code = server.process.returncode
            raise LaunchError(f"variant {cmd.variant}: server exited with status {code} while starting{_why(server)}")
        if _healthy(url):
            if cmd.cpus is not None:
                server.pinned = pin_engine(server.pid, group_members(server.pid), cmd.cpus.engine)
            return time.time() - server.started
        if time.time() > deadline:
            raise LaunchError(
                f"variant {cmd.variant}: not ready after {cmd.startup_timeout_s:.0f} s ({url}){_why(server)}")
        time.sleep(poll_s)


def stop(server: Server, grace_s: tuple[float, float, float] = (10.0, 10.0, 5.0)) -> Optional[int]:
    """SIGINT, then SIGTERM, then SIGKILL to the server's process group, each with a deadline."""
    try:
        return _stop(server, grace_s)
    finally:
        with _registry_lock:
            _registry.pop(server.pid, None)


def _stop(server: Server, grace_s: tuple[float, float, float], interrupted: bool = False) -> Optional[int]:
    proc = server.process
    for sig, wait_s in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace_s):
        if proc.poll() is not None:
            break
        try:
            if not (interrupted and sig == signal.SIGINT):  # stop_all sent it already
                os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    # the leader may be gone while children of its group live on (an engine core, a resource tracker)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        code = None
    deadline = time.time() + 5.0  # SIGKILL is delivered asynchronously: return once the group is gone
    while time.time() < deadline and _group_alive(proc.pid):
        time.sleep(0.1)
    return code


def stop_all(servers: Optional[list[Server]] = None,
             grace_s: tuple[float, float, float] = (10.0, 10.0, 5.0)) -> dict[str, Optional[int]]:
    """Stop several servers (default: every registered one), all signalled at once, each to the end.

    Returns each variant's exit status. An error stopping one never keeps the others running.
    """
    todo = running() if servers is None else list(servers)
    for srv in todo:  # SIGINT to all first: their shutdowns overlap instead of queueing
        if srv.alive():
            try:
                os.killpg(srv.pid, signal.SIGINT)
            except (ProcessLookupError, PermissionError):
                pass
    out: dict[str, Optional[int]] = {}
    for srv in todo:
        try:
            out[srv.command.variant] = _stop(srv, grace_s, interrupted=True)
        except Exception:  # noqa: BLE001 - keep stopping the rest
            out[srv.command.variant] = None
        finally:
            with _registry_lock:
                _registry.pop(srv.pid, None)
    return out


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process is left in the group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def stop_pid(pid: int, create_time: Optional[float] = None,
             grace_s: tuple[float, float, float] = (10.0, 10.0, 5.0)) -> bool:
    """Stop a server this process did not start (recorded by pid): SIGINT, SIGTERM, SIGKILL to its group.

    `create_time` (psutil's, recorded at start) guards against a recycled pid: when the process now
    holding the pid started at another time, nothing is signalled. Returns True when the group is gone.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return not _group_alive(pid)  # another process holds the pid now: not ours to signal
    except psutil.NoSuchProcess:
        proc = None
    pgid = pid  # start() gives every server its own session, whose group id is the leader's pid
    for sig, wait_s in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace_s):
        if not _group_alive(pgid):
            return True
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if proc is not None:
                try:
                    proc.wait(timeout=0.1)  # reaps it when it is our child
                except (psutil.TimeoutExpired, psutil.NoSuchProcess, ChildProcessError):
                    pass
            if not _group_alive(pgid):
                return True
            time.sleep(0.1)
    return not _group_alive(pgid)


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in a process group (a server's engine workers live there too)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.info["pid"]) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.info["pid"])
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return out


@atexit.register
def _stop_registered() -> None:
    """At interpreter exit: stop whatever this process started and did not stop (short grace)."""
    if running():
        stop_all(grace_s=(5.0, 5.0, 2.0))
