"""Read a step's server series from a Prometheus that already scrapes the servers.

Where servers run behind Kubernetes or a shared monitoring stack, Prometheus is what sees them; this
asks it, over its HTTP API, for the same series ridgeline's own scraper would have taken and hands
them back as a records.METRIC_SCHEMA table, so the results directory and the analysis do not change.

One range query (/api/v1/query_range, step = the scrape interval) fetches every kept family of one
server (`{__name__=~"vllm:.*|ridgeline_emulator:.*", <matchers>}`); the server is picked by label
matchers (by default its `instance`, host:port of its URL). The target's `up` series over the same
window becomes the scraper's markers: `ridgeline:scrape_up` where up is 1, `ridgeline:scrape_gap`
(reason "down") where it is 0, and `ridgeline:counter_reset` where a cumulative series went down.
Labels that Prometheus adds (instance, job and the matchers' own) are dropped, so a row's labels are
the exposition's labels, as the scraper stores them.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from typing import Any, Mapping, Optional

import pyarrow as pa

from core.errors import RidgelineError
from core.net import instance_of
from loadtest.scraper import (
    GAP,
    KEEP_PREFIXES,
    RESET,
    UP,
    SeriesBuffer,
    count_resets,
    is_cumulative_name,
    labels_json,
)

MAX_POINTS = 10_000  # Prometheus refuses ranges over 11,000 points per series; stay under it
TARGET_LABELS = ("instance", "job")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class PromError(RidgelineError, RuntimeError):
    """Prometheus could not be asked, or refused the query; the message says which and why."""


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def selector(matchers: Mapping[str, str], name_regex: Optional[str] = None) -> str:
    """`{__name__=~"...", a="b"}` from equality matchers; label names are checked."""
    parts = []
    if name_regex is not None:
        parts.append(f"__name__=~{quote(name_regex)}")
    for k, v in sorted(matchers.items()):
        if not _LABEL_NAME.match(k):
            raise ValueError(f"{k!r} is not a Prometheus label name")
        parts.append(f"{k}={quote(v)}")
    return "{" + ",".join(parts) + "}"


def prefix_regex(prefixes: tuple[str, ...] = KEEP_PREFIXES) -> str:
    """A __name__ regex matching every family with one of the prefixes."""
    return "|".join(re.escape(p).replace("\\:", ":") + ".*" for p in prefixes)


def server_matchers(url: str, variant: str, template: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The label matchers picking one server: the template with {variant} and {instance} filled in,
    or, with no template, its instance."""
    inst = instance_of(url)
    if not template:
        return {"instance": inst}
    return {k: v.replace("{variant}", variant).replace("{instance}", inst) for k, v in template.items()}


class PromReader:
    """A Prometheus server's HTTP API, for range queries over one step's window."""

    def __init__(self, base_url: str, timeout: float = 10.0, headers: Optional[dict[str, str]] = None):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ValueError(f"prometheus_url {base_url!r} is not an http(s) URL")
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = headers or {}

    def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        req = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read().decode("utf-8"))
            except (ValueError, OSError):
                raise PromError(f"{self.base}{path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise PromError(f"{self.base}{path}: cannot be read ({exc})") from None
        if body.get("status") != "success":
            raise PromError(f"{self.base}{path}: {body.get('errorType', 'error')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: Optional[float] = None) -> list[dict[str, Any]]:
        """An instant query; the result vector (or matrix for a range selector)."""
        params = [("query", expr)]
        if at is not None:
            params.append(("time", f"{at:.3f}"))
        return self._get("/api/v1/query", params)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query, split into chunks Prometheus accepts; series of all chunks merged."""
        if end < start:
            raise ValueError(f"range ends ({end}) before it starts ({start})")
        if step <= 0:
            raise ValueError(f"query step must be above 0 s, got {step}")
        merged: dict[str, dict[str, Any]] = {}
        t0 = start
        while True:
            t1 = min(end, t0 + step * (MAX_POINTS - 1))
            data = self._get("/api/v1/query_range", [("query", expr), ("start", f"{t0:.3f}"),
                                                     ("end", f"{t1:.3f}"), ("step", f"{step:g}")])
            for s in data["result"]:
                key = labels_json(s["metric"])
                if key in merged:
                    seen = {v[0] for v in merged[key]["values"]}
                    merged[key]["values"].extend(v for v in s["values"] if v[0] not in seen)
                else:
                    merged[key] = {"metric": s["metric"], "values": list(s["values"])}
            if t1 >= end:
                break
            t0 = t1 + step
        return list(merged.values())

    def last_scrape(self, matchers: Mapping[str, str]) -> Optional[float]:
        """Time of the newest scrape of the matched target(s), from `timestamp(up{...})`."""
        res = self.query(f"min(timestamp(up{selector(matchers)}))")
        if not res:
            return None
        v = float(res[0]["value"][1])
        return None if math.isnan(v) else v

    def wait_scraped(self, matchers: Mapping[str, str], after: float, timeout: float) -> bool:
        """Wait until Prometheus has scraped the target at or after `after` (so a window's end is in)."""
        deadline = time.time() + timeout
        while True:
            t = self.last_scrape(matchers)
            if t is not None and t >= after:
                return True
            if time.time() >= deadline:
                return False
            time.sleep(0.2)

    def target_labels(self, matchers: Mapping[str, str]) -> set[str]:
        """Names of the labels Prometheus attaches to the matched targets (not the exposition's own).

        Taken from /api/v1/targets; where that is not served (a federating or long-term store),
        only instance, job and the matchers' labels are known to be the target's.
        """
        names = set(TARGET_LABELS) | set(matchers)
        try:
            data = self._get("/api/v1/targets", [("state", "active")])
        except PromError:
            return names
        for t in data.get("activeTargets", []):
            lab = t.get("labels", {})
            if any(k in lab for k in matchers) and all(lab.get(k, v) == v for k, v in matchers.items()):
                names |= set(lab)
        return names

    def read_step(self, variant: str, step: int, start: float, end: float, interval: float,
                  matchers: Mapping[str, str], prefixes: tuple[str, ...] = KEEP_PREFIXES,
                  keep_labels: tuple[str, ...] = ()) -> pa.Table:
        """The kept series of one server over [start, end] as METRIC_SCHEMA rows of this step."""
        drop = self.target_labels(matchers) - set(keep_labels)
        rows: dict[float, list[tuple[str, str, float]]] = defaultdict(list)
        cumulative: dict[float, dict[tuple[str, str], float]] = defaultdict(dict)
        series = self.query_range(selector(matchers, prefix_regex(prefixes)), start, end, interval)
        for s in series:
            metric = dict(s["metric"])
            name = metric.pop("__name__", "")
            for k in drop:
                metric.pop(k, None)
            lab = labels_json(metric)
            cum = is_cumulative_name(name)
            for ts, val in s["values"]:
                t, v = float(ts), float(val)
                rows[t].append((name, lab, v))
                if cum:
                    cumulative[t][(name, lab)] = v
        up: dict[float, float] = {}
        for s in self.query_range(f"max(up{selector(matchers)})", start, end, interval):
            for ts, val in s["values"]:
                up[float(ts)] = float(val)
        buf = SeriesBuffer()
        before: Optional[dict[tuple[str, str], float]] = None
        for t in sorted(set(rows) | set(up)):
            out = list(rows.get(t, []))
            u = up.get(t)
            if u is not None and u < 1:
                out = [(GAP, labels_json({"reason": "down"}), 1.0)]
                buf.failures += 1
            elif rows.get(t):
                out.append((UP, "{}", 1.0))
                cur = cumulative.get(t, {})
                if before is not None and count_resets(before, cur):
                    out.append((RESET, "{}", float(count_resets(before, cur))))
                    buf.resets += 1
                before = cur
            buf.scrapes += 1
            buf.add(t, variant, step, out)
        return buf.table()


def step_series(scrape: Any, url: str, variant: str, step: int, start: float, end: float,
                direct: Optional[pa.Table]) -> tuple[pa.Table, Optional[str]]:
    """The series to store for one step, and a warning when Prometheus could not give them.

    `scrape` is the plan's ScrapeSpec. Without a prometheus_url this is the direct scrape. With one,
    Prometheus is asked once it has scraped past the step's end (waiting up to two intervals plus
    the timeout); if it fails or holds nothing for the server, the direct scrape is kept instead.
    """
    empty = SeriesBuffer().table()
    if not scrape.prometheus_url:
        return (direct if direct is not None else empty), None
    try:
        matchers = server_matchers(url, variant, scrape.prometheus_labels)
        reader = PromReader(scrape.prometheus_url, timeout=scrape.timeout_s)
        reader.wait_scraped(matchers, end, 2 * scrape.interval_s + scrape.timeout_s)
        table = reader.read_step(variant, step, start, end, scrape.interval_s, matchers)
    except (PromError, ValueError) as exc:
        why = str(exc)
    else:
        markers = {GAP, UP, RESET}
        kept = sum(1 for m in table.column("metric").to_pylist() if m not in markers)
        if kept:
            return table, None
        why = f"no series match {selector(matchers)} in the step's window"
    fallback = "kept the direct scrape" if direct is not None else "no server series kept"
    return (direct if direct is not None else empty), (
        f"{variant} step {step}: Prometheus at {scrape.prometheus_url}: {why}; {fallback}")
