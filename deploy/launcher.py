"""Start and stop server processes: argv lists, their own process group, health by /health.

The same launcher starts the built-in emulator and real vLLM; nothing here knows which. A server
that dies while starting is reported at once with the last lines of its log, and every server is
stopped on every exit path (SIGINT, then SIGTERM, then SIGKILL to the whole group).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional


class LaunchError(RuntimeError):
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

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_dict(self) -> dict:
        return {"variant": self.variant, "argv": list(self.argv), "env": dict(self.env), "url": self.url}


@dataclass
class Server:
    """A started server process."""

    command: ServerCommand
    process: subprocess.Popen
    log_path: Path
    started: float

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


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 30) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=n))
    except FileNotFoundError:
        return ""


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, OSError, ValueError):
        return False


def start(command: ServerCommand, log_path: Path, wait: bool = True, poll_s: float = 0.25) -> Server:
    """Start the server in its own process group; with wait, return once /health answers 200."""
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
    finally:
        pass
    log.close()
    server = Server(command=command, process=proc, log_path=log_path, started=time.time())
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
            raise LaunchError(
                f"variant {cmd.variant}: server exited with status {code} while starting; "
                f"last lines of {server.log_path}:\n{server.log_tail()}"
            )
        if _healthy(url):
            return time.time() - server.started
        if time.time() > deadline:
            raise LaunchError(
                f"variant {cmd.variant}: not ready after {cmd.startup_timeout_s:.0f} s ({url}); "
                f"last lines of {server.log_path}:\n{server.log_tail()}"
            )
        time.sleep(poll_s)


def stop(server: Server, grace_s: tuple[float, float, float] = (10.0, 10.0, 5.0)) -> Optional[int]:
    """SIGINT, then SIGTERM, then SIGKILL to the server's process group, each with a deadline."""
    proc = server.process
    for sig, wait_s in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace_s):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
    # the leader may be gone while children of its group live on
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover
        return None
