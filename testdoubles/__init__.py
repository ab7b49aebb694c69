"""Servers that stand in for vLLM where the real engine cannot do what a measurement needs.

- ``null_server``: streams a fixed number of token events with exact delays and does no work, so
  the client's own overhead can be measured (``ridgeline bench client`` and benchmarks/ use it,
  which is why this package ships with the product rather than under tests/);
- ``fault_server``: breaks streams in named ways on command (tests and the soak benchmark).

Neither is a deployment backend: plans never name them.
"""
