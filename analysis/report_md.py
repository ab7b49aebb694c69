"""report.md, for a pull request: the verdict, speedup and crossover tables, per-step table, chart links.

Strings from outside are escaped for Markdown (HTML metacharacters, table pipes, backticks), so a
hostile variant name or error renders as text on a code host too.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any, Optional

import numpy as np

from analysis import fmt
from analysis import report_tables as rt
from analysis.crosscheck import commands as crosscheck_commands
from analysis.crosscheck_rounds import has_rounds
from analysis.energy_text import energy_sentences
from analysis.pipeline import Analysis
from analysis.quality.table import absent_sentence, quality_note, quality_table
from analysis.speedup import interval
from analysis.summary import BACKEND_NOTE, served_problem
from analysis.summary import verdict as _verdict

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#!~])")


def md(text: Any) -> str:
    """Escape a string for a Markdown paragraph or table cell (one line)."""
    s = "" if text is None else str(text)
    s = s.replace("&", "&amp;")
    s = _MD_SPECIAL.sub(lambda m: {"<": "&lt;", ">": "&gt;", "|": "&#124;"}.get(m.group(1), "\\" + m.group(1)), s)
    return " ".join(s.split())


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _shared_table(t: rt.Table) -> list[str]:
    """A report_tables.Table in Markdown: every cell escaped, flagged cells in bold."""
    rows = [[f"**{md(c)}**" if i in r.flagged else md(c) for i, c in enumerate(r.cells)] for r in t.rows]
    return _table([md(h) for h in t.headers], rows)


def _quality(a: Analysis, charts: dict[str, Path], run_dir: Path) -> list[str]:
    """The quality section: its table, the speed-against-quality chart and notes, or why there is none."""
    q = a.quality
    lines = ["## Quality" + (f" against {md(q.get('baseline'))}" if q and q.get("baseline") else ""), ""]
    absent = absent_sentence(a.info.backend, q)
    if absent:
        return lines + [md(absent), ""]
    lines += _shared_table(quality_table(q)) + [""]
    if "quality" in charts:
        lines += [f"![speed against quality]({Path(charts['quality']).relative_to(run_dir).as_posix()})", ""]
    lines += [md(quality_note(q)), ""] + [f"> **Note:** {md(n)}" for n in q.get("notes") or []]
    return lines + ([""] if q.get("notes") else [])


def render_md(a: Analysis, charts: dict[str, Path], run_dir: Path, verdict: Optional[str] = None) -> str:
    info = a.info
    mode = info.mode
    lvl = lambda x: fmt.level(x, mode)
    word = info.level_name()
    others = [v for v in info.variants if v != info.baseline]
    if verdict is None:
        verdict = _verdict(a)
    lines = [f"# ridgeline: {md(info.name)}", "",
             f"**Backend:** {md(BACKEND_NOTE.get(info.backend, info.backend))} · **model:** {md(info.model)} · "
             f"**GPU:** {md(info.gpu)} · **baseline:** {md(info.baseline)}", "", md(verdict), ""]
    for v in info.variants:
        p = served_problem(a, v)
        if p:
            lines += [f"> **Warning:** {md(p)}", ""]

    if "throughput" in charts or "speedup" in charts:
        for name in ("throughput", "speedup"):
            if name in charts:
                rel = Path(charts[name]).relative_to(run_dir).as_posix()
                lines.append(f"![{name}]({rel})")
        lines.append("")

    lines += _quality(a, charts, run_dir)
    if others:
        lines += [f"## Crossover ({word} where the speedup falls below each threshold)", ""]
        lines += _shared_table(rt.crossover_table(a)) + [""]
        lines += [f"## Speedup over {md(info.baseline)} (95% interval)", ""]
        lines += _shared_table(rt.speedup_table(a)) + ["", md(rt.interval_note(a)), ""]

    lines += ["## Per step", ""]
    heads = ["variant", word, "status", "out tok/s", "95% interval", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99",
             "e2e p50", "goodput tok/s", "SLO met", "requests", "errors", "prefix hit"] + rt.lateness_headers(a)
    rows = []
    for r in a.steps.itertuples(index=False):
        d = a.draws.get((r.variant, int(r.step)))
        lo, hi = interval(d) if d is not None else (np.nan, np.nan)
        rows.append([md(r.variant), lvl(r.level), md(r.status), fmt.num(r.output_tokens_per_s), fmt.interval(lo, hi),
                     fmt.seconds(r.ttft_p50_s), fmt.seconds(r.ttft_p99_s), fmt.seconds(r.itl_p50_s),
                     fmt.seconds(r.itl_p99_s), fmt.seconds(r.e2e_p50_s), fmt.num(r.goodput_tokens_per_s),
                     fmt.pct(r.slo_attainment), str(r.requests), str(r.errors),
                     fmt.pct(r.prefix_cache_hit_rate, 1)] + rt.lateness_cells(a, r))
    lines += _table(heads, rows) + [""]

    gaps = rt.roofline_gap_table(a)
    if gaps.rows:
        lines += ["## Roofline: each step's gap to its bound", "", md(rt.roofline_gap_note()), ""]
        lines += _shared_table(gaps) + [""]

    energy = rt.energy_table(a)
    if energy.rows:
        lines += ["## Energy", ""] + [f"- {md(s)}" for s in energy_sentences(a.energy, a.baseline)] + [""]
        lines += _shared_table(energy) + [""]
    if info.manifest.get("crosscheck"):
        lines += ["## ridgeline vs vllm bench serve", "", md(rt.crosscheck_note()), ""]
        lines += _shared_table(rt.crosscheck_table(a)) + [""]
        if has_rounds(a.crosscheck_levels):
            lines += [md(rt.crosscheck_levels_note()), ""] + _shared_table(rt.crosscheck_levels_table(a)) + [""]
        for v, argv in crosscheck_commands(info.manifest):
            lines += [f"- {md(v)}: {md(shlex.join(argv))}"]
        lines.append("")

    if a.warnings:
        lines += ["## Warnings", ""] + [f"- {md(w)}" for w in a.warnings] + [""]
    if charts:
        lines += ["## Charts", ""]
        for name, p in charts.items():
            rel = Path(p).relative_to(run_dir).as_posix()
            lines.append(f"- [{name}]({rel})")
        lines.append("")
    lines.append("Full report: report.html (self-contained).")
    return "\n".join(lines) + "\n"
