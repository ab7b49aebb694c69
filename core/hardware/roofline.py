"""The roofline bound of one engine step: bytes moved and FLOPs done, against a GPU's ceilings.

A decode step reads every weight once (however many sequences are batched), reads each sequence's
KV cache, and does 2 FLOPs per weight per token. While the batch is small the bytes dominate
(memory-bound: INT4 weights pay, 4x fewer bytes); as it grows the FLOPs catch up (compute-bound:
INT4 weights compute in fp16 after dequantization and stop paying). These functions give both
sides so the analysis can say which regime a measured step was in.

Conventions: bytes and FLOPs are for the whole model on one GPU; `weight_bytes` is what one step
streams (the projections at the variant's width, the 16-bit lm_head, norms, and only the embedding
rows it gathers, not the whole table); the memory the weights occupy is `ModelSpec.weight_bytes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from core.hardware.catalog import GPUSpec, ModelSpec, kv_dtype_bytes, weight_bits

ACT_BYTES = 2.0  # activations are 16-bit


@dataclass(frozen=True)
class StepCost:
    weight_bytes: float
    kv_bytes: float
    act_bytes: float
    flops: float

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.kv_bytes + self.act_bytes

    def __add__(self, other: "StepCost") -> "StepCost":
        return StepCost(self.weight_bytes + other.weight_bytes, self.kv_bytes + other.kv_bytes,
                        self.act_bytes + other.act_bytes, self.flops + other.flops)


@dataclass(frozen=True)
class Bound:
    memory_s: float
    compute_s: float
    time_s: float
    regime: str  # "memory" | "compute"


def compute_dtype(weights: str, gpu: Optional[GPUSpec] = None) -> str:
    """The tensor-core dtype the linear layers run in: fp8 for FP8 weights where the GPU has it.

    INT4 weight-only formats (AWQ, GPTQ) dequantize to 16 bits and multiply there.
    """
    weight_bits(weights)  # validates the name
    if weights == "fp8" and (gpu is None or gpu.supports("fp8")):
        return "fp8"
    return "bf16" if weights == "bf16" else "fp16"


def streamed_weight_bytes(model: ModelSpec, weights: str, tokens: float, group_size: int = 128) -> float:
    """Weight bytes one step reads: projections at the variant's bits, lm_head, norms, gathered rows."""
    lm_head = model.vocab * model.hidden * ACT_BYTES  # tied or not, the output projection is read
    rows = tokens * model.hidden * ACT_BYTES
    return model.linear_weight_bytes(weights, group_size) + lm_head + model.other_params * ACT_BYTES + rows


def act_bytes_per_token(model: ModelSpec) -> float:
    """Activation traffic of one token through the whole model (reads and writes between kernels).

    Per layer: the residual stream read and written around two norms and two adds (about 8 hidden
    vectors), q/k/v out and attention out, the gate/up output, the activated product and the down
    output; then the fp32 logits row.
    """
    per_layer = (8 * model.hidden + 2 * (model.q_dim + 2 * model.kv_dim) + 3 * model.intermediate
                 + model.hidden) * ACT_BYTES
    return model.layers * per_layer + model.vocab * 4.0


def attention_flops(model: ModelSpec, new_tokens: float, context_tokens: float) -> float:
    """QK^T and PV for `new_tokens` queries over `context_tokens` cached plus the causal part of their own."""
    span = context_tokens + (new_tokens + 1) / 2.0
    return 4.0 * model.layers * model.heads * model.head_dim * new_tokens * span


def decode_step_cost(model: ModelSpec, weights: str, kv_cache_dtype: str, batch: int, context_tokens: float,
                     group_size: int = 128) -> StepCost:
    """One decode step: `batch` sequences, each with `context_tokens` already in the KV cache."""
    if batch < 0 or context_tokens < 0:
        raise ValueError(f"batch ({batch}) and context_tokens ({context_tokens}) must be >= 0")
    kvb = model.kv_bytes_per_token(kv_dtype_bytes(kv_cache_dtype))
    kv = batch * (context_tokens + 1) * kvb  # read the cache, write the new token's K and V
    flops = (2.0 * model.linear_params * batch + 2.0 * model.hidden * model.vocab * batch
             + batch * attention_flops(model, 1, context_tokens))
    return StepCost(weight_bytes=streamed_weight_bytes(model, weights, batch, group_size), kv_bytes=kv,
                    act_bytes=batch * act_bytes_per_token(model), flops=flops)


def prefill_cost(model: ModelSpec, weights: str, kv_cache_dtype: str, tokens: int, context_tokens: float,
                 group_size: int = 128) -> StepCost:
    """One sequence prefilling `tokens` prompt tokens after `context_tokens` already cached (a chunk)."""
    if tokens < 0 or context_tokens < 0:
        raise ValueError(f"tokens ({tokens}) and context_tokens ({context_tokens}) must be >= 0")
    kvb = model.kv_bytes_per_token(kv_dtype_bytes(kv_cache_dtype))
    kv = (context_tokens + tokens) * kvb  # read what is cached, write the chunk
    logits_rows = 1 if tokens else 0  # only the last position is sampled
    flops = (2.0 * model.linear_params * tokens + 2.0 * model.hidden * model.vocab * logits_rows
             + attention_flops(model, tokens, context_tokens))
    act = tokens * (act_bytes_per_token(model) - model.vocab * 4.0) + logits_rows * model.vocab * 4.0
    return StepCost(weight_bytes=streamed_weight_bytes(model, weights, tokens, group_size), kv_bytes=kv,
                    act_bytes=act, flops=flops)


def bound(cost: StepCost, gpu: GPUSpec, weights: str, measured_ceilings: bool = True) -> Bound:
    """Time of a step if it ran at the memory ceiling or at the compute ceiling, whichever is slower."""
    mem = cost.total_bytes / gpu.bandwidth(measured_ceilings)
    comp = cost.flops / gpu.flops(compute_dtype(weights, gpu), measured_ceilings)
    return Bound(memory_s=mem, compute_s=comp, time_s=max(mem, comp), regime="compute" if comp >= mem else "memory")


def ridge_batch(model: ModelSpec, gpu: GPUSpec, weights: str, kv_cache_dtype: str, context_tokens: float,
                measured_ceilings: bool = True, group_size: int = 128) -> float:
    """Smallest batch at which the decode step turns compute-bound (inf if it never does).

    Both sides are affine in the batch, so the crossing is solved exactly; with long contexts and a
    16-bit KV cache the attention bytes grow faster than the FLOPs and the step never turns.
    """
    c0 = decode_step_cost(model, weights, kv_cache_dtype, 0, context_tokens, group_size)
    c1 = decode_step_cost(model, weights, kv_cache_dtype, 1, context_tokens, group_size)
    bw = gpu.bandwidth(measured_ceilings)
    fl = gpu.flops(compute_dtype(weights, gpu), measured_ceilings)
    mem0 = c0.total_bytes / bw
    mem_slope = (c1.total_bytes - c0.total_bytes) / bw
    comp_slope = (c1.flops - c0.flops) / fl
    if comp_slope <= mem_slope:
        return math.inf
    return mem0 / (comp_slope - mem_slope)


# --- KV-cache capacity ---------------------------------------------------------------------------
# vLLM sizes the cache as: total memory x gpu_memory_utilization, minus the weights, minus the peak
# of a profiling forward pass of max_num_batched_tokens tokens (activations, sampler logits), minus
# memory outside PyTorch (CUDA context, cuBLAS workspaces, CUDA graphs), in whole 16-token blocks.
# NON_TORCH_RESERVE_BYTES is fitted to vLLM 0.24.0 on an H100 with Llama-3-8B fp16 (run with
# --max-num-seqs 256 and the default 8,192 batched tokens), which reported 450,336 tokens; with the
# same constant the formula gives AWQ and FP8-KV within 0.3% of vLLM's 528,288 and 900,160
# (tests/test_roofline.py checks all three).
NON_TORCH_RESERVE_BYTES = 0.777e9
DEFAULT_BLOCK_SIZE = 16


def profile_activation_bytes(model: ModelSpec, max_num_batched_tokens: int = 8192, max_num_seqs: int = 256) -> float:
    """Peak transient memory of vLLM's profiling run: the MLP's widest tensors plus sampler logits."""
    per_token = (3 * model.intermediate + 4 * model.hidden) * ACT_BYTES
    logits = min(max_num_seqs, max_num_batched_tokens) * model.vocab * 4.0
    return max_num_batched_tokens * per_token + logits


def activation_reserve_bytes(model: ModelSpec, max_num_batched_tokens: int = 8192, max_num_seqs: int = 256) -> float:
    return NON_TORCH_RESERVE_BYTES + profile_activation_bytes(model, max_num_batched_tokens, max_num_seqs)


def kv_capacity_tokens(model: ModelSpec, gpu: GPUSpec, weights: str, kv_cache_dtype: str,
                       gpu_memory_utilization: float = 0.9, activation_reserve_gb: Optional[float] = None,
                       max_num_batched_tokens: int = 8192, max_num_seqs: int = 256,
                       block_size: int = DEFAULT_BLOCK_SIZE, group_size: int = 128) -> int:
    """Tokens of KV cache that fit: (memory x utilisation - weights - reserve) / KV bytes per token.

    `activation_reserve_gb` (GiB) replaces the estimate of activations plus non-PyTorch memory.
    Returns 0 when the weights do not fit at all.
    """
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    reserve = (activation_reserve_gb * 1024**3 if activation_reserve_gb is not None
               else activation_reserve_bytes(model, max_num_batched_tokens, max_num_seqs))
    free = gpu.memory_bytes * gpu_memory_utilization - model.weight_bytes(weights, group_size) - reserve
    kvb = model.kv_bytes_per_token(kv_dtype_bytes(kv_cache_dtype))
    if free <= 0:
        return 0
    blocks = int(free // (kvb * block_size))
    return blocks * block_size
