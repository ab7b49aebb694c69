"""The Prometheus side of the monitoring files: a scrape config for the plan's servers and the client.

Servers whose address the plan fixes (backend external) are static targets. Servers that ridgeline
starts itself get a port only at run time, so both jobs also read file-based target lists from
`targets/` next to the config; a run with `scrape.targets_dir` pointing there publishes the server
it is driving and its own exporter as they come up (`publish_targets`), and Prometheus picks the
change up within seconds. Every server target carries a `variant` label, which the dashboard and
the Prometheus reader select on.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from core.net import instance_of
from core.results import atomic_write_text

SERVERS_JOB = "ridgeline-servers"
CLIENT_JOB = "ridgeline-client"
TARGETS_DIR = "targets"
SERVERS_FILE = "servers.json"
CLIENT_FILE = "client.json"
DEFAULT_EXPORTER_PORT = 9477


def duration(seconds: float) -> str:
    """A Prometheus duration string: whole seconds as `5s`, anything finer in milliseconds."""
    if seconds <= 0:
        raise ValueError(f"a scrape interval must be above 0 s, got {seconds}")
    ms = round(seconds * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{max(ms, 1)}ms"


def target_entry(url: str, labels: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
    """One target group for a server base URL (or a full /metrics URL): scheme and path as labels."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise ValueError(f"{url!r}: a scrape target needs an http(s) URL")
    lab = dict(labels or {})
    path = u.path.rstrip("/")
    if not path.endswith("/metrics"):
        path += "/metrics"
    if u.scheme == "https":
        lab["__scheme__"] = "https"
    if path != "/metrics":
        lab["__metrics_path__"] = path
    return {"targets": [instance_of(url)], "labels": lab}


def server_targets(plan: Any) -> dict[str, str]:
    """Variant name -> base URL, for the variants whose address the plan fixes."""
    return {v.name: v.url for v in plan.variants if getattr(v, "url", None)}


def scrape_config(plan: Any, exporter_port: Optional[int] = DEFAULT_EXPORTER_PORT,
                  exporter_host: str = "127.0.0.1", servers: Optional[Mapping[str, str]] = None,
                  targets_dir: str = TARGETS_DIR) -> dict[str, Any]:
    """The prometheus.yml document for a plan (as a dict); `servers` overrides the plan's URLs."""
    interval = duration(plan.scrape.interval_s)
    timeout = duration(min(plan.scrape.timeout_s, plan.scrape.interval_s))
    servers = dict(server_targets(plan) if servers is None else servers)
    srv_job: dict[str, Any] = {
        "job_name": SERVERS_JOB,
        "scrape_interval": interval,
        "scrape_timeout": timeout,
        "file_sd_configs": [{"files": [f"{targets_dir}/servers*.json"], "refresh_interval": "30s"}],
    }
    if servers:
        srv_job["static_configs"] = [target_entry(url, {"variant": name}) for name, url in sorted(servers.items())]
    cli_job: dict[str, Any] = {
        "job_name": CLIENT_JOB,
        "scrape_interval": interval,
        "scrape_timeout": timeout,
        "file_sd_configs": [{"files": [f"{targets_dir}/client*.json"], "refresh_interval": "30s"}],
    }
    if exporter_port:
        cli_job["static_configs"] = [{"targets": [f"{exporter_host}:{exporter_port}"]}]
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "external_labels": {"ridgeline_plan": plan.name}},
        "scrape_configs": [srv_job, cli_job],
    }


def render_prometheus(plan: Any, **kw: Any) -> str:
    """prometheus.yml text for a plan (see `scrape_config` for the options)."""
    head = f"# Prometheus scrape config for ridgeline plan '{plan.name}' (ridgeline deploy render)\n"
    return head + yaml.safe_dump(scrape_config(plan, **kw), sort_keys=False)


def _write_readable(path: Path, text: str) -> None:
    """Write then rename, readable by all: Prometheus in a container reads it as another user."""
    atomic_write_text(path, text, mode=0o644)


def publish_targets(targets_dir: Optional[str], servers: Mapping[str, str],
                    exporter_url: Optional[str] = None) -> None:
    """Write the live server targets (variant -> URL) and the exporter for Prometheus's file discovery.

    Nothing happens when `targets_dir` is None. The files are replaced whole, so a server that is no
    longer driven drops out of Prometheus.
    """
    if not targets_dir:
        return
    d = Path(targets_dir).expanduser()
    groups = [target_entry(url, {"variant": name}) for name, url in sorted(servers.items())]
    _write_readable(d / SERVERS_FILE, json.dumps(groups, indent=2) + "\n")
    client = [target_entry(exporter_url)] if exporter_url else []
    _write_readable(d / CLIENT_FILE, json.dumps(client, indent=2) + "\n")
