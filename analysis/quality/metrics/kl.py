"""KL divergence of the variant's next-token distribution from the baseline's, from top-k logprobs.

At each scored position both servers returned their k most likely tokens with logprobs, and the
logprob of the actual token. The full distributions over the vocabulary are unknown beyond that,
so both are coarse-grained onto the same partition of the vocabulary, on which both are known
exactly:
- one bucket per token that appears in the baseline's top-k AND in the variant's top-k (both
  probabilities are known), plus the actual token (both servers gave its logprob);
- one "rest" bucket holding everything else: 1 minus the sum of the kept buckets, on each side.
KL(baseline || variant) on this partition is a lower bound on the true KL: merging outcomes never
increases a KL divergence (the log-sum inequality). A baseline top-k token missing from the
variant's top-k goes into the rest bucket rather than being given a guessed probability, so no
estimate enters. The rest masses are floored at REST_FLOOR, since logprobs rounded to float32 can
sum to slightly more than 1.

The mean is over all paired positions (token-weighted); its interval resamples documents.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from analysis.quality.intervals import cluster_ratio_draws, percentile_interval
from analysis.quality.metrics.base import Figures, Pair
from analysis.quality.metrics.likelihood import per_document

REST_FLOOR = 1e-8
TAIL = "top-k + rest bucket (lower bound)"


def _probs(tokens: Sequence[Any], logprobs: Sequence[float]) -> dict[str, float]:
    """Token -> probability; a token listed twice (text tokens of two ids) keeps their sum."""
    out: dict[str, float] = {}
    if tokens is None or logprobs is None:
        return out
    toks = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    lps = logprobs.tolist() if hasattr(logprobs, "tolist") else list(logprobs)
    for t, lp in zip(toks, lps):
        if lp is not None and math.isfinite(lp):
            out[t] = out.get(t, 0.0) + math.exp(lp)
    return out


def position_kl(token: str, lp_b: float, lp_v: float, top_b: tuple[Sequence[Any], Sequence[float]],
                top_v: tuple[Sequence[Any], Sequence[float]]) -> float:
    """KL(baseline || variant) in nats at one position, on the shared top-k tokens plus a rest bucket."""
    pb, pv = _probs(*top_b), _probs(*top_v)
    pb.setdefault(str(token), math.exp(lp_b))
    pv.setdefault(str(token), math.exp(lp_v))
    keep = [t for t in pb if t in pv]
    p = [pb[t] for t in keep]
    q = [pv[t] for t in keep]
    p.append(max(1.0 - sum(p), REST_FLOOR))
    q.append(max(1.0 - sum(q), REST_FLOOR))
    sp, sq = sum(p), sum(q)
    kl = sum(a / sp * (math.log(a / sp) - math.log(b / sq)) for a, b in zip(p, q) if a > 0)
    return max(kl, 0.0)


class KL:
    name = "kl"

    def compute(self, pair: Pair) -> Optional[Figures]:
        if pair.variant.likelihood is None or pair.variant.likelihood.empty or pair.baseline.likelihood is None:
            return None
        out = Figures()
        if pair.is_baseline:
            return out
        m, _ = pair.aligned()
        if m.empty:
            return out
        kl = np.fromiter((position_kl(t, lb, lv, (tb, plb), (tv, plv)) for t, lb, lv, tb, plb, tv, plv in zip(
            m.token_v, m.logprob_b, m.logprob_v, m.top_tokens_b, m.top_logprobs_b, m.top_tokens_v,
            m.top_logprobs_v)), dtype=float, count=len(m))
        totals, counts = per_document(_series(kl, m), m.doc_id)
        v = pair.variant.variant
        out.deltas["kl_mean"] = float(totals.sum() / counts.sum())
        out.intervals["kl_mean"] = list(percentile_interval(cluster_ratio_draws(totals, counts, v, "kl"),
                                                            pair.confidence))
        return out


def _series(values: np.ndarray, like: pd.DataFrame) -> pd.Series:
    return pd.Series(values, index=like.index)


METRIC = KL()
