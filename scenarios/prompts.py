"""Prompt text of a chosen length in tokens.

Without a tokenizer the text is built from short common words that most LLM tokenizers (and the
emulator) count as one token each, so the length is approximate; with a tokenizer directory the
text is cut to the exact count. The manifest says which was used.
"""

from __future__ import annotations

import numpy as np

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


def synthetic_words(n_tokens: int, rng: np.random.Generator) -> str:
    """About n_tokens tokens of text (one common word each)."""
    idx = rng.integers(0, len(WORDS), size=max(int(n_tokens), 1))
    return " ".join(WORDS[i] for i in idx)
