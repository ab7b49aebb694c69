"""A scenario turned into a stream of concrete requests (path and body), reproducible by seed.

The Locust users ask the workload for their next request; nothing about how lengths or prompts
are chosen leaks into the users, so a new kind of traffic is a new workload, not a new user.

Multi-turn chat keeps state: `session()` gives a conversation that one closed-loop user keeps
for its life (it resends the growing history, the answers included); `next_request()` on a
multi-turn workload lends an idle conversation from a pool, which is what an open-loop arrival
does.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol

import numpy as np

from core.plan import ScenarioSpec
from scenarios.datasets import Dataset, Turn, load_dataset
from scenarios.lengths import sample_lengths
from scenarios.prompts import Prompter, ScenarioError, make_prompter
from scenarios.unique import head_seed

__all__ = ["RequestSpec", "Workload", "ScenarioError", "build_workload", "sampling_fields", "request_for"]


@dataclass
class RequestSpec:
    """One request to send: where, what, and what we expect back."""

    path: str
    body: dict[str, Any]
    prompt_tokens: Optional[int] = None  # expected (exact with a tokenizer, else approximate)
    output_tokens: Optional[int] = None  # asked for with max_tokens
    session: Optional[str] = None  # multi-turn: the conversation it belongs to
    turn: Optional[int] = None  # multi-turn: 1 for the first turn of a conversation
    keep_text: bool = False  # the sender keeps the answer's text (for the next turn)
    on_done: Optional[Callable[[bool, Optional[str], Optional[int]], None]] = None  # (ok, text, output tokens)
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
    if spec.min_tokens:
        body["min_tokens"] = int(max_tokens)
    body.update(spec.extra_body)
    return body


def request_for(spec: ScenarioSpec, model: str, prompt: str, max_tokens: int,
                history: Optional[list[dict[str, str]]] = None,
                system: Optional[str] = None) -> tuple[str, dict[str, Any]]:
    """The path and body for one prompt in the scenario's API."""
    body: dict[str, Any] = {"model": model}
    if spec.api == "chat":
        messages = [{"role": "system", "content": system}] if system else []
        messages += list(history or []) + [{"role": "user", "content": prompt}]
        body["messages"] = messages
        path = "/v1/chat/completions"
    else:
        body["prompt"] = f"{system}\n\n{prompt}" if system else prompt
        path = "/v1/completions"
    body.update(sampling_fields(spec, max_tokens))
    return path, body


class _Lengths:
    """Prompt and output lengths drawn in blocks from the plan's distributions."""

    def __init__(self, spec: ScenarioSpec, rng: np.random.Generator, block: int = 4096):
        self.spec, self.rng, self.block = spec, rng, block
        self._it: Optional[Any] = None

    def next(self) -> tuple[int, int]:
        if self._it is not None:
            try:
                return next(self._it)
            except StopIteration:
                pass
        p = (sample_lengths(self.spec.prompt_tokens, self.block, self.rng)
             if self.spec.prompt_tokens.dist != "dataset" else np.zeros(self.block, dtype=np.int64))
        o = (sample_lengths(self.spec.output_tokens, self.block, self.rng)
             if self.spec.output_tokens.dist != "dataset" else np.zeros(self.block, dtype=np.int64))
        self._it = iter(zip(p.tolist(), o.tolist()))
        return next(self._it)


class _Base:
    """What every workload shares: the seed, the prompter, the lengths, and the description."""

    kind = "synthetic"

    def __init__(self, spec: ScenarioSpec, model: str, seed: Optional[int] = None, salt: Optional[str] = None):
        self.spec = spec
        self.model = model
        seed = spec.seed if seed is None else seed
        self.rng = np.random.default_rng(seed)
        self.prompter: Prompter = make_prompter(spec.tokenizer, head_seed(seed, salt))
        self.exact_prompt_tokens = self.prompter.exact
        self.lengths = _Lengths(spec, self.rng)

    def session(self) -> Any:
        """What a closed-loop user keeps; stateless workloads are their own session."""
        return self

    def describe(self) -> dict[str, Any]:
        s = self.spec
        d: dict[str, Any] = {
            "kind": self.kind,
            "builtin": s.builtin,
            "api": s.api,
            "prompt_tokens": s.prompt_tokens.model_dump(exclude_none=True),
            "output_tokens": s.output_tokens.model_dump(exclude_none=True),
            "output_forced": [k for k, on in (("ignore_eos", s.ignore_eos), ("min_tokens", s.min_tokens)) if on],
            "turns": s.turns,
            "sampling": {"temperature": s.temperature, "top_p": s.top_p, **s.extra_body},
            "seed": s.seed,
            "exact_prompt_tokens": self.exact_prompt_tokens,
        }
        d.update(self.prompter.describe())
        return d


class SyntheticWorkload(_Base):
    """Random-length prompts of common words (exact lengths with a tokenizer)."""

    def next_request(self) -> RequestSpec:
        pt, ot = self.lengths.next()
        prompt = self.prompter.text(pt, self.rng)
        path, body = request_for(self.spec, self.model, prompt, ot)
        return RequestSpec(path=path, body=body, prompt_tokens=pt, output_tokens=ot)


class SharedPrefixWorkload(_Base):
    """N system prompts x M questions: requests share long prefixes, so a prefix cache hits."""

    kind = "shared_prefix"

    def __init__(self, spec: ScenarioSpec, model: str, seed: Optional[int] = None, salt: Optional[str] = None):
        super().__init__(spec, model, seed, salt)
        sp = spec.shared_prefix
        assert sp is not None
        self.sp = sp
        self.prefixes = [self._prefix(i) for i in range(sp.prefixes)]
        self.questions: Optional[list[list[tuple[str, int]]]] = None
        if sp.questions:
            self.questions = [[self._question() for _ in range(sp.questions)] for _ in range(sp.prefixes)]

    def _prefix(self, i: int) -> str:
        # independent random text per prefix: two prefixes share no cache block past their first words
        return self.prompter.text(self.sp.prefix_tokens, self.rng)

    def _question(self) -> tuple[str, int]:
        pt, _ = self.lengths.next()
        return self.prompter.text(pt, self.rng), pt

    def next_request(self) -> RequestSpec:
        p = int(self.rng.integers(0, len(self.prefixes)))
        _, ot = self.lengths.next()
        if self.questions is not None:
            q, pt = self.questions[p][int(self.rng.integers(0, len(self.questions[p])))]
        else:
            q, pt = self._question()
        path, body = request_for(self.spec, self.model, q, ot, system=self.prefixes[p])
        return RequestSpec(path=path, body=body, prompt_tokens=self.sp.prefix_tokens + pt, output_tokens=ot,
                           meta={"prefix": p})

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["shared_prefix"] = self.sp.model_dump()
        return d


class DatasetWorkload(_Base):
    """Prompts (and, with dist 'dataset', output lengths) from a ShareGPT or prompts file."""

    kind = "dataset"

    def __init__(self, spec: ScenarioSpec, model: str, seed: Optional[int] = None, salt: Optional[str] = None):
        super().__init__(spec, model, seed, salt)
        assert spec.dataset
        self.dataset: Dataset = load_dataset(spec.dataset, spec.dataset_format)
        if spec.output_tokens.dist == "dataset" and self.dataset.format == "prompts":
            self._check_output_tokens()
        self._order = self.rng.permutation(len(self.dataset))
        self._next = 0

    def _check_output_tokens(self) -> None:
        for i in range(len(self.dataset)):
            if self.dataset.record(i)[0].output_tokens is None:
                raise ScenarioError(f"dataset {self.dataset.path}, record {i + 1}: output_tokens is 'dataset' "
                                    f"but the record has no output_tokens")

    def next_turns(self) -> tuple[Turn, ...]:
        """The next record's turns, in a seeded shuffled order that wraps around."""
        if self._next >= len(self._order):
            self._order = self.rng.permutation(len(self.dataset))
            self._next = 0
        i = int(self._order[self._next])
        self._next += 1
        return self.dataset.record(i)

    def output_tokens(self, turn: Turn) -> int:
        _, ot = self.lengths.next()
        if self.spec.output_tokens.dist != "dataset":
            return ot
        if turn.output_tokens is not None:
            return turn.output_tokens
        n = self.prompter.count(turn.reply or "")
        o = self.spec.output_tokens
        lo, hi = o.min or 1, o.max
        return max(lo, min(n, hi) if hi else n)

    def next_request(self) -> RequestSpec:
        turn = self.next_turns()[0]
        ot = self.output_tokens(turn)
        path, body = request_for(self.spec, self.model, turn.prompt, ot)
        return RequestSpec(path=path, body=body, prompt_tokens=self.prompter.count(turn.prompt), output_tokens=ot)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["dataset"] = self.dataset.describe()
        if self.spec.prompt_tokens.dist != "dataset":
            d["prompt_tokens"] = {"dist": "dataset", "note": "prompts come from the dataset"}
        return d


# ---------------------------------------------------------------------- multi-turn chat

class ChatSession:
    """One conversation: each turn resends the history (the answers as the server gave them)."""

    def __init__(self, owner: "MultiTurnWorkload", sid: str):
        self.owner = owner
        self.sid = sid
        self.conversations = 0
        self._new()

    def _new(self) -> None:
        self.turns = self.owner.conversation()
        self.history: list[dict[str, str]] = []
        self.history_tokens = 0
        self.turn = 0
        self.conversations += 1
        self.in_flight = False

    def next_request(self) -> RequestSpec:
        if self.in_flight:
            raise RuntimeError(f"conversation {self.sid} asked for a turn while its last one is in flight")
        prompt, pt, ot = self.turns[self.turn]
        spec, model = self.owner.spec, self.owner.model
        path, body = request_for(spec, model, prompt, ot, history=self.history)
        self.in_flight = True
        return RequestSpec(path=path, body=body, prompt_tokens=self.history_tokens + pt, output_tokens=ot,
                           session=f"{self.sid}.{self.conversations}", turn=self.turn + 1, keep_text=True,
                           on_done=self._done)

    def _done(self, ok: bool, text: Optional[str], out_tokens: Optional[int]) -> None:
        self.in_flight = False
        if not ok:  # a failed turn ends the conversation: its history is no longer what a user saw
            self._new()
            self.owner.released(self)
            return
        prompt, pt, ot = self.turns[self.turn]
        answer = text or ""
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        self.history_tokens += pt + (out_tokens if out_tokens is not None else ot)
        self.turn += 1
        if self.turn >= len(self.turns):
            self._new()
        self.owner.released(self)


class MultiTurnWorkload:
    """Chat sessions of `turns` turns, synthetic or from a ShareGPT file's conversations."""

    def __init__(self, inner: _Base):
        self.inner = inner
        self.spec = inner.spec
        self.model = inner.model
        self.exact_prompt_tokens = inner.exact_prompt_tokens
        self._ids = itertools.count()
        self._idle: list[ChatSession] = []
        self._pooled: set[int] = set()

    def conversation(self) -> list[tuple[str, int, int]]:
        """(prompt, prompt tokens, output tokens) of each turn of a new conversation."""
        n = self.spec.turns
        inner = self.inner
        if isinstance(inner, DatasetWorkload):
            turns = inner.next_turns()[:n]
            return [(t.prompt, inner.prompter.count(t.prompt), inner.output_tokens(t)) for t in turns]
        out = []
        for _ in range(n):
            pt, ot = inner.lengths.next()
            out.append((inner.prompter.text(pt, inner.rng), pt, ot))
        return out

    def session(self) -> ChatSession:
        """A conversation that one user keeps for its life."""
        return ChatSession(self, f"s{next(self._ids)}")

    def next_request(self) -> RequestSpec:
        """The next turn of an idle pooled conversation (a new one when all are in flight)."""
        s = self._idle.pop() if self._idle else None
        if s is None:
            s = self.session()
            self._pooled.add(id(s))
        return s.next_request()

    def released(self, s: ChatSession) -> None:
        if id(s) in self._pooled:
            self._idle.append(s)

    def describe(self) -> dict[str, Any]:
        d = self.inner.describe()
        d["turns"] = self.spec.turns
        d["multi_turn"] = "each user keeps a conversation and resends its history with the answers"
        return d


def build_workload(spec: ScenarioSpec, model: str, seed: Optional[int] = None, salt: Optional[str] = None) -> Workload:
    """The workload a plan's scenario asks for; raises ScenarioError before any server starts.

    salt (the run and the variant) seeds the heads that make every generated prompt new to the
    server (scenarios/unique.py); the rest of the traffic follows the seed alone.
    """
    inner: _Base
    if spec.dataset:
        inner = DatasetWorkload(spec, model, seed, salt)
    elif spec.shared_prefix is not None:
        inner = SharedPrefixWorkload(spec, model, seed, salt)
    else:
        inner = SyntheticWorkload(spec, model, seed, salt)
    if spec.turns > 1:
        return MultiTurnWorkload(inner)
    return inner
