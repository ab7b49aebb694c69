"""Token-length distributions for prompts and outputs, drawn reproducibly from a seed."""

from __future__ import annotations

import numpy as np

from core.plan import LengthSpec


def sample_lengths(spec: LengthSpec, n: int, rng: np.random.Generator, cap: int | None = None) -> np.ndarray:
    """n lengths (int, at least 1, at most cap) from the distribution."""
    if spec.dist == "fixed":
        out = np.full(n, spec.value, dtype=np.int64)
    elif spec.dist == "uniform":
        out = rng.integers(spec.min, spec.max + 1, size=n)
    elif spec.dist == "normal":
        out = np.rint(rng.normal(spec.mean, spec.std, size=n)).astype(np.int64)
    elif spec.dist == "lognormal":
        # `mean` is the distribution's median in tokens; sigma its log-space spread
        out = np.rint(rng.lognormal(np.log(spec.mean), spec.sigma, size=n)).astype(np.int64)
    else:
        raise ValueError("dist 'dataset' takes lengths from the dataset's records")
    lo = spec.min if spec.min is not None else 1
    hi = spec.max if spec.max is not None else cap
    out = np.maximum(out, lo)
    if hi is not None:
        out = np.minimum(out, hi)
    return out
