"""Prompt text of a chosen length in tokens.

Without a tokenizer the text is built from short common words that most LLM tokenizers (and the
emulator) count as one token each, so the length is approximate; with a tokenizer directory the
text is cut to the exact count. The manifest says which was used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Protocol

import numpy as np

from core.errors import RidgelineError
from scenarios.unique import HEAD_TOKENS

WORDS = (
    "the of and to in is for on that with as it at by from this be are or an was not but have "
    "all can has more one will which their there if about they so what when up out into time "
    "some would them other than then now only its also new may two like any these over after "
    "first well way even most made back much where your just see how each year make good very "
    "long last great little own old right big high small large next early young few public "
    "same able day man work life part place case week point group number world area state "
    "system water story fact month lot study book eye job word side kind head house service "
    "friend power hour game line end member law car city name team minute idea body level"
).split()


class ScenarioError(RidgelineError, ValueError):
    """A scenario that cannot produce traffic (bad tokenizer, bad dataset); says what and where."""


def synthetic_words(n_tokens: int, rng: np.random.Generator) -> str:
    """About n_tokens tokens of text (one common word each)."""
    idx = rng.integers(0, len(WORDS), size=max(int(n_tokens), 1))
    return " ".join(WORDS[i] for i in idx)


class Prompter(Protocol):
    """Makes text of n tokens and counts the tokens of text."""

    exact: bool

    def text(self, n_tokens: int, rng: np.random.Generator) -> str: ...

    def count(self, text: str) -> int: ...

    def describe(self) -> dict[str, Any]: ...


class WordPrompter:
    """One common word per token: no tokenizer needed, the count is approximate.

    Every text starts with HEAD_TOKENS words from the prompter's own head stream (scenarios/unique.py)."""

    exact = False

    def __init__(self, head_seed: int = 0):
        self.heads = np.random.default_rng(head_seed)

    def text(self, n_tokens: int, rng: np.random.Generator) -> str:
        n = max(int(n_tokens), 1)
        head = synthetic_words(min(HEAD_TOKENS, n), self.heads)
        return head if n <= HEAD_TOKENS else head + " " + synthetic_words(n - HEAD_TOKENS, rng)

    def count(self, text: str) -> int:
        # words for our own text; about four characters a token for anyone else's
        return max(1, len(text.split()), round(len(text) / 4))

    def describe(self) -> dict[str, Any]:
        return {"prompt_token_count": "approximate: one common word per token, no tokenizer given"}


class TokenizerPrompter:
    """Text cut to an exact token count with a Hugging Face tokenizer (tokenizer.json, read from disk).

    The count is of the text itself, without special tokens: a server adds its BOS token, and a chat
    template adds its own markup around it.
    """

    exact = True
    _CORPUS_WORDS = 20000

    def __init__(self, path: str, head_seed: int = 0):
        self.path = str(path)
        self.heads = np.random.default_rng(head_seed)
        self.tok = load_tokenizer(path)
        rng = np.random.default_rng(12345)
        corpus = synthetic_words(self._CORPUS_WORDS, rng)
        self._ids = self.tok.encode(corpus, add_special_tokens=False).ids
        if len(self._ids) < 16:
            raise ScenarioError(f"scenario.tokenizer {self.path}: the tokenizer turns plain English into "
                                f"only {len(self._ids)} tokens; it cannot make prompts")

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def text(self, n_tokens: int, rng: np.random.Generator) -> str:
        n = max(int(n_tokens), 1)
        # a head of its own first: windows of the one corpus that start at the same offset would
        # otherwise begin with the same cache block
        head = self.tok.encode(synthetic_words(HEAD_TOKENS, self.heads), add_special_tokens=False).ids[:min(n, HEAD_TOKENS)]
        ids = head + (self._window(n - len(head), rng) if n > len(head) else [])
        want = n
        for _ in range(8):
            text = self.tok.decode(ids[:want], skip_special_tokens=True)
            got = self.count(text)
            if got == n:
                return text
            # decode/encode is not always a round trip at the edges: nudge the cut and retry
            want += n - got
            if want < 1:
                want = 1
            if want > len(ids):
                ids = ids + self._window(want - len(ids) + 8, rng)
        return self._exact_by_trim(text, n)

    def _window(self, n: int, rng: np.random.Generator) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            start = int(rng.integers(0, len(self._ids)))
            out.extend(self._ids[start:start + (n - len(out))])
        return out

    def _exact_by_trim(self, text: str, n: int) -> str:
        """Last resort: grow with words, then cut characters until the count is n (or the closest)."""
        while self.count(text) < n:
            text += " the"
        while self.count(text) > n and len(text) > 1:
            text = text[:-1]
        return text

    def describe(self) -> dict[str, Any]:
        return {"prompt_token_count": f"exact: tokenizer {self.path} (text only, before special tokens)",
                "tokenizer": self.path}


def load_tokenizer(path: str):  # noqa: ANN201 - tokenizers.Tokenizer
    """The tokenizer in a Hugging Face tokenizer directory (or a tokenizer.json file), from disk only."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ScenarioError(f"scenario.tokenizer {path}: no such file or directory")
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise ScenarioError(f"scenario.tokenizer {path} is not a Hugging Face tokenizer directory: "
                            f"it has no tokenizer.json")
    try:
        from tokenizers import Tokenizer
    except ImportError:  # pragma: no cover - tokenizers is an optional dependency
        raise ScenarioError("scenario.tokenizer needs the 'tokenizers' package (pip install tokenizers)") from None
    try:
        return Tokenizer.from_file(str(f))
    except Exception as exc:  # noqa: BLE001 - the library raises its own exception types
        raise ScenarioError(f"scenario.tokenizer {path}: {f.name} cannot be loaded: {exc}") from None


def make_prompter(tokenizer: Optional[str], head_seed: int = 0) -> Prompter:
    """An exact prompter for a tokenizer directory, else the approximate word prompter."""
    return TokenizerPrompter(tokenizer, head_seed) if tokenizer else WordPrompter(head_seed)
