"""A scenario turned into a stream of concrete requests (path and body), reproducible by seed.

The Locust users ask the workload for their next request; nothing about how lengths or prompts
are chosen leaks into the users, so a new kind of traffic is a new workload, not a new user.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

from loadtest.plan import ScenarioSpec
from scenarios.lengths import sample_lengths
from scenarios.prompts import synthetic_words


@dataclass
class RequestSpec:
    """One request to send: where, what, and what we expect back."""

    path: str
    body: dict[str, Any]
    prompt_tokens: Optional[int] = None  # expected (exact with a tokenizer, else approximate)
    output_tokens: Optional[int] = None  # asked for with max_tokens
    session: Optional[str] = None  # multi-turn: the conversation it belongs to
    meta: dict[str, Any] = field(default_factory=dict)


class Workload(Protocol):
    """Anything that hands out the next request; must be safe to call from many greenlets."""

    exact_prompt_tokens: bool

    def next_request(self) -> RequestSpec: ...

    def describe(self) -> dict[str, Any]: ...


def sampling_fields(spec: ScenarioSpec, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "max_tokens": int(max_tokens),
        "temperature": spec.temperature,
        "top_p": spec.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if spec.ignore_eos:
        body["ignore_eos"] = True
        body["min_tokens"] = int(max_tokens)
    body.update(spec.extra_body)
    return body


def request_for(spec: ScenarioSpec, model: str, prompt: str, max_tokens: int,
                history: Optional[list[dict[str, str]]] = None) -> tuple[str, dict[str, Any]]:
    """The path and body for one prompt in the scenario's API."""
    body = {"model": model}
    if spec.api == "chat":
        messages = list(history or []) + [{"role": "user", "content": prompt}]
        body["messages"] = messages
        path = "/v1/chat/completions"
    else:
        body["prompt"] = prompt
        path = "/v1/completions"
    body.update(sampling_fields(spec, max_tokens))
    return path, body


class SyntheticWorkload:
    """Random-length prompts of common words; lengths drawn in blocks from the plan's distributions."""

    exact_prompt_tokens = False

    def __init__(self, spec: ScenarioSpec, model: str, seed: Optional[int] = None, block: int = 4096):
        self.spec = spec
        self.model = model
        self.rng = np.random.default_rng(spec.seed if seed is None else seed)
        self._block = block
        self._lock = threading.Lock()
        self._lengths: Optional[Any] = None
        self._counter = itertools.count()

    def _refill(self) -> None:
        p = sample_lengths(self.spec.prompt_tokens, self._block, self.rng)
        o = sample_lengths(self.spec.output_tokens, self._block, self.rng)
        self._lengths = iter(zip(p.tolist(), o.tolist()))

    def next_request(self) -> RequestSpec:
        with self._lock:
            try:
                pt, ot = next(self._lengths) if self._lengths is not None else (None, None)
            except StopIteration:
                pt = None
            if pt is None:
                self._refill()
                pt, ot = next(self._lengths)
            prompt = synthetic_words(pt, self.rng)
        path, body = request_for(self.spec, self.model, prompt, ot)
        return RequestSpec(path=path, body=body, prompt_tokens=pt, output_tokens=ot)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "synthetic",
            "api": self.spec.api,
            "prompt_tokens": self.spec.prompt_tokens.model_dump(exclude_none=True),
            "output_tokens": self.spec.output_tokens.model_dump(exclude_none=True),
            "exact_prompt_tokens": self.exact_prompt_tokens,
            "prompt_token_count": "approximate: one common word per token, no tokenizer given",
        }


def build_workload(spec: ScenarioSpec, model: str, seed: Optional[int] = None) -> Workload:
    """The workload a plan's scenario asks for."""
    return SyntheticWorkload(spec, model, seed)
