"""Start a server, and start it again when the first try fails for what may be a passing reason.

On GPU hosts a vLLM start can die once and work a minute later (a shared library that fails to load
right after another process let go of the GPU). Giving up on the variant at the first failure loses
every step of it; retrying without a trace hides a flaky host. So each failed try's log is kept
under its own name (`<variant>.failed-start-<n>.log` beside the server's log) and described in a
record the caller writes into the manifest; only when every try has failed is the error raised.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Optional

from deploy.launcher import LaunchError, Server, ServerCommand, start


class StartFailed(LaunchError):
    """Every try to start a server failed; `failures` describes each one (log kept, error)."""

    def __init__(self, message: str, failures: list[dict[str, Any]]):
        super().__init__(message)
        self.failures = failures


def kept_log_path(log_path: Path) -> Path:
    """The first free `<stem>.failed-start-<n><suffix>` beside the server's log."""
    n = 1
    while True:
        p = log_path.with_name(f"{log_path.stem}.failed-start-{n}{log_path.suffix}")
        if not p.exists():
            return p
        n += 1


def start_with_retries(command: ServerCommand, log_path: Path, retries: int, pause_s: float,
                       root: Optional[Path] = None, sleep: Callable[[float], None] = time.sleep,
                       on_retry: Optional[Callable[[dict[str, Any]], None]] = None
                       ) -> tuple[Server, list[dict[str, Any]]]:
    """The started server and the record of the tries that failed before it (empty: first try worked).

    Log paths in the records are relative to `root` (the results directory) when given. `on_retry`
    hears of each failure before the pause, so a caller can record it at once.
    """
    failures: list[dict[str, Any]] = []
    for attempt in range(1, retries + 2):
        try:
            return start(command, log_path), failures
        except LaunchError as exc:
            kept = kept_log_path(log_path)
            if log_path.exists():
                log_path.rename(kept)
            name = kept.relative_to(root).as_posix() if root is not None else str(kept)
            said = str(exc).replace(str(log_path), str(kept))
            failures.append({"attempt": attempt, "at": time.time(), "log": name,
                             "error": said.splitlines()[0] if said else type(exc).__name__})
            if attempt > retries:
                tries = f"{attempt} tries" if attempt > 1 else "1 try"
                raise StartFailed(f"{said}\n(gave up after {tries}; logs: "
                                  f"{', '.join(f['log'] for f in failures)})", failures) from None
            if on_retry is not None:
                on_retry(failures[-1])
            sleep(pause_s)
    raise AssertionError("unreachable")  # pragma: no cover
