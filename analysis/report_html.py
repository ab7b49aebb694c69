"""report.html: one self-contained file (inline CSS, charts as base64 PNG, no script, nothing fetched).

Every string that came from outside (plan, dataset, server answers, error messages, commands) goes
through jinja2's autoescaping, so a hostile string shows as text. The verdict and the two key charts
(throughput and speedup against load) come first; then latency, goodput, roofline, server series,
client/server agreement, per-step tables, errors, environment and the exact server commands.
"""

from __future__ import annotations

import base64
import json
import shlex
from pathlib import Path
from typing import Any, Optional

import jinja2
import numpy as np

from analysis import fmt
from analysis import report_tables as rt
from analysis.agreement import AGREEMENT_PCT
from analysis.crosscheck import commands as crosscheck_commands
from analysis.crosscheck_rounds import has_rounds
from analysis.energy import MIN_COVERAGE
from analysis.pipeline import Analysis
from analysis.quality.table import absent_sentence, quality_note, quality_table
from analysis.speedup import SLO_ATTAINMENT
from analysis.speedup import interval as _iv
from analysis.summary import BACKEND_NOTE, _roofline_sentence, served_problem, threshold_key, verdict
from core.backends import BACKENDS
from core.hardware.roofline import compute_dtype

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>ridgeline: {{ run_name }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}
header .meta{font-size:13px;opacity:.85;margin-top:4px}
.badge{display:inline-block;padding:2px 9px;border-radius:10px;font-size:12px;font-weight:600;margin-left:8px}
.b-emulator{background:#f0ad4e;color:#1d2330}.b-vllm{background:#5cb85c}.b-external{background:#5bc0de;color:#1d2330}
.b-other{background:#999}
main{padding:12px 24px 40px;max-width:1280px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:12px 18px;margin:14px 0}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:14px 0 6px}
.verdict{font-size:15px;line-height:1.5}
.callout{border-left:4px solid #d9534f;background:#fdf2f2;padding:6px 10px;margin:8px 0}
.warn{border-left:4px solid #f0ad4e;background:#fff8ec;padding:4px 10px;margin:4px 0;font-size:13px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts figure{margin:0;flex:1 1 560px}
img{max-width:100%;height:auto;border:1px solid #eee}figure.wide{margin:8px 0}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0;width:auto}
th,td{border:1px solid #dde1e7;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#eef1f5;position:sticky;top:0}td.l,th.l{text-align:left}
tr.bad td{background:#fdecea}.flag{color:#b52b27;font-weight:600}.muted{color:#777}
.scroll{overflow-x:auto;max-width:100%}
pre{background:#f3f4f6;padding:8px;white-space:pre-wrap;word-break:break-all;font-size:12px}
details summary{cursor:pointer;font-weight:600;margin:6px 0}
</style></head>
<body>
<header>
<h1>ridgeline report: {{ run_name }} <span class="badge b-{{ backend_class }}">{{ backend_note }}</span></h1>
<div class="meta">model {{ model }} · GPU {{ gpu }} · baseline {{ baseline }} · {{ level_word }} sweep ·
{{ started }}{% if status %} · run {{ status }}{% endif %}</div>
</header>
<main>
{% macro table(t) %}<div class="scroll"><table><tr>{% for h in t.headers %}<th{% if loop.index0 in t.text %} class="l"{% endif %}>{{ h }}</th>{% endfor %}</tr>
{% for r in t.rows %}<tr{% if r.bad %} class="bad"{% endif %}>{% for c in r.cells %}<td class="{{ 'l' if loop.index0 in t.text else '' }} {{ 'flag' if loop.index0 in r.flagged else '' }}">{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table></div>{% endmacro %}
<section id="verdict"><h2>Verdict</h2>
<p class="verdict">{{ verdict }}</p>
{% for c in callouts %}<div class="callout">{{ c }}</div>{% endfor %}
<div class="charts">
{% if charts.get('throughput') %}<figure><img alt="throughput against {{ level_word }}" src="{{ charts.get('throughput') }}"></figure>{% endif %}
{% if charts.get('speedup') %}<figure><img alt="speedup against {{ level_word }}" src="{{ charts.get('speedup') }}"></figure>{% endif %}
</div>
</section>

<section id="quality"><h2>Quality{% if quality_baseline %} against {{ quality_baseline }}{% endif %}</h2>
{% if quality_absent %}<p class="muted">{{ quality_absent }}</p>{% else %}
{{ table(quality_table) }}
{% if charts.get('quality') %}<figure><img alt="speed against quality" src="{{ charts.get('quality') }}"></figure>{% endif %}
<p class="muted">{{ quality_note }}</p>
{% for n in quality_notes %}<div class="warn">{{ n }}</div>{% endfor %}{% endif %}
</section>

<section id="crossover"><h2>Where the speedup falls below each threshold</h2>
{% if crossover_table %}
{{ table(crossover_table) }}
<p class="muted">Interpolated in log2({{ level_word }}) between the last step above and the first below; the interval is the
same crossing on the 95% bounds of the speedup. "from N": already below at the lowest step; "never": not below within the steps.</p>
{% else %}<p class="muted">Only one variant (or no complete step): nothing to compare.</p>{% endif %}
<h3>Speedup over {{ baseline }} at each {{ level_word }}</h3>
{% if speedup_table %}{{ table(speedup_table) }}
<p class="muted">{{ interval_note }}</p>{% endif %}
<h3>Capacity under the SLO</h3>
<p class="muted">SLO: {{ slo }}; a step is within it when at least {{ attainment }} of its measured requests meet it.</p>
<div class="scroll"><table><tr><th class="l">variant</th><th>best {{ level_word }} within SLO</th><th>output tokens/s there</th><th>goodput tokens/s there</th><th>SLO breaks at</th><th>knee</th><th>peak tokens/s</th><th>at</th><th>ridge batch</th></tr>
{% for r in capacity_rows %}<tr><td class="l">{{ r.variant }}</td><td>{{ r.level }}</td><td>{{ r.tps }}</td><td>{{ r.goodput }}</td><td>{{ r.slo_break }}</td><td>{{ r.knee }}</td><td>{{ r.peak }}</td><td>{{ r.peak_level }}</td><td>{{ r.ridge }}</td></tr>{% endfor %}
</table></div>
</section>

<section id="latency"><h2>Latency and goodput</h2>
{% if charts.get('latency') %}<figure class="wide"><img alt="latency percentiles" src="{{ charts.get('latency') }}"></figure>{% endif %}
{% if charts.get('goodput') %}<figure class="wide"><img alt="goodput" src="{{ charts.get('goodput') }}"></figure>{% endif %}
</section>

<section id="roofline"><h2>Roofline</h2>
{% if roofline_unavailable %}<p class="warn">No roofline: {{ roofline_unavailable }}</p>{% else %}
{% for s in roofline_sentences %}<p>{{ s }}</p>{% endfor %}
{% if charts.get('roofline') %}<figure><img alt="roofline" src="{{ charts.get('roofline') }}"></figure>{% endif %}
<div class="scroll"><table><tr><th class="l">variant</th><th>{{ level_word }}</th><th>batch</th><th class="l">from</th><th>context</th><th>bound step</th><th>measured step (mean ITL)</th><th>share of bound</th><th class="l">regime</th><th>weights' share of bytes</th><th>achieved TFLOP/s (of peak)</th><th>achieved TB/s (of peak)</th></tr>
{% for r in roofline_rows %}<tr><td class="l">{{ r.variant }}</td><td>{{ r.level }}</td><td>{{ r.batch }}</td><td class="l">{{ r.source }}</td><td>{{ r.context }}</td><td>{{ r.bound }}</td><td>{{ r.measured }}</td><td>{{ r.share }}</td><td class="l">{{ r.regime }}</td><td>{{ r.wshare }}</td><td>{{ r.flops }}</td><td>{{ r.bw }}</td></tr>{% endfor %}
</table></div>
<p class="muted">Achieved TFLOP/s and TB/s per GPU are the window's increase of vLLM's own estimates
(vllm:estimated_flops_per_gpu_total, vllm:estimated_read_bytes_per_gpu_total) over its length, "–" where
the server does not expose them or never filled them (all zero: missing, not measured); the shares are of the
datasheet peaks, {{ roofline_peaks }}.</p>
{% if roofline_gap_table.rows %}<h3>Each step's gap to its bound</h3>
<p class="muted">{{ roofline_gap_note }}</p>
{{ table(roofline_gap_table) }}{% endif %}{% endif %}
</section>

<section id="server"><h2>Server-side series</h2>
{% if charts.get('server_series') %}<figure><img alt="server series over time" src="{{ charts.get('server_series') }}"></figure>
{% else %}<p class="muted">No server metrics were scraped.</p>{% endif %}
</section>

{% if energy_table.rows %}<section id="energy"><h2>Energy</h2>
{% for s in energy_sentences %}<p>{{ s }}</p>{% endfor %}
{% if charts.get('energy') %}<figure><img alt="energy" src="{{ charts.get('energy') }}"></figure>{% endif %}
{{ table(energy_table) }}
<p class="muted">Energy of the measured window from the GPUs' cumulative energy counters (integrated power where
there is none), summed over the GPUs sampled; "modelled" is the emulator's power model, not a measurement. A step
whose clocks were throttled, or whose samples cover less than {{ min_coverage }} of the window, is left out of the
comparison.</p>
</section>{% endif %}

<section id="agreement"><h2>Client and server agreement</h2>
<p class="muted">Client medians against the server's histogram estimates in the same window. Flagged over {{ agreement_pct }}%;
"coarse buckets" when the client's value lies inside the server bucket the estimate came from (the histogram cannot tell them apart).</p>
<div class="scroll"><table><tr><th class="l">variant</th><th>{{ level_word }}</th><th>client TTFT p50</th><th>server TTFT p50</th><th>diff</th><th>client ITL p50</th><th>server ITL p50</th><th>diff</th><th>client tokens/s</th><th>server tokens/s</th><th class="l">verdict</th><th class="l">client CPU</th></tr>
{% for r in agreement_rows %}<tr{% if r.bad %} class="bad"{% endif %}><td class="l">{{ r.variant }}</td><td>{{ r.level }}</td><td>{{ r.c_ttft }}</td><td>{{ r.s_ttft }}</td><td{% if r.f_ttft %} class="flag"{% endif %}>{{ r.d_ttft }}</td><td>{{ r.c_itl }}</td><td>{{ r.s_itl }}</td><td{% if r.f_itl %} class="flag"{% endif %}>{{ r.d_itl }}</td><td>{{ r.c_tps }}</td><td>{{ r.s_tps }}</td><td class="l">{{ r.verdict }}</td><td class="l">{{ r.cpu }}</td></tr>{% endfor %}
</table></div></section>

{% if crosscheck_table %}<section id="crosscheck"><h2>ridgeline vs vllm bench serve</h2>
<p class="muted">{{ crosscheck_note }}</p>
{{ table(crosscheck_table) }}
{% if crosscheck_levels_table %}<p class="muted">{{ crosscheck_levels_note }}</p>
{{ table(crosscheck_levels_table) }}{% endif %}
{% for c in crosscheck_commands %}<p><b>{{ c.variant }}</b></p><pre>{{ c.command }}</pre>{% endfor %}
</section>{% endif %}

<section id="steps"><h2>Per-step results</h2>
{% for v in step_tables %}<h3>{{ v.variant }}{% if v.note %} <span class="flag">{{ v.note }}</span>{% endif %}</h3>
<div class="scroll"><table><tr>{% for h in step_headers %}<th{% if loop.index <= 2 %} class="l"{% endif %}>{{ h }}</th>{% endfor %}</tr>
{% for r in v.rows %}<tr{% if r.bad %} class="bad"{% endif %}>{% for c in r.cells %}<td{% if loop.index <= 2 %} class="l"{% endif %}>{{ c }}</td>{% endfor %}</tr>{% endfor %}
</table></div>{% endfor %}
</section>

<section id="errors"><h2>Errors and warnings</h2>
{% if error_rows %}<div class="scroll"><table><tr><th class="l">variant</th><th>step</th><th class="l">kind</th><th>count</th><th class="l">example</th></tr>
{% for r in error_rows %}<tr><td class="l">{{ r.variant }}</td><td>{{ r.step }}</td><td class="l">{{ r.kind }}</td><td>{{ r.count }}</td><td class="l"><code>{{ r.example }}</code></td></tr>{% endfor %}
</table></div>{% else %}<p class="muted">No request failed.</p>{% endif %}
{% for w in warnings %}<div class="warn">{{ w }}</div>{% endfor %}
</section>

<section id="environment"><h2>Environment</h2>
<div class="scroll"><table>
{% for k, v in environment %}<tr><th class="l">{{ k }}</th><td class="l">{{ v }}</td></tr>{% endfor %}
</table></div>
<h3>Servers</h3>
{% for s in servers %}<p><b>{{ s.variant }}</b> — {{ s.kind }}; served check: <span{% if s.mismatch %} class="flag"{% endif %}>{{ s.verdict }}</span>{% if s.url %} · {{ s.url }}{% endif %}</p>
{% if s.reasons %}<ul>{% for r in s.reasons %}<li>{{ r }}</li>{% endfor %}</ul>{% endif %}
<pre>{{ s.command }}</pre>{% endfor %}
<details><summary>The plan as run</summary><pre>{{ plan_json }}</pre></details>
</section>
</main></body></html>
"""

STEP_HEADERS = ["step", "status", "level", "out tok/s", "95% interval", "total tok/s", "req/s", "goodput tok/s",
                "SLO met", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "TPOT p50", "e2e p50", "e2e p99",
                "requests", "errors", "cancelled", "running", "waiting", "KV use", "preempt", "prefix hit"]


def data_uri(path: Optional[Path]) -> Optional[str]:
    if path is None or not Path(path).exists():
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _env() -> jinja2.Environment:
    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _command(argv: list[str], env: dict[str, Any]) -> str:
    prefix = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in (env or {}).items())
    line = " ".join(shlex.quote(a) for a in argv) if argv else "(external: nothing was started)"
    return (prefix + " " if prefix else "") + line


def _quality_context(a: Analysis) -> dict[str, Any]:
    q = a.quality
    return {"quality_baseline": (q or {}).get("baseline") or "", "quality_absent": absent_sentence(a.info.backend, q),
            "quality_table": quality_table(q), "quality_note": quality_note(q) if q else "",
            "quality_notes": (q or {}).get("notes") or []}


def context(a: Analysis, charts: dict[str, Path], energy: Optional[dict] = None) -> dict[str, Any]:
    """Everything the template shows, as plain strings and lists (escaping is the template's job)."""
    info = a.info
    mode = info.mode
    word = info.level_name()
    lvl = lambda x: fmt.level(x, mode)
    m = info.manifest
    others = [v for v in info.variants if v != info.baseline]

    crossover = rt.crossover_table(a) if others else None
    speedup = rt.speedup_table(a) if others else None

    capacity_rows = []
    for v in info.variants:
        c = a.capacity.get(v)
        if c is None:
            continue
        capacity_rows.append({"variant": v, "level": lvl(c.level), "tps": fmt.num(c.output_tokens_per_s),
                              "goodput": fmt.num(c.goodput_tokens_per_s), "slo_break": lvl(c.slo_break),
                              "knee": lvl(c.knee), "peak": fmt.num(c.peak_output_tokens_per_s),
                              "peak_level": lvl(c.peak_level), "ridge": fmt.num(a.roofline.ridge.get(v))
                              if fmt.is_num(a.roofline.ridge.get(v)) else ("never" if v in a.roofline.ridge else "–")})

    roofline_rows = []
    for r in a.roofline.steps.itertuples(index=False):
        roofline_rows.append({"variant": r.variant, "level": lvl(r.level), "batch": fmt.num(r.batch),
                              "source": r.batch_source, "context": fmt.num(r.context_tokens),
                              "bound": fmt.seconds(r.bound_s), "measured": fmt.seconds(r.measured_s),
                              "share": fmt.pct(r.bound_share), "regime": r.regime or "–",
                              "wshare": fmt.pct(r.weight_byte_share),
                              "flops": _of_peak(r.achieved_flops_per_s, r.achieved_flops_share, 1),
                              "bw": _of_peak(r.achieved_read_bytes_per_s, r.achieved_bandwidth_share, 0)})

    sentences = [s for s in [_roofline_sentence(a)] if s]

    agreement_rows = []
    for r in a.steps.itertuples(index=False):
        agreement_rows.append({
            "variant": r.variant, "level": lvl(r.level), "c_ttft": fmt.seconds(r.ttft_p50_s),
            "s_ttft": fmt.seconds(r.server_ttft_p50_s), "d_ttft": fmt.signed_pct(r.ttft_server_diff_pct),
            "f_ttft": bool(r.ttft_flagged), "c_itl": fmt.seconds(r.itl_p50_s), "s_itl": fmt.seconds(r.server_itl_p50_s),
            "d_itl": fmt.signed_pct(r.itl_server_diff_pct), "f_itl": bool(r.itl_flagged),
            "c_tps": fmt.num(r.output_tokens_per_s), "s_tps": fmt.num(r.server_generation_tokens_per_s),
            "verdict": _agreement_word(r), "bad": "disagree" in (r.agreement or ""),
            "cpu": (f"{r.client_cpu_max:.0f}%" if fmt.is_num(r.client_cpu_max) else "–")
            + (" saturated" if r.client_saturated else ""),
        })

    step_tables = []
    for v in info.variants:
        st = a.steps[a.steps.variant == v]
        rows = []
        for r in st.itertuples(index=False):
            d = a.draws.get((v, int(r.step)))

            lo, hi = _iv(d) if d is not None else (np.nan, np.nan)
            cells = [str(r.step) + (f" (repeat {r.repeat})" if r.repeat else ""), r.status, lvl(r.level),
                     fmt.num(r.output_tokens_per_s), fmt.interval(lo, hi), fmt.num(r.total_tokens_per_s),
                     fmt.num(r.requests_per_s), fmt.num(r.goodput_tokens_per_s), fmt.pct(r.slo_attainment),
                     fmt.seconds(r.ttft_p50_s), fmt.seconds(r.ttft_p99_s), fmt.seconds(r.itl_p50_s),
                     fmt.seconds(r.itl_p99_s), fmt.seconds(r.tpot_p50_s), fmt.seconds(r.e2e_p50_s),
                     fmt.seconds(r.e2e_p99_s), str(r.requests), str(r.errors), str(r.cancelled),
                     fmt.num(r.server_running_mean), fmt.num(r.server_waiting_mean), fmt.pct(r.kv_cache_usage_mean, 1),
                     fmt.num(r.preemptions), fmt.pct(r.prefix_cache_hit_rate, 1)] + rt.lateness_cells(a, r)
            rows.append({"cells": cells, "bad": r.status != "complete" or r.errors > 0})
        step_tables.append({"variant": v, "rows": rows, "note": served_problem(a, v) or ""})

    error_rows = [{"variant": r.variant, "step": r.step, "kind": r.error_kind, "count": int(r.count),
                   "example": _short(r.example, 400)} for r in a.errors.itertuples(index=False)]

    callouts = [p for p in (served_problem(a, v) for v in info.variants) if p]

    host = m.get("host") if isinstance(m.get("host"), dict) else {}
    environment = [("run", info.name), ("backend", BACKEND_NOTE.get(info.backend, info.backend)),
                   ("ridgeline", m.get("ridgeline_version")), ("started", m.get("started_iso") or m.get("started")),
                   ("status", m.get("status")), ("model", info.model), ("GPU (plan)", info.gpu)]
    if m.get("gpu") is not None:
        environment.append(("GPU (detected)", _jsonish(m.get("gpu"))))
    for k, v in host.items():
        environment.append((f"host {k}", v))
    versions = m.get("versions") if isinstance(m.get("versions"), dict) else {}
    for k, v in versions.items():
        environment.append((f"version {k}", v))
    if m.get("scenario"):
        environment.append(("scenario", _jsonish(m.get("scenario"))))
    environment = [(str(k), "–" if v is None else str(v)) for k, v in environment]

    servers = []
    for v in info.variants:
        vi = info.variant_info[v]
        servers.append({"variant": v, "kind": f"weights {vi.weights}, KV cache {vi.kv_cache_dtype}",
                        "verdict": vi.served_verdict or "not recorded", "mismatch": vi.served_verdict == "mismatch",
                        "reasons": vi.served_reasons, "url": vi.url, "command": _command(vi.argv, vi.env)})

    backend_class = info.backend if info.backend in BACKENDS else "other"
    return {
        "run_name": info.name, "backend_note": BACKEND_NOTE.get(info.backend, info.backend),
        "backend_class": backend_class, "model": info.model, "gpu": info.gpu, "baseline": info.baseline,
        "level_word": word, "started": m.get("started_iso") or "", "status": m.get("status") or "",
        "verdict": _verdict_text(a), "callouts": callouts, "charts": {k: data_uri(p) for k, p in charts.items()},
        "thresholds": [threshold_key(t) + "x" for t in info.thresholds], "crossover_table": crossover,
        "speedup_table": speedup,
        "interval_note": rt.interval_note(a),
        "slo": info.slo.describe(), "attainment": f"{SLO_ATTAINMENT:.0%}", "capacity_rows": capacity_rows,
        "roofline_unavailable": a.roofline.unavailable, "roofline_sentences": sentences,
        "roofline_rows": roofline_rows, "agreement_pct": f"{AGREEMENT_PCT:g}", "agreement_rows": agreement_rows,
        "step_headers": STEP_HEADERS + rt.lateness_headers(a), "step_tables": step_tables, "error_rows": error_rows,
        "warnings": a.warnings, "environment": environment, "servers": servers,
        "plan_json": json.dumps(m.get("plan"), indent=2, default=str),
        "energy_sentences": (energy or {}).get("sentences", []), "energy_table": rt.energy_table(a),
        "min_coverage": f"{MIN_COVERAGE:.0%}", "roofline_peaks": _peaks(a),
        "crosscheck_table": rt.crosscheck_table(a) if m.get("crosscheck") else None,
        "crosscheck_note": rt.crosscheck_note(),
        "crosscheck_levels_table": rt.crosscheck_levels_table(a) if has_rounds(a.crosscheck_levels) else None,
        "crosscheck_levels_note": rt.crosscheck_levels_note(),
        "roofline_gap_table": rt.roofline_gap_table(a), "roofline_gap_note": rt.roofline_gap_note(),
        **_quality_context(a),
        "crosscheck_commands": [{"variant": v, "command": _command(argv, {})} for v, argv in crosscheck_commands(m)],
    }


def _of_peak(rate: Any, share: Any, digits: int) -> str:
    """'3.6 (0.4%)': a rate in units of 10^12 and its share of the peak."""
    if not fmt.is_num(rate):
        return "–"
    return fmt.tera(rate) + (f" ({fmt.pct(share, digits)})" if fmt.is_num(share) else "")


def _peaks(a: Analysis) -> str:
    """The GPU's dense peaks each variant is held against, e.g. '989 TFLOP/s (bf16: fp16, awq) and 3.35 TB/s'."""
    roof = a.roofline
    if roof.unavailable or roof.gpu is None:
        return "unknown"

    by_dtype: dict[str, list[str]] = {}
    for v, (weights, _) in roof.kinds.items():
        try:
            by_dtype.setdefault(compute_dtype(weights, roof.gpu), []).append(v)
        except ValueError:
            continue
    flops = ", ".join(f"{fmt.tera(roof.gpu.flops(d, False))} TFLOP/s ({d}: {', '.join(vs)})" for d, vs in by_dtype.items())
    return f"{flops} and {fmt.tera(roof.gpu.bandwidth(False))} TB/s"


def _verdict_text(a: Analysis) -> str:
    return verdict(a)


def _agreement_word(r: Any) -> str:
    words = []
    for key in ("ttft", "itl"):
        diff = getattr(r, f"{key}_server_diff_pct")
        if not fmt.is_num(diff):
            continue
        if not getattr(r, f"{key}_flagged"):
            words.append(f"{key.upper()} agrees")
        elif getattr(r, f"{key}_within_bucket"):
            words.append(f"{key.upper()}: coarse buckets")
        else:
            words.append(f"{key.upper()} disagrees")
    return "; ".join(words) or "no server histogram"


def _short(x: Any, n: int) -> str:
    s = "" if x is None or (isinstance(x, float) and np.isnan(x)) else str(x)
    return s if len(s) <= n else s[: n - 1] + "…"


def _jsonish(x: Any) -> str:
    return json.dumps(x, default=str, sort_keys=True) if isinstance(x, (dict, list)) else str(x)


def render_html(a: Analysis, charts: dict[str, Path], energy: Optional[dict] = None) -> str:
    return _env().from_string(TEMPLATE).render(**context(a, charts, energy))
