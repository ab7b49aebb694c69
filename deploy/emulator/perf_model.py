"""How long one engine step takes on the chosen GPU, model and variant: a calibrated roofline.

A step runs a handful of kernel families one after another; each is bounded by its bytes over the
achievable bandwidth or its FLOPs over the achievable peak, and the step's time is their sum plus a
per-step overhead:

    linear layers   max(weight bytes / BW, 2 x linear params x tokens / peak)   (+ INT4 dequant tax)
    lm_head         max(vocab x hidden x 2 bytes / BW, 2 x vocab x hidden x sampled rows / peak)
    attention       max(KV bytes read and written / BW_attn, attention FLOPs / peak_attn)
    elementwise     activation bytes / BW  (norms, rotary, SiLU, residual adds)
    overhead        per step, per layer and per sequence (scheduling, launch gaps, sampling)

"max" is a soft maximum, (a^k + b^k)^(1/k), because a kernel near its ridge point overlaps memory
and compute imperfectly (k fitted to the bf16 linear-layer table of the H100 anchors).

INT4 weight-only kernels (AWQ/GPTQ through Marlin or Machete) read 4-bit weights but dequantize them
to fp16 before the tensor cores: a tax that grows with the tokens in the step while the kernel works
on small M-tiles, and is hidden behind the matrix products once the step is compute-bound. An FP8 KV
cache halves the attention bytes but converts on every read and quantizes the query, which costs a
little per step and per byte.

Every calibration constant lives in `Calibration`, each with the measurement it was fitted to (vLLM
0.24.0, Llama-3-8B, 512 prompt / 256 output tokens on one H100: ridgeline's own sweep for the INT4
and API-server constants, the earlier bench anchors in shared/anchors/h100_vllm_0.24 for the rest).
Fractions apply to the GPU's achievable ceilings from core/hardware/catalog.py, so other GPUs scale by
their own datasheet figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Optional

from core.hardware.catalog import GPUSpec, ModelSpec, kv_dtype_bytes, weight_bits
from core.hardware.formats import weight_format
from core.hardware.roofline import ACT_BYTES, act_bytes_per_token, compute_dtype


@dataclass(frozen=True)
class Calibration:
    """Every fitted constant of the step-time model, with where it came from.

    The constants marked "fitted" were fitted together, by least squares on log errors, to all the
    anchors at once (output tok/s, median ITL, median TTFT and TPOT of fp16, AWQ and FP8-KV at every
    measured concurrency, plus the anchors' "gptq" files, which served fp16 weights), with the engine
    driven in simulated time like `vllm bench serve` (benchmarks/emulator_calibration.py prints the
    result). Fractions are of the GPU's achievable ceilings in core/hardware/catalog.py.
    """

    # Soft-max exponent of every kernel roofline: fits the H100 bf16 linear-layer table
    # (anchors/h100_linear_layer_int4_fp8_vs_bf16.json) within 4% at every M from 1 to 2048
    # (e.g. M=256: 205 us memory side, 160 us compute side, 238 us measured; the model gives 232).
    smooth_k: float = 3.0
    # Weight streaming reaches this share of the measured copy bandwidth (decode under CUDA graphs).
    # Fitted; pinned mostly by the fp16 median ITL at concurrency 1 (6.45 ms).
    weight_bw_eff: float = 0.94
    # Large linear layers reach this share of the measured 680 TFLOP/s bf16 matmul (the layer table
    # itself shows 702-714 TFLOP/s at M >= 1024). Fitted; pinned by the 8,192-token prefill behind the
    # median TTFT at concurrency 16 (fp16 171 ms).
    gemm_eff: float = 1.02
    # Paged-attention decode reads the KV cache at this share of the copy bandwidth. Fitted; pinned by
    # the ITL rise with concurrency (fp16 6.45 ms at 1, 8.77 at 64, 17-18 at 256).
    attn_bw_eff: float = 0.98
    # An FP8 KV cache is read at this share of attn_bw_eff (the kernel converts fp8 to bf16 as it
    # reads). Fitted; pinned by the fp8kv ITL at 64 and 256 (8.18, 14.9 ms) and fp8kv/fp16 = 1.12x at 256.
    fp8_kv_read_eff: float = 0.78
    # Per-step cost of an FP8 KV cache (query quantization, scales, in every layer). Fitted; pinned by
    # fp8kv/fp16 at concurrency 1 (ITL 6.57 vs 6.45 ms: 0.99x).
    fp8_kv_step_s: float = 0.20e-3
    # Prefill attention (FlashAttention) reaches this share of the bf16 peak (fitted, weakly pinned).
    attn_flop_eff: float = 0.80
    # Per step outside the kernels' rooflines: scheduling, input preparation and sampling (fixed), and
    # the gaps between kernels (per layer). The sum for Llama-3-8B's 32 layers (1.18 ms) is fitted,
    # pinned by the fp16 and AWQ ITL at concurrency 1 (6.45 and 4.08 ms) with weight_bw_eff; the split
    # between the two is assumed (about ten kernels a layer, a couple of microseconds between each).
    step_overhead_s: float = 0.40e-3
    layer_overhead_s: float = 24.5e-6
    # Per scheduled sequence (sampling and output processing for each row). Fitted.
    seq_overhead_s: float = 3.0e-6
    # INT4 (Marlin/Machete) dequantization tax. The dequantization work grows with the tokens in the
    # step (every M-tile converts the weights again): dq0 + dq_per_token x min(tokens, dq_knee) seconds.
    # It is exposed while the kernel waits on memory and hidden behind tensor-core work once the
    # kernel is compute-bound: the exposed share is 1 / (1 + (compute / memory) ^ int4_hide_exp).
    # Refitted by hand to ridgeline's own H100 sweep (calibration.H100_MEASURED, no prefix-cache hits):
    # pinned by AWQ/fp16 throughput at 1, 64 and 256 (1.57x, 1.16x, 1.06x) and the AWQ ITL at 1 and 64
    # (4.11, 7.29 ms); its ITL at 16 comes out 13% high (5.16 against 4.58 ms), which a tax linear in
    # the step's tokens cannot avoid while it fits 64. The naive int4 kernel of the layer table
    # (0.2x at M=64) is a different kernel and is not what vLLM runs. The constants are for
    # Llama-3-8B's 6.98e9 projection weights on the H100: the work scales with the weights, its fixed
    # part with the time to stream them (bandwidth) and its per-token part with the tensor-core peak.
    int4_dq0_s: float = 1.22e-3
    int4_dq_per_token_s: float = 36e-6
    int4_dq_knee_tokens: float = 256.0
    int4_hide_exp: float = 4.0
    # INT4 tensor-core path as a share of gemm_eff once compute-bound. Fitted with the tax above: AWQ
    # at 256 (9,846 tok/s, 1.06x fp16) is bound by its prefills and decode batches on the tensor cores.
    int4_mma_eff: float = 1.03
    # FP8 weights (W8A8): per-token activation quantization, as extra bytes of traffic per token.
    # Not anchored: no end-to-end fp8-weight run exists (the layer table gives only the kernel side).
    fp8_act_quant_bytes_per_token: float = 0.0
    # The API server, one Python process: a fixed latency per request (HTTP, IPC) plus a FIFO queue
    # where each request (parse, tokenize, hand over) and each streamed token (detokenize, serialize,
    # write) takes its turn. Fitted; pinned by the median TTFT at concurrency 1 (19-20 ms from
    # ridgeline's client on the H100, 20-23 ms from vllm bench serve) and at 64 and 256, where that
    # process is busy (TTFT 0.3-1.2 s).
    frontend_s: float = 2.0e-3
    frontend_req_s: float = 5.7e-3
    frontend_token_s: float = 57e-6
    # Elementwise activation traffic as a share of the unfused estimate in roofline.act_bytes_per_token.
    act_traffic_eff: float = 1.0

    def with_overrides(self, overrides: Optional[dict[str, float]]) -> "Calibration":
        if not overrides:
            return self
        known = set(asdict(self))
        bad = sorted(set(overrides) - known)
        if bad:
            raise ValueError(f"unknown calibration constant(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
        return replace(self, **{k: float(v) for k, v in overrides.items()})


DEFAULT_CALIBRATION = Calibration()

# Constants refitted for one GPU where a measurement on it says the H100 fit does not carry over.
# H200 (vLLM 0.24.0, ridgeline's own sweep of Llama-3-8B, 512/256 tokens, concurrency 1 to 256:
# docs/results/h200-llama3-8b/). The INT4 kernel did not speed up with the bandwidth: AWQ's decode
# step took 3.91 ms against the H100's 4.08, while fp16's went from 6.45 to 4.87 ms. So the fixed
# part of the tax is the H100's in time (the H100 fit's 1.16 ms then; the model divides it by the bandwidth ratio,
# hence 1.66e-3 here), and AWQ and GPTQ lose their gain by concurrency 64 (1.00x fp16, against 1.16x
# on the H100): the tax hides less and grows faster with the step's tokens. Fitted by hand on the
# 18 INT4 points (output tok/s within 14%; benchmarks/emulator_calibration.py --gpu h200).
GPU_CALIBRATION: dict[str, dict[str, float]] = {
    "h200": {"int4_dq0_s": 1.66e-3, "int4_hide_exp": 1.5, "int4_dq_per_token_s": 45e-6, "int4_mma_eff": 1.0,
             "frontend_s": 3.5e-3},
}


def calibration_for(gpu: str, overrides: Optional[dict[str, float]] = None) -> Calibration:
    """The calibration of one GPU: the H100 fit, that GPU's refits, then the caller's overrides."""
    return DEFAULT_CALIBRATION.with_overrides({**GPU_CALIBRATION.get(gpu, {}), **(overrides or {})})

# what the INT4 constants were fitted on: Llama-3-8B's projections on the measured H100 ceilings
_REF_LINEAR_PARAMS = 6_979_321_856
_REF_BW = 3.0205e12
_REF_FLOPS = 679.7e12


@dataclass
class StepShape:
    """What a scheduled step holds, accumulated sequence by sequence."""

    tokens: int = 0  # new tokens computed this step
    seqs: int = 0  # sequences scheduled (each produces a logits row)
    decode_seqs: int = 0
    prefill_tokens: int = 0
    ctx_tokens: float = 0.0  # KV tokens read (cached context of every scheduled sequence)
    attn_flops_units: float = 0.0  # sum of new_tokens x (context + (new_tokens + 1) / 2)

    def add(self, new_tokens: int, context: int) -> None:
        self.tokens += new_tokens
        self.seqs += 1
        if new_tokens == 1 and context > 0:
            self.decode_seqs += 1
        else:
            self.prefill_tokens += new_tokens
        self.ctx_tokens += context
        self.attn_flops_units += new_tokens * (context + (new_tokens + 1) * 0.5)

    @classmethod
    def of(cls, seqs: Iterable[tuple[int, int]]) -> "StepShape":
        s = cls()
        for n, c in seqs:
            s.add(n, c)
        return s


@dataclass(frozen=True)
class StepTiming:
    """A step's modelled duration and what it moved and computed (for /metrics and power)."""

    time_s: float
    flops: float
    read_bytes: float
    write_bytes: float
    parts: dict = field(default_factory=dict, compare=False)


def smax(a: float, b: float, k: float) -> float:
    """Soft maximum: a kernel near its ridge point is slower than either bound alone."""
    if a <= 0:
        return b
    if b <= 0:
        return a
    return (a**k + b**k) ** (1.0 / k)


class PerfModel:
    """Step times for one (GPU, model, variant)."""

    def __init__(self, model: ModelSpec, gpu: GPUSpec, weights: str, kv_cache_dtype: str = "auto",
                 calibration: Calibration = DEFAULT_CALIBRATION, group_size: int = 128):
        self.model, self.gpu, self.weights, self.kv_cache_dtype = model, gpu, weights, kv_cache_dtype
        self.cal = calibration
        self.int4 = weight_format(weights).int4
        self.fp8_kv = kv_cache_dtype.startswith("fp8")
        weight_bits(weights, group_size)
        c = calibration
        m = model
        bw = gpu.bandwidth(True)
        self.bw_w = bw * c.weight_bw_eff
        self.bw_attn = bw * c.attn_bw_eff * (c.fp8_kv_read_eff if self.fp8_kv else 1.0)
        self.bw_act = bw
        self.peak16 = gpu.flops("fp16", True) * c.gemm_eff
        self.peak_lin = gpu.flops(compute_dtype(weights, gpu), True) * c.gemm_eff
        if self.int4:
            self.peak_lin *= c.int4_mma_eff
        self.peak_attn = gpu.flops("fp16", True) * c.attn_flop_eff
        self.lin_bytes = m.linear_weight_bytes(weights, group_size) + m.other_params * ACT_BYTES
        self.lm_bytes = m.vocab * m.hidden * ACT_BYTES
        self.lin_flops_per_token = 2.0 * m.linear_params
        self.lm_flops_per_row = 2.0 * m.vocab * m.hidden
        self.kvb = m.kv_bytes_per_token(kv_dtype_bytes(kv_cache_dtype))
        self.attn_flop_factor = 4.0 * m.layers * m.heads * m.head_dim
        self.act_per_token = act_bytes_per_token(m) - m.vocab * 4.0 + m.hidden * ACT_BYTES
        self.logits_row_bytes = m.vocab * 4.0
        if weights == "fp8":
            self.act_per_token += c.fp8_act_quant_bytes_per_token
        # the INT4 tax was fitted on Llama-3-8B and the H100: scale it to this model and GPU
        weights_ratio = m.linear_params / _REF_LINEAR_PARAMS
        self.dq0 = c.int4_dq0_s * weights_ratio * (_REF_BW / bw)
        self.dq1 = c.int4_dq_per_token_s * weights_ratio * (_REF_FLOPS / gpu.flops("fp16", True))
        self.fixed_overhead = c.step_overhead_s + c.layer_overhead_s * m.layers

    def step(self, shape: StepShape) -> StepTiming:
        """Duration of one step holding `shape`."""
        c = self.cal
        k = c.smooth_k
        if shape.tokens <= 0:
            return StepTiming(0.0, 0.0, 0.0, 0.0)
        t_tok = shape.tokens
        lin_flops = self.lin_flops_per_token * t_tok
        mem_lin = self.lin_bytes / self.bw_w
        comp_lin = lin_flops / self.peak_lin
        t_lin = smax(mem_lin, comp_lin, k)
        if self.int4:
            work = self.dq0 + self.dq1 * min(t_tok, c.int4_dq_knee_tokens)
            t_lin += work / (1.0 + (comp_lin / mem_lin) ** c.int4_hide_exp)
        rows = shape.seqs
        lm_flops = self.lm_flops_per_row * rows
        t_lm = smax(self.lm_bytes / self.bw_w, lm_flops / self.peak16, k)
        kv_read = shape.ctx_tokens * self.kvb
        kv_write = t_tok * self.kvb
        attn_flops = self.attn_flop_factor * shape.attn_flops_units
        t_attn = smax((kv_read + kv_write) / self.bw_attn, attn_flops / self.peak_attn, k)
        act = self.act_per_token * t_tok + self.logits_row_bytes * rows
        t_act = act * c.act_traffic_eff / self.bw_act
        overhead = self.fixed_overhead + c.seq_overhead_s * rows
        if self.fp8_kv:
            overhead += c.fp8_kv_step_s
        total = t_lin + t_lm + t_attn + t_act + overhead
        flops = lin_flops + lm_flops + attn_flops
        read = self.lin_bytes + self.lm_bytes + kv_read + act * 0.5
        write = kv_write + act * 0.5
        return StepTiming(total, flops, read, write,
                          {"linear": t_lin, "lm_head": t_lm, "attention": t_attn, "elementwise": t_act,
                           "overhead": overhead})

    def step_of(self, seqs: Iterable[tuple[int, int]]) -> StepTiming:
        """Convenience: duration of a step given (new_tokens, cached_context) per sequence."""
        return self.step(StepShape.of(seqs))


# --- modelled power -------------------------------------------------------------------------------
# Board power while a step runs: idle plus a share of (TDP - idle) that grows with how hard the step
# drives memory and tensor cores relative to the datasheet. Not calibrated against a power meter:
# the emulator labels it as modelled. Memory-bound decode near full bandwidth lands around half of
# TDP, compute-bound prefill around three quarters, which is what H100 boards typically draw.
POWER_BASE_ACTIVE = 0.10  # share of (TDP - idle) for any running step (clocks up, launches)
POWER_MEM_WEIGHT = 0.55
POWER_COMPUTE_WEIGHT = 0.85


def step_power_w(gpu: GPUSpec, timing: StepTiming, dtype: str = "fp16") -> float:
    """Modelled average board power during a step."""
    if timing.time_s <= 0:
        return gpu.idle_w
    mem_frac = (timing.read_bytes + timing.write_bytes) / (gpu.mem_bw_tbps * 1e12 * timing.time_s)
    comp_frac = timing.flops / (gpu.flops(dtype, measured_ceilings=False) * timing.time_s)
    share = min(1.0, POWER_BASE_ACTIVE + POWER_MEM_WEIGHT * min(mem_frac, 1.0)
                + POWER_COMPUTE_WEIGHT * min(comp_frac, 1.0))
    return gpu.idle_w + (gpu.tdp_w - gpu.idle_w) * share
