"""Tables both reports show (crossover, speedup, energy, vllm bench serve cross-check), as plain strings.

One place decides what a table holds and how its numbers read; report.html escapes the cells
through jinja2 and report.md through its Markdown escaping, so neither builds its own copy.
"""

from __future__ import annotations

from typing import Any, Callable

from analysis import fmt
from analysis.crosscheck import CROSSCHECK_PCT, verdict_word
from analysis.crosscheck_rounds import has_rounds, level_verdict
from analysis.pipeline import Analysis
from analysis.prefix_cache import LEAK_PCT, expects_hits, leaked
from analysis.repeat_draws import FROM_REPEATS, MIN_REPEATS, source
from analysis.roofline_gap import gap_table
from analysis.summary import threshold_key
from analysis.table_model import Row, Table


def level_formatter(a: Analysis) -> Callable[[Any], str]:
    return lambda x: fmt.level(x, a.info.mode)


def lateness_headers(a: Analysis) -> list[str]:
    """Open-loop lateness columns of the per-step tables (none for a closed-loop sweep)."""
    return ["late p50", "late p99", "late max"] if a.info.mode == "rate" else []


def lateness_cells(a: Analysis, r: Any) -> list[str]:
    if a.info.mode != "rate":
        return []
    return [fmt.seconds(r.lateness_p50_s), fmt.seconds(r.lateness_p99_s), fmt.seconds(r.lateness_max_s)]


NEVER = "never"  # a crossover that does not happen within the steps


def crossover_table(a: Analysis) -> Table:
    """Per variant and threshold: the level where the speedup falls below it, and that level's interval."""
    lvl = level_formatter(a)
    info = a.info
    headers = ["variant"]
    for t in info.thresholds:
        headers += [f"below {threshold_key(t)}x", "interval"]
    rows = []
    for v in [v for v in info.variants if v != info.baseline]:
        cells = [v]
        last = a.speedups[a.speedups.variant == v].level.max()
        for t in info.thresholds:
            c = a.crossings.get(v, {}).get(t)
            if c is None or c.level is None:
                cells += [NEVER, ""]
            elif c.below_from_start:
                cells += [f"from {lvl(c.level)}", ""]
            else:
                cells += [lvl(c.level), fmt.interval(c.low, c.high, lvl, open_high=f"> {lvl(last)}")]
        rows.append(Row(cells))
    return Table(headers, rows)


def interval_note(a: Analysis) -> str:
    """Where the speedup and crossover intervals come from, so a reader knows what they can and cannot see."""
    lv = a.levels
    n = sum(source(int(r)) == FROM_REPEATS for r in lv["repeats"]) if "repeats" in lv.columns else 0
    blocks = ("a circular block bootstrap over the step's window (blocks one request lifetime long), which "
              "cannot see drift between steps")
    spread = "the spread between its repeats (Student t on their mean)"
    if n == 0:
        return (f"95% intervals: {blocks}. With sweep.repeats of {MIN_REPEATS} or more they come from the spread "
                f"between the repeats instead.")
    if n == len(lv):
        return (f"95% intervals: every level has {MIN_REPEATS} or more repeats and takes its interval from {spread}; "
                f"a single step's interval (the per-step table) is {blocks}.")
    return (f"95% intervals: {n} of {len(lv)} levels have {MIN_REPEATS} or more repeats and take theirs from "
            f"{spread}; the other levels, and each single step, from {blocks}.")


def speedup_table(a: Analysis) -> Table:
    """Speedup over the baseline at each level, with its 95% interval; a dash where a variant has no step."""
    lvl = level_formatter(a)
    info = a.info
    sp = a.speedups
    levels = sorted(sp.level.dropna().unique().tolist())
    rows = []
    for v in [v for v in info.variants if v != info.baseline]:
        g = sp[sp.variant == v].set_index("level")
        cells = [v]
        for L in levels:
            if L in g.index:
                r = g.loc[L]
                cells.append(f"{fmt.ratio(r.speedup)} ({fmt.interval(r.speedup_lo, r.speedup_hi, fmt.ratio)})")
            else:
                cells.append("–")
        rows.append(Row(cells))
    return Table(["variant"] + [lvl(x) for x in levels], rows)


def energy_table(a: Analysis) -> Table:
    """Per step with telemetry: power, energy per token, tokens per joule and per GPU, throttling."""
    lvl = level_formatter(a)
    headers = ["variant", "step", a.info.level_name(), "power", "GPUs", "mean power", "max power", "J/token",
               "tokens/J", "tok/s per GPU", "coverage", "throttled", "compared"]
    rows = []
    e = a.energy
    for r in e[e.gpus.notna()].itertuples(index=False):
        throttled = (r.throttle_reasons or "yes") if r.throttled else "no"
        capped = f" (power cap {fmt.pct(r.power_capped_share)})" if fmt.is_num(r.power_capped_share) and \
            r.power_capped_share > 0 else ""
        rows.append(Row([r.variant, str(r.step), lvl(r.level), r.label or "–", fmt.num(r.gpus),
                         _watts(r.mean_power_w), _watts(r.max_power_w), fmt.num(r.joules_per_token),
                         fmt.num(r.tokens_per_joule), fmt.num(r.tokens_per_s_per_gpu), fmt.pct(r.coverage),
                         throttled + capped, "yes" if r.comparable else "no"],
                        bad=bool(r.throttled)))
    return Table(headers, rows, text={0, 3, 11, 12})


def _watts(x: Any) -> str:
    return f"{fmt.num(x)} W" if fmt.is_num(x) else "–"


def crosscheck_table(a: Analysis) -> Table:
    """ridgeline's step against vllm bench serve at the same concurrency, differences in percent; a row per
    round when a level was read in several (crosscheck_levels_table then gives each level's mean)."""
    rounds = has_rounds(a.crosscheck_levels)
    headers = ["variant", "concurrency", *(["round"] if rounds else []), "prompts", "verdict", "ridgeline out tok/s",
               "bench out tok/s", "diff", "ridgeline TTFT p50", "bench TTFT p50", "diff", "ridgeline ITL p50",
               "bench ITL p50", "diff", "ridgeline prefix hit", "bench prefix hit", "note"]
    at = 1 if rounds else 0  # columns after "concurrency" move by one with the round column
    rows = []
    for r in a.crosscheck.itertuples(index=False):
        cells = [r.variant, fmt.level(r.concurrency), *([fmt.num(r.round)] if rounds else []), fmt.num(r.num_prompts),
                 verdict_word(r),
                 fmt.num(r.ridgeline_output_tokens_per_s), fmt.num(r.bench_output_tokens_per_s),
                 fmt.signed_pct(r.output_tokens_diff_pct),
                 fmt.seconds(r.ridgeline_ttft_p50_s), fmt.seconds(r.bench_ttft_p50_s), fmt.signed_pct(r.ttft_diff_pct),
                 fmt.seconds(r.ridgeline_itl_p50_s), fmt.seconds(r.bench_itl_p50_s), fmt.signed_pct(r.itl_diff_pct),
                 fmt.pct(r.ridgeline_prefix_cache_hit_rate, 1), fmt.pct(r.bench_prefix_cache_hit_rate, 1),
                 r.note or ""]
        flagged = {i + at for i, key in ((6, "output_tokens"), (9, "ttft"), (12, "itl"))
                   if getattr(r, f"{key}_flagged")}
        flagged |= {14 + at} if r.prefix_cache_flagged else set()
        flagged |= {13 + at} if leaked(r.ridgeline_prefix_cache_hit_rate) and not expects_hits(a.info.plan) else set()
        rows.append(Row(cells, flagged, bad=r.status != "ok"))
    return Table(headers, rows, text={0, 3 + at, 15 + at})


def crosscheck_levels_table(a: Analysis) -> Table:
    """Each level over its rounds: the means, the geometric mean of the paired differences and its interval."""
    headers = ["variant", "concurrency", "rounds", "verdict", "ridgeline out tok/s", "bench out tok/s", "diff",
               "diff 95% interval", "TTFT p50 diff", "ITL p50 diff", "note"]
    rows = []
    for r in a.crosscheck_levels.itertuples(index=False):
        span = (f"{fmt.signed_pct(r.output_tokens_diff_lo_pct)} to {fmt.signed_pct(r.output_tokens_diff_hi_pct)}"
                if fmt.is_num(r.output_tokens_diff_lo_pct) else "–")
        cells = [r.variant, fmt.level(r.concurrency), fmt.num(r.rounds), level_verdict(r),
                 fmt.num(r.ridgeline_output_tokens_per_s), fmt.num(r.bench_output_tokens_per_s),
                 fmt.signed_pct(r.output_tokens_diff_pct), span, fmt.signed_pct(r.ttft_diff_pct),
                 fmt.signed_pct(r.itl_diff_pct), r.note or ""]
        flagged = {i for i, key in ((6, "output_tokens"), (8, "ttft"), (9, "itl")) if getattr(r, f"{key}_flagged")}
        rows.append(Row(cells, flagged, bad=r.status != "ok"))
    return Table(headers, rows, text={0, 3, 7, 10})


def crosscheck_levels_note() -> str:
    return (f"Each level over its rounds (crosscheck.interleave with sweep.repeats): every repeat's step was "
            f"followed seconds later by a bench round of its own, so each round is a pair read under the same "
            f"conditions. diff: the geometric mean of the rounds' ratios ridgeline / bench, flagged beyond "
            f"{CROSSCHECK_PCT:g}%; its 95% interval is Student t on their logarithms. The tok/s columns are "
            f"the rounds' plain means.")


def crosscheck_note() -> str:
    return (f"The same server, right after ridgeline's sweep of the variant, measured by vllm bench serve at each "
            f"concurrency (with crosscheck.interleave right after ridgeline's step there, a round per repeat); "
            f"compared with ridgeline's step at that concurrency (the repeat it followed, else the first). "
            f"Differences are "
            f"ridgeline against the bench, flagged beyond {CROSSCHECK_PCT:g}%. The bench counts its whole run "
            f"(ramp and tail included) and ridgeline its measured window, so short bench runs read lower. "
            f"Prefix hit: the share of prompt tokens the server's prefix cache served (ridgeline's window; the "
            f"bench's level, from the counters read around it), flagged beyond {LEAK_PCT:g}% where the traffic "
            f"shares no prefix; each level sends prompts of its own seed.")


def roofline_gap_table(a: Analysis) -> Table:
    """Each step's measured decode step against its bound, split by the server's own counters."""
    lvl = level_formatter(a)
    rows = [Row([r.variant, lvl(r.level), r.regime, fmt.ratio(r.gap), fmt.ratio(r.work_ratio),
                 fmt.ratio(r.ceiling_ratio), r.explanation])
            for r in gap_table(a.roofline).itertuples(index=False)]
    return Table(["variant", a.info.level_name(), "regime", "gap to bound", "work vs bound", "below ceiling",
                  "why"], rows, text={0, 2, 6})


def roofline_gap_note() -> str:
    return ("gap = measured step / bound = (the server's bytes or FLOPs per step, its achieved rate times the "
            "measured step, over what the bound counts) x (the ceiling over the server's achieved rate). Work above "
            "1x: the server did more than the model counts (prefill in the window, dequantisation); below the "
            "ceiling: kernels and gaps between steps. From vLLM's own counters, which need --enable-mfu-metrics.")
