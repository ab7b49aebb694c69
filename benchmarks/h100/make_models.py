"""Llama-3-8B-shaped model directories for vLLM's `--load-format dummy`: a config and a tokenizer, no weights.

vLLM builds the network from config.json and fills it with random values, so the kernels, memory
traffic and batch behaviour are those of the real model while nothing is downloaded. The tokenizer
is a word-level one over the whole 128,256-id vocabulary: every id the random weights generate
decodes to one word, and every word of ridgeline's prompt text is one token (so prompts are built
with exact token counts, and no two prompts share a prefix the server could cache).

    python3 benchmarks/h100/make_models.py /tmp/models          # fp16, awq, gptq under /tmp/models

GPTQ: vLLM 0.24.0 decides which linear layers are GPTQ-quantized from `modules_in_block_to_quantize`
in the quantization config, or, when absent, from the dtypes of the *.safetensors tensors in the
model directory. A dummy directory has no safetensors, so without the key every layer silently
stays 16-bit (see README.md). The key is therefore always written here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

VOCAB = 128256
SPECIAL = ["<s>", "</s>", "<unk>"]  # ids 0, 1, 2

LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": VOCAB,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "torch_dtype": "bfloat16",
}

# every linear layer of a Llama decoder block, as GPTQ checkpoints list them
LLAMA_BLOCK_LINEARS = [
    ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
    ["self_attn.o_proj"],
    ["mlp.up_proj", "mlp.gate_proj"],
    ["mlp.down_proj"],
]

QUANT: dict[str, Optional[dict[str, Any]]] = {
    "fp16": None,
    "awq": {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"},
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True,
             "lm_head": False,
             "modules_in_block_to_quantize": LLAMA_BLOCK_LINEARS},
}


def vocabulary(words: list[str]) -> dict[str, int]:
    """Specials, then the prompt words, then filler words w<id> up to the full vocabulary."""
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for w in words:
        if w not in vocab:
            vocab[w] = len(vocab)
    if len(vocab) > VOCAB:
        raise ValueError(f"{len(vocab)} words do not fit a vocabulary of {VOCAB}")
    for i in range(len(vocab), VOCAB):
        vocab[f"w{i}"] = i
    return vocab


def make_tokenizer(words: list[str]):  # noqa: ANN201 - tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocabulary(words), unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return tok


def prompt_words() -> list[str]:
    """The words ridgeline builds prompt text from, so each is exactly one token here."""
    repo = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(repo))
    from scenarios.prompts import WORDS

    return list(WORDS)


def write_model(root: Path, name: str, tokenizer) -> Path:  # noqa: ANN001
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(LLAMA3_8B)
    qc = QUANT[name]
    if qc is not None:
        cfg["quantization_config"] = qc
    (d / "config.json").write_text(json.dumps(cfg, indent=1) + "\n")
    tokenizer.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "model_max_length": LLAMA3_8B["max_position_embeddings"],
        "clean_up_tokenization_spaces": False}, indent=1) + "\n")
    return d


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="where the model directories go")
    ap.add_argument("--only", nargs="*", choices=sorted(QUANT), help="make only these (default: all)")
    args = ap.parse_args(argv)
    tok = make_tokenizer(prompt_words())
    for name in args.only or list(QUANT):
        print(write_model(args.root, name, tok))
    return 0


if __name__ == "__main__":
    sys.exit(main())
