"""The inter-token gaps of one step, flattened once and indexed so no pass is made per token twice.

A step holds millions of gaps (requests x output tokens). Instead of materialising every token's
arrival time, the gaps' running sum `cs` (float64, one pass) turns every question into binary
searches per request: the j-th gap event of request r arrives at
t_first[r] + cs[start_r + j + 1] - cs[start_r], and since gaps are non-negative `cs` is sorted, so
"how many of r's events arrive before t" is one searchsorted, clipped to r's own range. Counting
events in the window, and in each of its slices, then costs O(requests x slices x log(gaps)) instead
of several passes over the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CHUNK = 16384  # searches per block, to bound memory


@dataclass
class Gaps:
    values: np.ndarray  # float32, every request's gaps one after the other; NaN or negative set to 0
    counts: np.ndarray  # int64 per request
    starts: np.ndarray  # int64 per request: index of its first gap in `values`
    cs: np.ndarray  # float64, len(values) + 1: cs[k] = sum(values[:k])

    @classmethod
    def of(cls, table: pa.Table, n: int) -> "Gaps":
        if "itl_s" not in table.column_names or n == 0:
            z = np.zeros(n, np.int64)
            return cls(np.zeros(0, np.float32), z, z.copy(), np.zeros(1))
        col = table.column("itl_s")
        itl = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
        flat = pc.list_flatten(itl)
        if flat.null_count:
            flat = flat.fill_null(0.0)
        values = np.asarray(flat.to_numpy(zero_copy_only=False))
        if values.dtype != np.float32:
            values = values.astype(np.float32)
        counts = np.asarray(pc.list_value_length(itl).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
        if values.size:
            lo, hi = values.min(), values.max()
            if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0):
                values = np.where(np.isfinite(values) & (values >= 0), values, 0).astype(np.float32)
        cs = np.empty(values.size + 1)
        cs[0] = 0.0
        cs[1:] = values  # widen first: cumsum with a dtype cast takes a slower buffered path
        np.cumsum(cs[1:], out=cs[1:])
        return cls(values, counts, np.cumsum(counts) - counts, cs)

    def request_sums(self) -> np.ndarray:
        """Sum of each request's gaps."""
        return self.cs[self.starts + self.counts] - self.cs[self.starts]

    def count_above(self, limit: float) -> np.ndarray:
        """How many of each request's gaps exceed `limit` (slow gaps are few: locate just those)."""
        where = np.flatnonzero(self.values > limit)
        owner = np.searchsorted(self.starts + self.counts, where, side="right")
        return np.bincount(owner, minlength=self.counts.size)[: self.counts.size]

    def values_of(self, rows: np.ndarray) -> np.ndarray:
        """A copy of the gaps of the selected requests (a boolean mask over requests), free to reorder."""
        if rows.all():
            return self.values.copy()
        return self.values[np.repeat(rows, self.counts)]

    def before(self, idx: np.ndarray, t_first: np.ndarray, bounds: np.ndarray, inclusive: bool) -> np.ndarray:
        """For requests `idx` (each with a first token), how many of their gap events arrive before
        bounds (one absolute time per request); `inclusive` also counts an event exactly at it."""
        s = self.starts[idx]
        e = s + self.counts[idx]
        pos = np.searchsorted(self.cs, bounds - t_first[idx] + self.cs[s], side="right" if inclusive else "left")
        return np.clip(pos, s + 1, e + 1) - (s + 1)


def _wbin(idx: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """Weighted bincount that stays float64 when empty (numpy returns int64 then)."""
    return np.bincount(idx, weights=weights, minlength=n).astype(np.float64, copy=False)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated aranges [s, s + l) without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    block_start = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - block_start, lengths)


def window_counts(g: Gaps, has_first: np.ndarray, t_first: np.ndarray, last: np.ndarray, weight: np.ndarray,
                  good: np.ndarray, w0: float, w1: float, slices: int = 50
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Token events inside [w0, w1] per request, weighted tokens per slice (all, and of good requests),
    and the mean gap that ended inside the window (whichever request it belongs to).

    Per slice the weighted count is the difference of F(b) = sum over requests of weight x (events
    before b) at the slice's bounds. A request whose events all come after b adds 0 to F(b), one whose
    events all came before adds its total, so only the (request, bound) pairs where the bound falls
    inside the request's span [first token, last event] need a search.
    """
    window = w1 - w0
    bounds = w0 + window * np.arange(slices + 1) / slices
    bounds[-1] = w1
    first_in = has_first & (t_first >= w0) & (t_first <= w1)
    k = np.minimum(((t_first[first_in] - w0) * (slices / window)).astype(np.int64), slices - 1)
    per_slice = _wbin(k, weight[first_in], slices)
    good_w = weight * good
    good_slice = _wbin(k, good_w[first_in], slices)
    ev = first_in.astype(np.float64)

    cand = np.nonzero(has_first & (g.counts > 0) & (last >= w0) & (t_first <= w1))[0]
    if cand.size == 0:
        return ev, per_slice, good_slice, np.nan
    total = g.counts[cand].astype(np.float64)
    # events inside the window, per request; their gaps are a contiguous run of the running sum
    b0 = g.before(cand, t_first, np.full(cand.size, w0), False)
    b1 = g.before(cand, t_first, np.full(cand.size, w1), True)
    ev[cand] += b1 - b0
    s = g.starts[cand]
    n_in = float((b1 - b0).sum())
    mean_gap = float((g.cs[s + b1] - g.cs[s + b0]).sum() / n_in) if n_in else np.nan
    # F at each bound: requests entirely before it, plus a search where the bound cuts a request
    k_lo = np.searchsorted(bounds, t_first[cand], side="left")  # first bound at or after the first token
    k_hi = np.searchsorted(bounds, last[cand], side="right")  # first bound after the last event
    done = np.zeros(slices + 2)
    done_good = np.zeros(slices + 2)
    np.add.at(done, k_hi, weight[cand] * total)
    np.add.at(done_good, k_hi, good_w[cand] * total)
    F = np.cumsum(done)[: slices + 1]
    F_good = np.cumsum(done_good)[: slices + 1]
    span = k_hi - k_lo
    pair_req = np.repeat(np.arange(cand.size), span)
    pair_k = _ranges(k_lo, span)
    for c0 in range(0, pair_req.size, CHUNK * 8):
        r = pair_req[c0:c0 + CHUNK * 8]
        kk = pair_k[c0:c0 + CHUNK * 8]
        b = g.before(cand[r], t_first, bounds[kk], False)
        if (kk == slices).any():  # the window's end is closed: an event exactly at w1 counts
            last_b = kk == slices
            b[last_b] = g.before(cand[r[last_b]], t_first, bounds[kk[last_b]], True)
        F += _wbin(kk, weight[cand[r]] * b, slices + 1)
        F_good += _wbin(kk, good_w[cand[r]] * b, slices + 1)
    per_slice += np.diff(F)
    good_slice += np.diff(F_good)
    return ev, per_slice, good_slice, mean_gap
