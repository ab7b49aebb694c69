"""What `ridgeline deploy up` started, kept between commands: <output_dir>/.deploy/state.json.

`up` records each server (variant, URL, argv, masked environment, pid and process-group, the
process's start time, its log and what verification found); `status` asks each recorded server
whether it is alive and healthy; `down` stops each by process group. The pid's start time is kept
so a pid the OS has since reused is never taken for the server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import psutil

from core.errors import RidgelineError
from core.results import atomic_write_json
from core.secrets import SecretError, read_api_key

STATE_DIR = ".deploy"
STATE_FILE = "state.json"


class StateError(RidgelineError, ValueError):
    """A state file that cannot be read or is not one `deploy up` wrote; the message names it."""


def state_path(output_dir: str | Path) -> Path:
    """Where `deploy up` records what it started: <output_dir>/.deploy/state.json."""
    return Path(output_dir) / STATE_DIR / STATE_FILE


def read_state(path: Path) -> dict[str, Any]:
    """The recorded state; {} when nothing was ever deployed there."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
        raise StateError(f"{path}: not a deploy state file (no 'servers' list)")
    return data


def write_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, state)


def proc_alive(pid: int, create_time: Optional[float]) -> bool:
    """The recorded process is still there (same pid, same start time, not a zombie)."""
    try:
        p = psutil.Process(pid)
        if create_time is not None and abs(p.create_time() - create_time) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _get(url: str, timeout: float = 3.0, headers: Optional[dict[str, str]] = None) -> tuple[Optional[int], str]:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (urllib.error.URLError, OSError, ValueError):
        return None, ""


def auth_headers(state: dict[str, Any]) -> dict[str, str]:
    """The Authorization header for the recorded servers, from the key the plan named (none if unreadable)."""
    try:
        key = read_api_key(state.get("api_key_env"), state.get("api_key_file"))
    except SecretError:
        return {}
    return {"Authorization": f"Bearer {key}"} if key else {}


def server_status(entry: dict[str, Any], headers: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """alive (the recorded process), healthy (/health 200) and the models the server lists."""
    pid = entry.get("pid")
    alive = proc_alive(pid, entry.get("create_time")) if pid else None
    code, _ = _get(entry["url"].rstrip("/") + "/health")
    models: list[str] = []
    mcode, body = _get(entry["url"].rstrip("/") + "/v1/models", headers=headers)
    if mcode == 200:
        try:
            models = [m.get("id") for m in json.loads(body).get("data", [])]
        except (json.JSONDecodeError, AttributeError):
            models = []
    return {"variant": entry["variant"], "url": entry["url"], "pid": pid, "alive": alive, "healthy": code == 200,
            "models": models}
