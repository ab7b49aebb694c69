"""Do the client and the server agree? Client medians next to the server's histogram estimates.

A client TTFT that is much higher than the server's means time lost between them (network, proxy,
a saturated load generator); an inter-token gap that disagrees means the client read the stream
late. A difference over AGREEMENT_PCT is flagged; when the client's value still lies inside the
histogram bucket the server's estimate came from, the buckets are too coarse to tell, and the row
says so instead of blaming either side.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

AGREEMENT_PCT = 5.0
PAIRS = (("ttft", "ttft_p50_s", "server_ttft_p50_s"), ("itl", "itl_p50_s", "server_itl_p50_s"))


def agreement_columns(steps: pd.DataFrame) -> pd.DataFrame:
    """Adds <x>_server_diff_pct, <x>_flagged and <x>_within_bucket for TTFT and ITL, and a verdict column."""
    out = steps.copy()
    verdicts = pd.Series("", index=out.index, dtype=object)
    for key, client, server in PAIRS:
        c = out.get(client, pd.Series(np.nan, index=out.index)).astype(float)
        s = out.get(server, pd.Series(np.nan, index=out.index)).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = (c - s) / s * 100.0
        lo = out.get(f"server_{key}_p50_bucket_lo", pd.Series(np.nan, index=out.index)).astype(float)
        hi = out.get(f"server_{key}_p50_bucket_hi", pd.Series(np.nan, index=out.index)).astype(float)
        within = (c >= lo) & (c <= hi)
        flagged = diff.abs() > AGREEMENT_PCT
        out[f"{key}_server_diff_pct"] = diff
        out[f"{key}_flagged"] = flagged.fillna(False).astype(bool)
        out[f"{key}_within_bucket"] = within.fillna(False).astype(bool)
        word = np.where(~np.isfinite(diff), "", np.where(~flagged, "agree",
                        np.where(within, "coarse buckets", "disagree")))
        verdicts = verdicts.where(~(word == "disagree"), verdicts + f"{key.upper()} disagrees; ")
    out["agreement"] = verdicts.str.rstrip("; ")
    return out


def disagreements(steps: pd.DataFrame) -> list[str]:
    """Sentences for steps where a flagged difference is beyond the histogram's resolution."""
    out = []
    for key, client, server in PAIRS:
        col = f"{key}_flagged"
        if col not in steps:
            continue
        bad = steps[steps[col] & ~steps[f"{key}_within_bucket"]]
        for r in bad.itertuples(index=False):
            out.append(f"{r.variant} step {r.step}: client {key.upper()} median {getattr(r, client) * 1000:.1f} ms vs "
                       f"server {getattr(r, server) * 1000:.1f} ms ({getattr(r, f'{key}_server_diff_pct'):+.0f}%)")
    return out
