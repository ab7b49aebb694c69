"""The INT4 variants of the quality-proof model, made with llm-compressor (compressed-tensors W4A16).

Runs in the quantization venv, after quality_build.py wrote base/. Writes, beside base/:
  gptq/     GPTQModifier, W4A16 (symmetric INT4, group 128), calibrated on training text
  awq/      AWQModifier then W4A16, calibrated on the same text
  rtn/      QuantizationModifier W4A16: round-to-nearest from min/max, no calibration
  broken/   rtn/ with the weight scales of a few layers scrambled (a damaged checkpoint)
  <v>-dequant/  each of the above dequantized back to plain bf16 safetensors (for hosts without
            INT4 kernels), marked "dequantized-bf16" in ridgeline_quality.json
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from quality_build import GROUP, ORIGIN_FILE, SEED, SEQ, log, set_determinism, split_modules, training_stream

N_CALIBRATION = 64
# AWQ's grid search runs every block once per grid point and calibration sample: fewer of both keep
# it to minutes on two CPU cores
AWQ_CALIBRATION, AWQ_GRID = 16, 10
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
# which weight scales the broken checkpoint scrambles: every linear layer of two blocks
BROKEN_LAYERS = (1, 2)


def calibration_set(base: Path, n: int = N_CALIBRATION):
    """n windows of SEQ tokens of the training text (never the held-out eval text)."""
    from datasets import Dataset
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    train, _ = split_modules()
    stream = training_stream(tok, train)
    gen = torch.Generator().manual_seed(SEED + 3)
    starts = torch.randint(0, len(stream) - SEQ, (n,), generator=gen).tolist()
    rows = [stream[s:s + SEQ] for s in starts]
    return Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * SEQ for _ in rows]})


def _no_pinning_without_accelerator() -> None:
    """llm-compressor's AWQ pins its activation cache for host-to-device copies, which raises
    "Cannot access accelerator device when none is available" on a CPU-only host; there is no copy
    to speed up there, so pinning becomes a no-op."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def recipe(method: str):
    from llmcompressor.modifiers.awq import AWQModifier
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    if method == "gptq":
        return [GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])]
    if method == "awq":
        _no_pinning_without_accelerator()
        return [AWQModifier(targets=["Linear"], scheme="W4A16", ignore=["lm_head"], n_grid=AWQ_GRID)]
    if method == "rtn":
        return [QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])]
    raise ValueError(method)


def dequantize_checkpoint(src: Path, dst: Path) -> None:
    """Write dst/model.safetensors: the INT4 checkpoint in src unpacked and multiplied by its scales,
    in bf16; exactly the weights an INT4 kernel multiplies by (the checkpoints are symmetric: no zero point)."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    packed = load_file(str(src / "model.safetensors"))
    out = {}
    for k, v in packed.items():
        if k.endswith(".weight_packed"):
            w = k[: -len("_packed")]
            if f"{w}_zero_point" in packed:
                raise ValueError(f"{src}: {w} has a zero point; only symmetric checkpoints are dequantized here")
            q = unpack_from_int32(v, 4, torch.Size(packed[f"{w}_shape"].tolist())).float()
            scale = packed[f"{w}_scale"].float().repeat_interleave(GROUP, dim=1)
            out[w] = (q * scale).to(torch.bfloat16).contiguous()
        elif not k.endswith(("weight_scale", "weight_shape", "weight_g_idx")):
            out[k] = v.to(torch.bfloat16).contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})


def make_dequant(out: Path, src: Path, name: str) -> None:
    """<name>-dequant/: src's weights dequantized to plain bf16, with the base config and tokenizer."""
    deq = out / f"{name}-dequant.partial"
    shutil.rmtree(deq, ignore_errors=True)
    deq.mkdir()
    dequantize_checkpoint(src, deq)
    shutil.copy(out / "base" / "config.json", deq / "config.json")
    copy_tokenizer(out / "base", deq)
    write_origin(deq, weights="dequantized-bf16", source=name, group_size=GROUP, bits=4)
    final = out / f"{name}-dequant"
    shutil.rmtree(final, ignore_errors=True)
    deq.rename(final)


def copy_tokenizer(src: Path, dst: Path) -> None:
    for f in TOKENIZER_FILES:
        if (src / f).exists():
            shutil.copy(src / f, dst / f)


def write_origin(d: Path, **fields) -> None:
    (d / ORIGIN_FILE).write_text(json.dumps(fields, indent=1))


def quantize(out: Path, method: str) -> dict:
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM

    set_determinism()
    torch.use_deterministic_algorithms(False)  # some calibration kernels have no deterministic CPU path
    base = out / "base"
    t0 = time.time()
    # calibrate in float32: CPU matmuls in bf16 are many times slower here; the checkpoint is bf16 again below
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    kwargs = {}
    if method != "rtn":
        n = AWQ_CALIBRATION if method == "awq" else N_CALIBRATION
        kwargs = dict(dataset=calibration_set(base, n), num_calibration_samples=n, max_seq_length=SEQ,
                      shuffle_calibration_samples=False)
    oneshot(model=model, recipe=recipe(method), **kwargs)
    secs = time.time() - t0
    model.to(torch.bfloat16)  # weights and scales as the checkpoint stores them

    tmp = out / f"{method}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, save_compressed=True)
    copy_tokenizer(base, tmp)
    write_origin(tmp, weights="real", source=method, group_size=GROUP, bits=4, format="compressed-tensors",
                 quantize_seconds=round(secs, 1))
    shutil.rmtree(out / method, ignore_errors=True)
    tmp.rename(out / method)
    make_dequant(out, out / method, method)
    log(f"{method}/ and {method}-dequant/ in {secs:.0f}s (+{time.time() - t0 - secs:.0f}s to save)")
    return {"seconds": secs}


def scramble_scales(state: dict[str, torch.Tensor], layers=BROKEN_LAYERS) -> list[str]:
    """Permute (with a fixed seed) and inflate the weight scales of every linear layer in `layers`."""
    gen = torch.Generator().manual_seed(SEED + 4)
    hit = []
    for k in sorted(state):
        if k.endswith("weight_scale") and any(f"layers.{i}." in k for i in layers):
            s = state[k]
            flat = s.flatten()
            perm = torch.randperm(flat.numel(), generator=gen)
            state[k] = (flat[perm] * 4).reshape(s.shape).to(s.dtype).contiguous()
            hit.append(k)
    return hit


def make_broken(out: Path) -> None:
    src = out / "rtn"
    tmp = out / "broken.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    for f in sorted(tmp.glob("*.safetensors")):
        state = load_file(str(f))
        hit = scramble_scales(state)
        save_file(state, str(f), metadata={"format": "pt"})
    write_origin(tmp, weights="real", source="rtn", damage=f"weight scales of layers {list(BROKEN_LAYERS)} permuted "
                 "and multiplied by 4", scrambled=hit, group_size=GROUP, bits=4, format="compressed-tensors")
    shutil.rmtree(out / "broken", ignore_errors=True)
    tmp.rename(out / "broken")
    make_dequant(out, out / "broken", "broken")
    log(f"broken/ and broken-dequant/: {len(hit)} scale tensors scrambled")


def build_variants(out: Path) -> None:
    t0 = time.time()
    timings = {}
    for method in ("rtn", "gptq", "awq"):
        timings[method] = quantize(out, method)
    make_broken(out)
    (out / "variants.json").write_text(json.dumps({"seconds": round(time.time() - t0, 1), "methods": timings}, indent=1))
    log(f"variants done in {time.time() - t0:.0f}s")
