"""The emulator's engine in simulated time: a discrete-event loop with closed-loop virtual clients.

Same scheduler, same perf model as the server, but no sleeping: the clock jumps from one step's end
to the next. It answers "what would `vllm bench serve --max-concurrency C` report" in well under a
second, which is how the perf model is calibrated against the H100 anchors and how tests check it.
"""

from __future__ import annotations

import heapq
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence

from core.hardware.catalog import GPUSpec, ModelSpec, get_gpu, load_model
from core.hardware.roofline import kv_capacity_tokens
from deploy.emulator.engine import BLOCK_SIZE, EngineConfig, EngineCore, FrontendQueue, Request
from deploy.emulator.perf_model import Calibration, PerfModel, calibration_for


@dataclass
class SimResult:
    """What a benchmark client would report (the keys `vllm bench serve` uses)."""

    concurrency: int
    num_prompts: int
    duration_s: float
    output_throughput: float
    median_ttft_ms: float
    median_itl_ms: float
    median_tpot_ms: float
    mean_ttft_ms: float
    num_preemptions: int
    steps: int
    max_running: int
    end_time: float = 0.0
    prefix_hits: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def default_limits(gpu: GPUSpec) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) when not given.

    Batched tokens as vLLM's OpenAI server picks them by GPU memory (16,384 from 160 GiB, 8,192 from
    70 GiB except the A100, else 2,048). Sequences 256, as the anchors ran (vLLM's own default is
    1,024 on the large GPUs; a plan that wants it passes --max-num-seqs 1024).
    """
    gib = gpu.memory_bytes / 1024**3
    if gib >= 160:
        return 256, 16384
    if gib >= 70 and not gpu.name.startswith("a100"):
        return 256, 8192
    return 256, 2048


def build_core(model: ModelSpec, gpu: GPUSpec, weights: str, kv_cache_dtype: str = "auto",
               calibration: Optional[Calibration] = None, max_num_seqs: Optional[int] = None,
               max_num_batched_tokens: Optional[int] = None, max_model_len: int = 8192,
               gpu_memory_utilization: float = 0.9, num_gpu_blocks: Optional[int] = None,
               enable_prefix_caching: bool = True, seed: int = 0) -> EngineCore:
    """An engine core sized the way vLLM sizes it (KV blocks from the memory left after the weights)."""
    seqs_d, tokens_d = default_limits(gpu)
    seqs = max_num_seqs or seqs_d
    tokens = max_num_batched_tokens or max(tokens_d, 0)
    if num_gpu_blocks is None:
        cap = kv_capacity_tokens(model, gpu, weights, kv_cache_dtype, gpu_memory_utilization,
                                 max_num_batched_tokens=tokens, max_num_seqs=seqs)
        num_gpu_blocks = cap // 16
    perf = PerfModel(model, gpu, weights, kv_cache_dtype, calibration or calibration_for(gpu.name))
    cfg = EngineConfig(num_gpu_blocks=num_gpu_blocks, max_num_seqs=seqs, max_num_batched_tokens=tokens,
                       max_model_len=max_model_len, enable_prefix_caching=enable_prefix_caching)
    return EngineCore(cfg, perf, seed=seed)


def prompt_hashes(prompt_id: int, prompt_len: int) -> tuple[int, ...]:
    """Block hashes of the synthetic prompt number `prompt_id` (same id, same tokens, same hashes)."""
    out, h = [], 0
    for j in range(prompt_len // BLOCK_SIZE):
        h = hash((h, prompt_id, j))
        out.append(h)
    return tuple(out)


def simulate_closed_loop(core: EngineCore, concurrency: int, num_prompts: int, prompt_len: int = 512,
                         output_len: int = 256, frontend_s: Optional[float] = None,
                         prompt_ids: Optional[Sequence[int]] = None, t0: float = 0.0) -> SimResult:
    """`num_prompts` requests, at most `concurrency` in flight, each sent the moment a slot frees.

    ignore_eos: every request generates exactly `output_len`. Without `prompt_ids` every prompt is
    distinct and uncached; with them, request i sends prompt `prompt_ids[i]`, so prompts seen before
    on the same core hit the prefix cache. The clock starts at `t0` (a core carried over from an
    earlier run keeps its own time).
    """
    if concurrency <= 0 or num_prompts <= 0:
        raise ValueError("concurrency and num_prompts must be positive")
    steps0 = core.steps
    cal = core.perf.cal
    frontend = FrontendQueue(cal.frontend_req_s, cal.frontend_token_s,
                             cal.frontend_s if frontend_s is None else frontend_s)
    arrivals: list[tuple[float, int, Request]] = []
    sent = 0
    send_time: dict[int, float] = {}
    token_times: dict[int, list[float]] = {}

    def send(t: float) -> None:
        nonlocal sent
        ta = frontend.admit_time(t)
        hashes = prompt_hashes(prompt_ids[sent], prompt_len) if prompt_ids is not None else ()
        req = Request(request_id=str(sent), prompt_len=prompt_len, max_tokens=output_len, arrival_time=ta,
                      http_time=t, block_hashes=hashes)
        send_time[id(req)] = t
        token_times[id(req)] = []
        heapq.heappush(arrivals, (ta, sent, req))
        sent += 1

    for _ in range(min(concurrency, num_prompts)):
        send(t0)
    t = t0
    done: list[Request] = []
    max_running = 0
    while len(done) < num_prompts:
        while arrivals and arrivals[0][0] <= t:
            core.add_request(heapq.heappop(arrivals)[2])
        step = core.schedule() if core.has_work() else None
        if step is None:
            if not arrivals:
                raise RuntimeError(f"simulation stalled at t={t:.3f}s: {core.num_waiting} waiting, nothing runs "
                                   "(the KV cache cannot hold one request)")
            t = arrivals[0][0]
            continue
        max_running = max(max_running, core.num_running)
        core.mark_scheduled(step, t)
        t_end = t + step.timing.time_s
        out = core.complete(step, t_end)
        t_dlv = frontend.deliver_time(t_end, len(out.tokens))
        for req in out.tokens:
            token_times[id(req)].append(t_dlv)
        for req in out.finished:
            done.append(req)
            if sent < num_prompts:
                send(t_dlv)
        t = t_end
    ttft, itl, tpot = [], [], []
    out_tokens = 0
    for req in done:
        tt = token_times[id(req)]
        out_tokens += len(tt)
        ttft.append(tt[0] - send_time[id(req)])
        itl.extend(b - a for a, b in zip(tt, tt[1:]))
        if len(tt) > 1:
            tpot.append((tt[-1] - tt[0]) / (len(tt) - 1))
    end = max(token_times[id(r)][-1] for r in done)
    duration = end - t0
    return SimResult(
        concurrency=concurrency, num_prompts=num_prompts, duration_s=duration,
        output_throughput=out_tokens / duration, median_ttft_ms=statistics.median(ttft) * 1e3,
        median_itl_ms=statistics.median(itl) * 1e3 if itl else 0.0,
        median_tpot_ms=statistics.median(tpot) * 1e3 if tpot else 0.0,
        mean_ttft_ms=statistics.fmean(ttft) * 1e3, num_preemptions=core.num_preemptions, steps=core.steps - steps0,
        max_running=max_running, end_time=end, prefix_hits=core.prefix_hits_total,
    )


def bench_prompts(concurrency: int) -> int:
    """The request count the anchors used per step: max(12, 4 x C), 768 at 256."""
    return 768 if concurrency >= 256 else max(12, 4 * concurrency)


def run_point(weights: str, kv_cache_dtype: str, concurrency: int, gpu: str = "h100-sxm", model: str = "llama-3-8b",
              calibration: Optional[Calibration] = None, prompt_len: int = 512, output_len: int = 256,
              num_prompts: Optional[int] = None, **core_kw) -> SimResult:
    """One closed-loop benchmark step on a fresh engine."""
    core = build_core(load_model(model), get_gpu(gpu), weights, kv_cache_dtype, calibration, **core_kw)
    return simulate_closed_loop(core, concurrency, num_prompts or bench_prompts(concurrency), prompt_len, output_len)
