"""docker-compose.yml starting Prometheus and Grafana with the rendered files.

Both containers use the host's network: the exporter and the servers ridgeline starts listen on
127.0.0.1, which a container on a bridge network cannot reach, and this keeps the addresses in the
scrape config the same inside and outside. Both bind to 127.0.0.1 as well.
"""

from __future__ import annotations

from typing import Any

import yaml

PROMETHEUS_IMAGE = "prom/prometheus:v2.53.2"
GRAFANA_IMAGE = "grafana/grafana:11.2.0"


def compose(prometheus_port: int = 9090, grafana_port: int = 3000, retention: str = "15d") -> dict[str, Any]:
    """The compose document (as a dict); paths are relative to the directory it is written in."""
    return {
        "name": "ridgeline-monitoring",
        "services": {
            "prometheus": {
                "image": PROMETHEUS_IMAGE,
                "network_mode": "host",
                "command": [
                    "--config.file=/etc/prometheus/prometheus.yml",
                    "--storage.tsdb.path=/prometheus",
                    f"--storage.tsdb.retention.time={retention}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--web.enable-lifecycle",
                ],
                "volumes": ["./prometheus:/etc/prometheus:ro", "prometheus-data:/prometheus"],
                "restart": "unless-stopped",
            },
            "grafana": {
                "image": GRAFANA_IMAGE,
                "network_mode": "host",
                "depends_on": ["prometheus"],
                "environment": {
                    "GF_SERVER_HTTP_ADDR": "127.0.0.1",
                    "GF_SERVER_HTTP_PORT": str(grafana_port),
                    "GF_AUTH_ANONYMOUS_ENABLED": "true",
                    "GF_AUTH_ANONYMOUS_ORG_ROLE": "Viewer",
                    "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH": "/var/lib/grafana/dashboards/ridgeline.json",
                },
                "volumes": ["./grafana/provisioning:/etc/grafana/provisioning:ro",
                            "./grafana/dashboards:/var/lib/grafana/dashboards:ro",
                            "grafana-data:/var/lib/grafana"],
                "restart": "unless-stopped",
            },
        },
        "volumes": {"prometheus-data": {}, "grafana-data": {}},
    }


def render_compose(**kw: Any) -> str:
    return "# Prometheus and Grafana for ridgeline (docker compose up -d)\n" + yaml.safe_dump(compose(**kw), sort_keys=False)
