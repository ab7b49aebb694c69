"""The Grafana dashboard and its provisioning files, built as data in Python.

One dashboard, two rows: the servers as vLLM reports itself (throughput, running and waiting
requests, KV-cache use, preemptions, TTFT / inter-token / end-to-end percentiles from its
histograms) and the client as ridgeline measured it (the same latencies and throughput from the
exporter, sent / succeeded / failed, errors by kind, the step the run is in). A `variant` variable
selects the variants shown; every query groups by variant so they can be compared on one chart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import yaml

DATASOURCE_UID = "ridgeline-prometheus"
DASHBOARD_UID = "ridgeline-overview"
DS = {"type": "prometheus", "uid": DATASOURCE_UID}
SEL = 'variant=~"$variant"'
RATE = "$__rate_interval"
QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class Query:
    expr: str
    legend: str


def rate(metric: str, by: str = "variant", extra: str = "") -> str:
    sel = SEL + ("," + extra if extra else "")
    return f"sum by ({by}) (rate({metric}{{{sel}}}[{RATE}]))"


def gauge(metric: str, agg: str = "sum") -> str:
    return f"{agg} by (variant) ({metric}{{{SEL}}})"


def quantile(q: float, histogram: str) -> str:
    """The q-quantile by variant of a classic histogram (its `_bucket` series)."""
    return f"histogram_quantile({q:g}, sum by (variant, le) (rate({histogram}_bucket{{{SEL}}}[{RATE}])))"


def percentiles(histogram: str) -> list[Query]:
    return [Query(quantile(q, histogram), f"{{{{variant}}}} p{round(q * 100)}") for q in QUANTILES]


# (title, unit, queries, description) per panel; server panels name vLLM's own families
SERVER_PANELS: list[tuple[str, str, list[Query], str]] = [
    ("Generation throughput", "tokens/s",
     [Query(rate("vllm:generation_tokens_total"), "{{variant}}")],
     "Output tokens per second, from the servers' counters."),
    ("Prompt throughput", "tokens/s",
     [Query(rate("vllm:prompt_tokens_total"), "{{variant}}")],
     "Prompt tokens prefilled per second."),
    ("Requests running and waiting", "short",
     [Query(gauge("vllm:num_requests_running"), "{{variant}} running"),
      Query(gauge("vllm:num_requests_waiting"), "{{variant}} waiting")],
     "The running batch and the queue behind it."),
    ("KV-cache usage", "percentunit",
     [Query(gauge("vllm:kv_cache_usage_perc", "max"), "{{variant}}")],
     "Fraction of KV-cache blocks in use (1 = full; preemptions follow)."),
    ("Preemptions", "ops",
     [Query(rate("vllm:num_preemptions_total"), "{{variant}}")],
     "Requests preempted per second for want of KV-cache space."),
    ("Finished requests", "reqps",
     [Query(rate("vllm:request_success_total"), "{{variant}}")],
     "Requests the servers finished per second."),
    ("Time to first token (server)", "s", percentiles("vllm:time_to_first_token_seconds"),
     "From the servers' histogram: p50, p90, p99 by variant."),
    ("Inter-token latency (server)", "s", percentiles("vllm:inter_token_latency_seconds"),
     "From the servers' histogram: p50, p90, p99 by variant."),
    ("End-to-end latency (server)", "s", percentiles("vllm:e2e_request_latency_seconds"),
     "From the servers' histogram: p50, p90, p99 by variant."),
]

CLIENT_PANELS: list[tuple[str, str, list[Query], str]] = [
    ("Output tokens received", "tokens/s",
     [Query(rate("ridgeline_client_output_tokens_total"), "{{variant}}")],
     "Output tokens per second as the load generator received them."),
    ("Requests in flight and target", "short",
     [Query(gauge("ridgeline_client_requests_in_flight"), "{{variant}} in flight"),
      Query(gauge("ridgeline_client_target_concurrency", "max"), "{{variant}} target concurrency")],
     "Closed loop: in flight follows the target; below it, the client cannot keep up."),
    ("Requests sent, succeeded, failed", "reqps",
     [Query(rate("ridgeline_client_requests_sent_total"), "{{variant}} sent"),
      Query(rate("ridgeline_client_requests_succeeded_total"), "{{variant}} succeeded"),
      Query(rate("ridgeline_client_requests_failed_total"), "{{variant}} failed")],
     "Per second, as the client counted them."),
    ("Errors by kind", "reqps",
     [Query(rate("ridgeline_client_requests_failed_total", by="variant, error_kind"),
            "{{variant}} {{error_kind}}")],
     "Failed or cancelled requests per second, by what went wrong."),
    ("Time to first token (client)", "s", percentiles("ridgeline_client_time_to_first_token_seconds"),
     "Send to first token event, as the client saw it: p50, p90, p99."),
    ("Inter-token latency (client)", "s", percentiles("ridgeline_client_inter_token_latency_seconds"),
     "Gaps between token events, as the client saw them: p50, p90, p99."),
    ("End-to-end latency (client)", "s", percentiles("ridgeline_client_e2e_request_latency_seconds"),
     "Send to the end of the response, as the client saw it: p50, p90, p99."),
    ("Step", "short",
     [Query(f"max by (variant, step, concurrency, rate) (ridgeline_client_step_info{{{SEL}}})",
            "{{variant}} step {{step}} c={{concurrency}} rate={{rate}}")],
     "The step the run is in (1 while it runs); the legend names its load level."),
]


def _panel(pid: int, title: str, unit: str, queries: list[Query], description: str,
           x: int, y: int, w: int = 12, h: int = 8) -> dict[str, Any]:
    return {
        "id": pid,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 0}}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DS, "expr": q.expr, "legendFormat": q.legend,
                     "range": True} for i, q in enumerate(queries)],
    }


def _row(pid: int, title: str, y: int) -> dict[str, Any]:
    return {"id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}}


def dashboard(title: str = "ridgeline: servers and client", refresh: str = "5s") -> dict[str, Any]:
    """The dashboard JSON (as a dict) that the provisioning files load."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row_title, specs in (("Servers (vLLM /metrics)", SERVER_PANELS),
                             ("Client (ridgeline exporter)", CLIENT_PANELS)):
        panels.append(_row(pid, row_title, y))
        pid, y = pid + 1, y + 1
        for i, (t, unit, qs, desc) in enumerate(specs):
            panels.append(_panel(pid, t, unit, qs, desc, x=12 * (i % 2), y=y + 8 * (i // 2)))
            pid += 1
        y += 8 * ((len(specs) + 1) // 2)
    variant_var = {
        "name": "variant", "label": "Variant", "type": "query", "datasource": DS,
        "definition": "label_values(variant)",
        "query": {"query": "label_values(variant)", "refId": "variant"},
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    return {
        "uid": DASHBOARD_UID,
        "title": title,
        "tags": ["ridgeline", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": refresh,
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [variant_var]},
        "annotations": {"list": []},
        "panels": panels,
    }


def expressions(dash: dict[str, Any]) -> list[str]:
    """Every PromQL expression in a dashboard: panel targets and query variables."""
    out = []
    for p in dash.get("panels", []):
        out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
    return out


def datasource_yaml(prometheus_url: str = "http://127.0.0.1:9090", scrape_interval: Optional[str] = None) -> str:
    """Grafana datasource provisioning: the Prometheus the dashboard reads, under a fixed uid."""
    ds: dict[str, Any] = {"name": "ridgeline Prometheus", "type": "prometheus", "uid": DATASOURCE_UID,
                          "access": "proxy", "url": prometheus_url, "isDefault": True, "editable": False}
    if scrape_interval:
        ds["jsonData"] = {"timeInterval": scrape_interval}
    return yaml.safe_dump({"apiVersion": 1, "datasources": [ds]}, sort_keys=False)


def provider_yaml(dashboards_path: str = "/var/lib/grafana/dashboards") -> str:
    """Grafana dashboard provider: load every JSON file under `dashboards_path`."""
    prov = {"name": "ridgeline", "orgId": 1, "folder": "ridgeline", "type": "file",
            "disableDeletion": False, "allowUiUpdates": True, "updateIntervalSeconds": 30,
            "options": {"path": dashboards_path, "foldersFromFilesStructure": False}}
    return yaml.safe_dump({"apiVersion": 1, "providers": [prov]}, sort_keys=False)
