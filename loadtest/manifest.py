"""What a run records about itself: the plan as run, versions, host, GPU, servers, steps."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata as md
import os
import platform
import socket
from typing import Any, Optional

from core.plan import Plan
from deploy import gpu_info

TOOL = "ridgeline"


def tool_version() -> str:
    try:
        return md.version(TOOL)
    except md.PackageNotFoundError:
        return "0.0.0+source"


def package_versions(names: tuple[str, ...] = ("locust", "gevent", "aiohttp", "prometheus_client", "pandas",
                                                 "pyarrow", "pydantic")) -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            out[n] = None
    return out


def host_info() -> dict[str, Any]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def now_iso(t: Optional[float] = None) -> str:
    d = _dt.datetime.fromtimestamp(t, _dt.timezone.utc) if t is not None else _dt.datetime.now(_dt.timezone.utc)
    return d.isoformat(timespec="seconds")


def new_manifest(plan: Plan, plan_source: Optional[str], started: float,
                 gpu: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A run's manifest at its start; `gpu` is what deploy.gpu_info finds on this host unless given."""
    if gpu is None:
        gpu = gpu_info.record()
    return {
        "format": 1,
        "tool": TOOL,
        "ridgeline_version": tool_version(),
        "backend": plan.backend,
        "plan": plan.model_dump(mode="json"),
        "plan_source": plan_source,
        "host": host_info(),
        "versions": package_versions(),
        "gpu": gpu,
        "servers": {},
        "scenario": {},
        "started": started,
        "started_iso": now_iso(started),
        "ended": None,
        "status": "running",
        "steps": [],
        "warnings": [],
    }
