"""Two runs side by side: per-step differences of one metric, whether they are real, and regressions.

Steps are matched by variant name and load level (repeats pooled). A difference is significant when
chance alone is an unlikely explanation:
- throughput metrics (output and goodput tokens/s): the same draws as the speedup interval
  (analysis.repeat_draws: the block bootstrap, or the spread between repeats from three on), run
  B's draws over run A's; significant when the 95% interval of the ratio excludes 1;
- latency metrics (TTFT, ITL, TPOT, end-to-end, any percentile): Welch's t-test on the per-request
  values of the two steps (mean inter-token gap per request for ITL), significant at p < 0.05. The
  test is on the per-request means; the difference shown is in the chosen statistic.
- other metrics have no per-request values: their difference is shown untested.
A regression is a change in the bad direction (lower throughput, higher latency) larger than the
threshold (relative, 0.05 = 5%) that is significant, or untested.

Quality is gated the same way (analysis.quality.compare): with a quality metric, each variant's
figure in B against A; and every quality gate of B's plan that B failed is a regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from analysis.data import AnalysisError
from analysis.pipeline import Analysis, compute
from analysis.block_bootstrap import rate_draws
from analysis.repeat_draws import level_draws
from analysis.quality.compare import DEFAULT_THRESHOLD, GateFailure, QualityDiff, gate_failures, quality_diffs
from analysis.speedup import interval, seed_for
from core.results import ResultsError, RunDir

HIGHER_IS_BETTER = {"output_tokens_per_s", "total_tokens_per_s", "prompt_tokens_per_s", "requests_per_s",
                    "goodput_tokens_per_s", "goodput_requests_per_s", "slo_attainment",
                    "server_generation_tokens_per_s"}
SLICE_METRICS = {"output_tokens_per_s": "slice_tokens", "goodput_tokens_per_s": "slice_good_tokens"}
REQUEST_METRICS = {"ttft": "ttft_s", "e2e": "e2e_s", "tpot": "tpot_s", "itl": "mean_gap_s"}
ALPHA = 0.05


@dataclass
class StepDiff:
    variant: str
    level: float
    a: Optional[float]
    b: Optional[float]
    change: Optional[float]  # (b - a) / a
    change_lo: Optional[float]
    change_hi: Optional[float]
    p_value: Optional[float]
    test: str  # bootstrap | welch | none
    significant: Optional[bool]
    regression: bool
    improvement: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CompareResult:
    run_a: str
    run_b: str
    metric: str
    threshold: float
    higher_is_better: bool
    rows: list[StepDiff] = field(default_factory=list)
    only_a: list[tuple[str, float]] = field(default_factory=list)
    only_b: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    quality_metric: Optional[str] = None
    quality_threshold: Optional[float] = None
    quality_rows: list[QualityDiff] = field(default_factory=list)
    gate_failures: list[GateFailure] = field(default_factory=list)

    @property
    def regressions(self) -> list[StepDiff]:
        return [r for r in self.rows if r.regression]

    @property
    def quality_regressions(self) -> list[QualityDiff]:
        return [r for r in self.quality_rows if r.regression]

    def exit_code(self) -> int:
        """0: no regression beyond the thresholds and no failed quality gate; 1: at least one."""
        return 1 if self.regressions or self.quality_regressions or self.gate_failures else 0

    def to_dict(self) -> dict[str, Any]:
        return {"run_a": self.run_a, "run_b": self.run_b, "metric": self.metric, "threshold": self.threshold,
                "higher_is_better": self.higher_is_better, "rows": [r.to_dict() for r in self.rows],
                "only_a": self.only_a, "only_b": self.only_b, "notes": self.notes,
                "regressions": len(self.regressions), "quality_metric": self.quality_metric,
                "quality_threshold": self.quality_threshold, "quality_rows": [r.to_dict() for r in self.quality_rows],
                "quality_regressions": len(self.quality_regressions),
                "gate_failures": [g.to_dict() for g in self.gate_failures]}


def _family(metric: str) -> Optional[str]:
    for fam in REQUEST_METRICS:
        if metric.startswith(fam + "_"):
            return fam
    return None


def _level_steps(a: Analysis, variant: str, level: float) -> list[int]:
    st = a.steps[(a.steps.variant == variant) & (a.steps.level == level) & a.steps.status.isin(["complete", "unlisted"])]
    return [int(s) for s in st.step]


def _draws(a: Analysis, variant: str, level: float, metric: str, run: str) -> np.ndarray:
    """Draws of a level's throughput (analysis.repeat_draws); `run` ("A" or "B") in the seed resamples the two runs
    independently (the same seed would pair their draws and hide both runs' noise)."""
    attr = SLICE_METRICS[metric]
    ds, values = [], []
    for s in _level_steps(a, variant, level):
        req = a.requests.get((variant, s))
        row = a.steps[(a.steps.variant == variant) & (a.steps.step == s)].iloc[0]
        if req is None:
            continue
        rng = np.random.default_rng(seed_for("compare", run, variant, s, attr))
        ds.append(rate_draws(getattr(req, attr), row.window_s, req.e2e_s, rng, req.lead_s))
        values.append(float(row[metric]))
    return level_draws(values, ds, np.random.default_rng(seed_for("compare", run, variant, level, attr)))


def _values(a: Analysis, variant: str, level: float, attr: str) -> np.ndarray:
    vals = []
    for s in _level_steps(a, variant, level):
        req = a.requests.get((variant, s))
        if req is not None:
            v = getattr(req, attr)[req.measure]
            vals.append(v[np.isfinite(v)])
    return np.concatenate(vals) if vals else np.zeros(0)


def _welch(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    if x.size < 2 or y.size < 2:
        return None
    from scipy import stats

    if np.var(x) == 0 and np.var(y) == 0:
        return 0.0 if x.mean() != y.mean() else 1.0
    p = stats.ttest_ind(x, y, equal_var=False).pvalue
    return float(p) if math.isfinite(p) else None


def _load(run: Union[str, Path, RunDir]) -> Analysis:
    return compute(run, use_cache=False)


def compare(run_a: Union[str, Path, RunDir], run_b: Union[str, Path, RunDir], metric: str = "output_tokens_per_s",
            threshold: float = 0.05, quality_metric: Optional[str] = None,
            quality_threshold: Optional[float] = None) -> CompareResult:
    """Run B against run A (the reference): per (variant, level) difference of `metric`, tested; with
    `quality_metric`, per variant the difference of that quality figure; and B's failed quality gates."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0 (a relative change, 0.05 = 5%), got {threshold}")
    A, B = _load(run_a), _load(run_b)
    for name, an in (("A", A), ("B", B)):
        if metric not in an.levels.columns:
            known = sorted(c for c in an.levels.columns if c not in ("variant", "level", "repeats"))
            raise AnalysisError(f"metric {metric!r} is not a per-step column of run {name} "
                                f"({an.info.path}); known: {', '.join(known)}")
    higher = metric in HIGHER_IS_BETTER
    res = CompareResult(str(A.info.path), str(B.info.path), metric, threshold, higher)
    if A.info.backend != B.info.backend:
        res.notes.append(f"the runs used different backends ({A.info.backend} vs {B.info.backend})")
    if A.info.mode != B.info.mode:
        res.notes.append(f"the runs swept different things ({A.info.mode} vs {B.info.mode}); levels are matched by value")
    ka = {(r.variant, float(r.level)): r for r in A.levels.itertuples(index=False)}
    kb = {(r.variant, float(r.level)): r for r in B.levels.itertuples(index=False)}
    res.only_a = sorted(k for k in ka if k not in kb)
    res.only_b = sorted(k for k in kb if k not in ka)
    order = {v: i for i, v in enumerate(A.info.variants)}
    for key in sorted((k for k in ka if k in kb), key=lambda k: (order.get(k[0], 1e9), k[1])):
        v, level = key
        xa, xb = getattr(ka[key], metric), getattr(kb[key], metric)
        xa = float(xa) if xa is not None and np.isfinite(xa) else None
        xb = float(xb) if xb is not None and np.isfinite(xb) else None
        change = (xb - xa) / abs(xa) if xa not in (None, 0.0) and xb is not None else None
        lo = hi = p = None
        test = "none"
        significant: Optional[bool] = None
        if metric in SLICE_METRICS:
            da, db = _draws(A, v, level, metric, "A"), _draws(B, v, level, metric, "B")
            with np.errstate(divide="ignore", invalid="ignore"):
                r_lo, r_hi = interval(db / da)
            if np.isfinite(r_lo) and np.isfinite(r_hi):
                lo, hi = r_lo - 1.0, r_hi - 1.0
                test = "bootstrap"
                significant = not (lo <= 0.0 <= hi)
        elif _family(metric) is not None:
            attr = REQUEST_METRICS[_family(metric)]
            p = _welch(_values(A, v, level, attr), _values(B, v, level, attr))
            if p is not None:
                test = "welch"
                significant = p < ALPHA
        worse = change is not None and ((change < -threshold) if higher else (change > threshold))
        better = change is not None and ((change > threshold) if higher else (change < -threshold))
        regression = bool(worse and significant is not False)
        res.rows.append(StepDiff(v, level, xa, xb, change, lo, hi, p, test, significant, regression,
                                 bool(better and significant is not False)))
    if not res.rows:
        res.notes.append("no variant and level is in both runs")
    if quality_metric is not None:
        qt = DEFAULT_THRESHOLD.get(quality_metric, 0.0) if quality_threshold is None else quality_threshold
        res.quality_metric, res.quality_threshold = quality_metric, qt
        res.quality_rows, q_notes = quality_diffs(A.quality, B.quality, quality_metric, qt, ("A", "B"))
        res.notes += q_notes
    res.gate_failures = gate_failures(B.quality)
    return res


def compare_cli(run_a: Union[str, Path], run_b: Union[str, Path], metric: str = "output_tokens_per_s",
                threshold: float = 0.05, quality_metric: Optional[str] = None,
                quality_threshold: Optional[float] = None) -> int:
    """Print the comparison as a table; 0 when nothing regressed beyond the threshold, 1 when something
    did, 2 when a run cannot be read."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = Console()
    try:
        res = compare(run_a, run_b, metric=metric, threshold=threshold, quality_metric=quality_metric,
                      quality_threshold=quality_threshold)
    except (ResultsError, ValueError) as exc:
        Console(stderr=True).print(Text(f"error: {exc}", style="bold red"), soft_wrap=True)  # a path stays whole
        return 2
    t = Table(title=Text(f"{metric}: {res.run_b} against {res.run_a}"), title_justify="left")
    for col in ("variant", "level", "A", "B", "change", "95% interval", "p", "verdict"):
        t.add_column(col, justify="left" if col in ("variant", "verdict") else "right")
    for r in res.rows:
        verdict, style = _verdict(r)
        t.add_row(Text(r.variant), f"{r.level:g}", _n(r.a), _n(r.b), _pct(r.change),
                  f"{_pct(r.change_lo)} to {_pct(r.change_hi)}" if r.change_lo is not None else "–",
                  f"{r.p_value:.3g}" if r.p_value is not None else "–", Text(verdict, style=style))
    out.print(t)
    for k in res.only_a:
        out.print(Text(f"only in A: {k[0]} at {k[1]:g}"))
    for k in res.only_b:
        out.print(Text(f"only in B: {k[0]} at {k[1]:g}"))
    if res.quality_metric is not None:
        out.print(_quality_table(res))
    for g in res.gate_failures:
        out.print(Text(f"QUALITY GATE FAILED in B: {g.variant} {g.gate} {g.limit:g} ({g.metric} = "
                       f"{_n(g.value)})", style="bold red"))
    for n in res.notes:
        out.print(Text(f"note: {n}"))
    n = len(res.regressions)
    out.print(Text(f"{n} regression(s) beyond {threshold:.0%}" if n else f"no regression beyond {threshold:.0%}",
                   style="bold red" if n else "bold green"))
    if res.quality_metric is not None:
        nq = len(res.quality_regressions)
        qt = f"{res.quality_threshold:g} ({res.quality_metric})"
        out.print(Text(f"{nq} quality regression(s) beyond {qt}" if nq else f"no quality regression beyond {qt}",
                       style="bold red" if nq else "bold green"))
    return res.exit_code()


def _quality_table(res: CompareResult) -> Any:
    """B's quality figure against A's per variant, with the interval of the change and the verdict."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(f"{res.quality_metric}: {res.run_b} against {res.run_a}"), title_justify="left")
    for col in ("variant", "A", "B", "change", "95% interval", "verdict"):
        t.add_column(col, justify="left" if col in ("variant", "verdict") else "right")
    for r in res.quality_rows:
        verdict, style = _verdict(r)
        t.add_row(Text(r.variant), _n(r.a), _n(r.b), f"{r.change:+.4g}",
                  f"{r.change_lo:+.4g} to {r.change_hi:+.4g}" if r.change_lo is not None else "–", Text(verdict, style=style))
    return t


def _verdict(r: Union[StepDiff, QualityDiff]) -> tuple[str, str]:
    """A row's verdict word and its style."""
    word = ("REGRESSION" if r.regression else "improvement" if r.improvement
            else "not significant" if r.significant is False else "within threshold")
    return word, "bold red" if r.regression else ("green" if r.improvement else "")


def _n(x: Optional[float]) -> str:
    if x is None:
        return "–"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{x * 100:+.1f}%"
