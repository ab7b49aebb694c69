"""A tiny word-level tokenizer directory, for `vllm bench serve` (it needs one to build prompts).

Run as a script by the vLLM interpreter the benchmark compares against, which always has the
`tokenizers` package (vLLM depends on it), so ridgeline's own install needs no tokenizer extra:

    <vllm python> loadtest/word_tokenizer.py DIRECTORY < words.json

Only the standard library and `tokenizers` are imported: the vLLM interpreter has no ridgeline.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def write_word_tokenizer(directory: Path, words: list[str]) -> Path:
    """tokenizer.json, tokenizer_config.json and config.json for a word-level tokenizer over `words`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "bos_token": "<s>",
        "eos_token": "</s>", "model_max_length": 1000000}))
    (directory / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return directory


if __name__ == "__main__":
    write_word_tokenizer(Path(sys.argv[1]), json.load(sys.stdin))
