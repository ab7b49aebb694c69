"""Prompts a server has never seen: a random head on every prompt, and seeds derived from names.

vLLM caches prompt prefixes by default, so a prompt whose first block (16 tokens) was sent before
is partly served from the cache: shorter prefill, lower TTFT, more throughput than the traffic
really costs. Prompts cut from one fixed text at random offsets collide (the same offset twice
starts two prompts with the same block), and the same seed on two runs against one server sends
the same prompts. So every generated prompt starts with HEAD_TOKENS common words drawn from a
stream of its own, seeded from the scenario's seed and a salt naming the run and the variant
(`derived_seed`); the rest of the prompt still comes from the scenario's seed. Scenarios that
want shared prefixes (a shared system prompt, a multi-turn history) keep them: the head starts
the shared text once, not every request.
"""

from __future__ import annotations

import hashlib
from typing import Optional

HEAD_TOKENS = 16  # one vLLM KV block: a prompt whose first block is new shares no cached block


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from any names and numbers (stable across processes and hosts)."""
    raw = "\x1f".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "big") >> 1


def head_seed(seed: int, salt: Optional[str]) -> int:
    """The seed of the prompt heads of a workload built with `seed` for `salt` (run and variant)."""
    return derived_seed("prompt-heads", seed, salt or "")
