"""Files for watching runs with Prometheus and Grafana: `render_monitoring` writes them all.

    <out>/prometheus/prometheus.yml          scrape config: the plan's servers and the client exporter
    <out>/prometheus/targets/                file-discovered targets a run publishes (scrape.targets_dir)
    <out>/grafana/provisioning/datasources/ridgeline.yml
    <out>/grafana/provisioning/dashboards/ridgeline.yml
    <out>/grafana/dashboards/ridgeline.json  the dashboard
    <out>/docker-compose.yml                 Prometheus and Grafana with the files above
    <out>/scrape.yaml                        the plan's `scrape:` section that feeds them
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from deploy.render import compose as _compose
from deploy.render import grafana as _grafana
from deploy.render import prometheus as _prom

__all__ = ["render_monitoring"]


def render_monitoring(plan: Any, out_dir: Union[str, Path], exporter_port: Optional[int] = None,
                      prometheus_port: int = 9090, grafana_port: int = 3000,
                      servers: Optional[dict[str, str]] = None) -> list[Path]:
    """Write the Prometheus, Grafana and compose files for a plan under out_dir; returns the files.

    The exporter port is the argument, else the plan's `scrape.exporter_port` when it is fixed,
    else 9477. `servers` (variant -> URL) overrides the addresses the plan gives.
    """
    if exporter_port is None:
        exporter_port = plan.scrape.exporter_port or _prom.DEFAULT_EXPORTER_PORT
    if not 1 <= exporter_port <= 65535:
        raise ValueError(f"exporter_port must be 1 to 65535 for a fixed scrape target, got {exporter_port}")
    for name, port in (("prometheus_port", prometheus_port), ("grafana_port", grafana_port)):
        if not 1 <= port <= 65535:
            raise ValueError(f"{name} must be 1 to 65535, got {port}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a directory")
    interval = _prom.duration(plan.scrape.interval_s)
    prom_dir = out / "prometheus"
    targets = prom_dir / _prom.TARGETS_DIR
    targets.mkdir(parents=True, exist_ok=True)
    files: dict[Path, str] = {
        prom_dir / "prometheus.yml": _prom.render_prometheus(plan, exporter_port=exporter_port,
                                                             exporter_host=plan.scrape.exporter_host,
                                                             servers=servers),
        out / "grafana" / "provisioning" / "datasources" / "ridgeline.yml":
            _grafana.datasource_yaml(f"http://127.0.0.1:{prometheus_port}", interval),
        out / "grafana" / "provisioning" / "dashboards" / "ridgeline.yml": _grafana.provider_yaml(),
        out / "grafana" / "dashboards" / "ridgeline.json": json.dumps(_grafana.dashboard(), indent=2) + "\n",
        out / "docker-compose.yml": _compose.render_compose(prometheus_port=prometheus_port, grafana_port=grafana_port),
        out / "scrape.yaml": _scrape_section(plan, exporter_port, targets, prometheus_port),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(files)


def _scrape_section(plan: Any, exporter_port: int, targets: Path, prometheus_port: int) -> str:
    section = {"scrape": {"interval_s": plan.scrape.interval_s, "exporter_port": exporter_port,
                          "targets_dir": str(targets.resolve()),
                          "prometheus_url": f"http://127.0.0.1:{prometheus_port}"}}
    head = ("# Merge into the plan so a run feeds this Prometheus: it publishes its servers and its\n"
            "# exporter under targets_dir, and reads each step's server series back from Prometheus.\n")
    return head + yaml.safe_dump(section, sort_keys=False)
