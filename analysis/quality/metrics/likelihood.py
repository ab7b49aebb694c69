"""Mean token negative log-likelihood and perplexity, and the paired change against the baseline.

NLL is averaged over every scored token of every document (token-weighted); perplexity is
exp(NLL). Against the baseline, on the same documents and positions, the difference of the two
mean NLLs is the mean per-token difference, and the perplexity ratio is exp of it, so
ppl_change_pct = 100 (exp(delta_nll) - 1). Its interval resamples documents (the independent unit)
and transforms the percentile bounds of delta_nll, which keeps the pairing: each draw takes the
same documents for both.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from analysis.quality.intervals import cluster_ratio_draws, percentile_interval
from analysis.quality.metrics.base import Figures, Pair


def per_document(nll: pd.Series, doc_id: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Each document's NLL total and token count, in a stable order."""
    g = pd.DataFrame({"doc": doc_id.to_numpy(), "nll": nll.to_numpy(float)}).groupby("doc", sort=True).nll
    return g.sum().to_numpy(float), g.size().to_numpy(float)


def _exp(x: Optional[float]) -> Optional[float]:
    if x is None or not math.isfinite(x):
        return None
    try:
        return math.exp(x)
    except OverflowError:
        return None


def pct_change(delta_nll: Optional[float]) -> Optional[float]:
    e = _exp(delta_nll)
    return None if e is None else 100.0 * (e - 1.0)


class Likelihood:
    name = "likelihood"

    def compute(self, pair: Pair) -> Optional[Figures]:
        rows = pair.variant.likelihood
        if rows is None or rows.empty:
            return None
        v = pair.variant.variant
        out = Figures()
        totals, counts = per_document(-rows.logprob, rows.doc_id)
        nll = float(totals.sum() / counts.sum())
        lo, hi = percentile_interval(cluster_ratio_draws(totals, counts, v, "nll"), pair.confidence)
        out.metrics.update(nll=nll, ppl=_exp(nll))
        out.intervals.update(nll=[lo, hi], ppl=[_exp(lo), _exp(hi)])
        out.counts.update(documents=int(counts.size), tokens=int(counts.sum()))
        base = pair.baseline.likelihood
        if pair.is_baseline or base is None or base.empty:
            return out
        m, unpaired = pair.aligned()
        if m.empty:
            out.notes.append(f"no document scored by both {v} and {pair.baseline.variant}")
            return out
        d_tot, d_cnt = per_document(m.logprob_b - m.logprob_v, m.doc_id)
        delta = float(d_tot.sum() / d_cnt.sum())
        dlo, dhi = percentile_interval(cluster_ratio_draws(d_tot, d_cnt, v, "delta_nll"), pair.confidence)
        out.deltas.update(delta_nll=delta, ppl_change_pct=pct_change(delta))
        out.intervals.update(delta_nll=[dlo, dhi], ppl_change_pct=[pct_change(dlo), pct_change(dhi)])
        out.counts.update(paired_documents=int(d_cnt.size), paired_tokens=int(d_cnt.sum()))
        if unpaired:
            out.notes.append(f"{unpaired} document(s) scored by only one of {v} and {pair.baseline.variant} "
                             f"are left out of the paired figures")
        return out


METRIC = Likelihood()
