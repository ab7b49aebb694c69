"""A tiny Llama checkpoint made on the spot: config.json and a tokenizer, no weights.

Real vLLM starts it with `--load-format dummy` (random weights), so tests need neither the hub
nor gigabytes of weights. The quantized variants only add a `quantization_config`; every linear
dimension is a multiple of the group size so the INT4 layouts are valid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional, Union

Quant = Optional[Literal["awq", "gptq"]]

GROUP_SIZE = 128
CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512,
    "max_position_embeddings": 2048, "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "bfloat16",
    "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
}
QUANT_CONFIGS = {
    "awq": {"quant_method": "awq", "bits": 4, "group_size": GROUP_SIZE, "zero_point": True, "version": "gemm"},
    # the block's linear layers listed, as GPTQ checkpoints do: with --load-format dummy there are no
    # safetensors for vLLM to find them in (see deploy/checks.py GPTQ_DUMMY)
    "gptq": {"quant_method": "gptq", "bits": 4, "group_size": GROUP_SIZE, "desc_act": False, "sym": True,
             "modules_in_block_to_quantize": [["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj"],
                                              ["self_attn.o_proj"], ["mlp.up_proj", "mlp.gate_proj"],
                                              ["mlp.down_proj"]]},
}
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
WORDS = ("the quick brown fox jumps over the lazy dog while tokens stream out of a tiny model served by "
         "a real engine and metrics are scraped every second from the server").split()


def _corpus(n_lines: int = 120) -> list[str]:
    """A few KB of deterministic text for the tokenizer trainer."""
    lines = []
    for i in range(n_lines):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(12 + i % 9)]
        lines.append(" ".join(words) + f" {i} {i * 13 % 97}.")
    return lines


def _tokenizer(d: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "model_max_length": CONFIG["max_position_embeddings"], "chat_template": CHAT_TEMPLATE}, indent=1))


def make_tiny_model(d: Union[str, Path], quant: Quant = None) -> Path:
    """Write a tiny Llama model directory (config + tokenizer) at `d`; `quant` adds an INT4 quantization_config."""
    if quant is not None and quant not in QUANT_CONFIGS:
        raise ValueError(f"quant {quant!r}: expected None, 'awq' or 'gptq'")
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(CONFIG)
    if quant is not None:
        cfg["quantization_config"] = dict(QUANT_CONFIGS[quant])
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    _tokenizer(d, CONFIG["vocab_size"])
    return d


def tiny_param_count() -> int:
    """Parameters of the tiny model (what 16-bit weights would occupy / 2 bytes)."""
    from core.hardware.catalog import model_from_config

    return model_from_config(CONFIG, "tiny").params
