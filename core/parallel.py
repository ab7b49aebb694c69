"""Tensor- and pipeline-parallel sizes read from a vLLM argv, in one place.

The launcher (GPU assignment), the plan checks, the telemetry (which GPUs to sample) and the
Kubernetes render (GPUs per pod) all need the same reading of ``--tensor-parallel-size`` / ``-tp``
and ``--pipeline-parallel-size`` / ``-pp``; each wraps ``ParallelSizeError`` in its own error.
"""

from __future__ import annotations

from typing import Optional

from core.errors import RidgelineError

TP_FLAGS = ("--tensor-parallel-size", "-tp")
PP_FLAGS = ("--pipeline-parallel-size", "-pp")


class ParallelSizeError(RidgelineError, ValueError):
    """A parallel-size flag whose value is not a whole number >= 1."""

    def __init__(self, flag: str, raw: str, value: Optional[int]):
        self.flag, self.raw, self.value = flag, raw, value
        why = f"must be at least 1, got {value}" if value is not None else f"needs a whole number, got {raw!r}"
        super().__init__(f"{flag} {why}")


def _size(argv: list[str], flags: tuple[str, ...]) -> int:
    for i, tok in enumerate(argv):
        if not tok.startswith("-"):
            continue
        name, eq, val = tok.partition("=")
        if name in flags:
            raw = val if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                n = int(raw)
            except ValueError:
                raise ParallelSizeError(name, raw, None) from None
            if n < 1:
                raise ParallelSizeError(name, raw, n)
            return n
    return 1


def tensor_parallel_size(argv: list[str]) -> int:
    """The argv's tensor-parallel size (the first flag given), 1 when not given."""
    return _size(list(argv), TP_FLAGS)


def pipeline_parallel_size(argv: list[str]) -> int:
    """The argv's pipeline-parallel size (the first flag given), 1 when not given."""
    return _size(list(argv), PP_FLAGS)


def gpus_per_replica(argv: list[str]) -> int:
    """GPUs one vLLM server uses: tensor-parallel size times pipeline-parallel size."""
    return tensor_parallel_size(argv) * pipeline_parallel_size(argv)
