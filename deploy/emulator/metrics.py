"""The emulator's /metrics: vLLM's metric names, types, labels and bucket boundaries, plus modelled power.

Names, label sets (model_name, engine) and histogram buckets follow vLLM's V1 Prometheus logger, so
a scraper or dashboard written for vLLM reads the emulator unchanged. The emulator's own series
(modelled GPU power and energy, and what is being emulated) are prefixed `ridgeline_emulator:`.
Everything lives in one private CollectorRegistry per server.
"""

from __future__ import annotations

import bisect
import time
from typing import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,  # noqa: F401  (re-exported for the server)
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import HistogramMetricFamily

from core.hardware.catalog import GPUSpec
from deploy.emulator.engine import Request, ScheduledStep, StepOutput
from deploy.emulator.perf_model import step_power_w

# vLLM's bucket families (vllm/v1/metrics: request latency, TTFT, inter-token latency, tokens per step)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
PARAMS_N_BUCKETS = (1, 2, 5, 10, 20)
PREEMPTIONS_BUCKETS = (1, 2, 3, 4, 5, 10, 20)
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")

POWER_EMA_S = 1.0  # the power gauge averages over about this long


def build_1_2_5_buckets(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to max_value (vLLM's token-count buckets)."""
    out: list[float] = []
    e = 1
    while True:
        for m in (1, 2, 5):
            v = m * e
            if v > max_value:
                return out
            out.append(v)
        e *= 10


class FastHistogram:
    """A histogram for per-token observations: a bisect and two additions per sample, no lock.

    prometheus_client's Histogram takes a lock and walks its buckets on every observe; at tens of
    thousands of tokens a second that is most of the emulator's metrics cost. This one keeps plain
    counts on the event loop's thread and builds the cumulative family only when /metrics is read.
    """

    def __init__(self, name: str, doc: str, buckets: Iterable[float], labels: dict[str, str],
                 registry: CollectorRegistry):
        self.name, self.doc = name, doc
        self.bounds = [float(b) for b in buckets]
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.labels = labels
        self.created = time.time()
        registry.register(self)

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, v)] += 1
        self.sum += v

    def describe(self):
        return [HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))]

    def collect(self):
        fam = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        acc, buckets = 0, []
        for bound, n in zip(self.bounds, self.counts):
            acc += n
            buckets.append((_fmt(bound), acc))
        buckets.append(("+Inf", acc + self.counts[-1]))
        values = list(self.labels.values())
        fam.add_metric(values, buckets, self.sum)
        fam.add_sample(self.name + "_created", dict(self.labels), self.created)
        yield fam


def _fmt(v: float) -> str:
    return repr(float(v))


class EmulatorMetrics:
    """Every series the emulator exposes, updated once per engine step."""

    def __init__(self, model_name: str, max_model_len: int, gpu: GPUSpec, cache_info: dict[str, str],
                 emulated: dict[str, str], compute_dtype: str = "fp16", engine: str = "0", gpu_index: str = "0"):
        self.registry = reg = CollectorRegistry(auto_describe=True)
        self.gpu = gpu
        self.compute_dtype = compute_dtype
        ln = ["model_name", "engine"]
        lv = (model_name, engine)

        def gauge(name, doc):
            return Gauge(name, doc, ln, registry=reg).labels(*lv)

        def counter(name, doc):
            return Counter(name, doc, ln, registry=reg).labels(*lv)

        def hist(name, doc, buckets):
            return Histogram(name, doc, ln, buckets=list(buckets), registry=reg).labels(*lv)

        self.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self.prefix_queries = counter("vllm:prefix_cache_queries",
                                      "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        # newer vLLM families, kept so dashboards for either release find them (no KV connector,
        # no multimodal cache, no queue limits, never asleep: those stay at zero)
        by_reason = Gauge("vllm:num_requests_waiting_by_reason", "Number of waiting requests by reason.",
                          ln + ["reason"], registry=reg)
        self.waiting_capacity = by_reason.labels(model_name, engine, "capacity")
        by_reason.labels(model_name, engine, "deferred").set(0)
        sleep = Gauge("vllm:engine_sleep_state", "Engine sleep state; awake = 1 means engine is awake.",
                      ln + ["sleep_state"], registry=reg)
        for state, v in (("awake", 1), ("weights_offloaded", 0), ("discard_all", 0)):
            sleep.labels(model_name, engine, state).set(v)
        for name, doc in (("vllm:external_prefix_cache_queries", "External prefix cache queries (KV connector)."),
                          ("vllm:external_prefix_cache_hits", "External prefix cache hits (KV connector)."),
                          ("vllm:mm_cache_queries", "Multi-modal cache queries."),
                          ("vllm:mm_cache_hits", "Multi-modal cache hits.")):
            counter(name, doc)
        rejections = Counter("vllm:admission_rejections", "Number of admission attempts rejected by a queue limit.",
                             ["model_name", "reason"], registry=reg)
        for reason in ("max_num_queued_reqs", "max_num_queued_tokens"):
            rejections.labels(model_name, reason)
        by_source = Counter("vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", ln + ["source"],
                            registry=reg)
        self.prompt_computed = by_source.labels(model_name, engine, "local_compute")
        self.prompt_cache_hit = by_source.labels(model_name, engine, "local_cache_hit")
        by_source.labels(model_name, engine, "external_kv_transfer")
        self.prompt_cached = counter("vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).")
        cached_by = Counter("vllm:prompt_tokens_cached_by_source", "Prefix-cache hit tokens by the cache tier.",
                            ln + ["source"], registry=reg)
        self.prompt_cached_device = cached_by.labels(model_name, engine, "device")
        for src in ("host", "p2p", "disk", "external_unspecified"):
            cached_by.labels(model_name, engine, src)
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          ln + ["finished_reason"], registry=reg)
        self.success = {r: success.labels(model_name, engine, r) for r in FINISH_REASONS}
        tok_buckets = build_1_2_5_buckets(max_model_len)
        self.req_prompt_tokens = hist("vllm:request_prompt_tokens", "Number of prefill tokens processed.", tok_buckets)
        self.req_gen_tokens = hist("vllm:request_generation_tokens", "Number of generation tokens processed.",
                                   tok_buckets)
        self.iteration_tokens = hist("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.",
                                     ITERATION_TOKENS_BUCKETS)
        self.max_gen_tokens = hist("vllm:request_max_num_generation_tokens",
                                   "Histogram of maximum number of requested generation tokens.", tok_buckets)
        self.params_n = hist("vllm:request_params_n", "Histogram of the n request parameter.", PARAMS_N_BUCKETS)
        self.params_max_tokens = hist("vllm:request_params_max_tokens",
                                      "Histogram of the max_tokens request parameter.", tok_buckets)
        lab = {"model_name": model_name, "engine": engine}
        self.ttft = FastHistogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                                  TTFT_BUCKETS, lab, reg)
        self.itl = FastHistogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                                 ITL_BUCKETS, lab, reg)
        self.tpot = hist("vllm:request_time_per_output_token_seconds",
                         "Histogram of time_per_output_token_seconds per request.", ITL_BUCKETS)
        self.e2e = hist("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                        REQUEST_LATENCY_BUCKETS)
        self.queue = hist("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.",
                          REQUEST_LATENCY_BUCKETS)
        self.inference = hist("vllm:request_inference_time_seconds",
                              "Histogram of time spent in RUNNING phase for request.", REQUEST_LATENCY_BUCKETS)
        self.prefill = hist("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.",
                            REQUEST_LATENCY_BUCKETS)
        self.decode = hist("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.",
                           REQUEST_LATENCY_BUCKETS)
        self.req_preemptions = hist("vllm:request_num_preemptions", "Number of preemptions per finished request.",
                                    PREEMPTIONS_BUCKETS)
        self.prefill_computed = hist("vllm:request_prefill_kv_computed_tokens",
                                     "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
                                     tok_buckets)
        self.flops = counter("vllm:estimated_flops_per_gpu_total",
                             "Estimated number of floating point operations per GPU "
                             "(for Model Flops Utilization calculations).")
        self.read_bytes = counter("vllm:estimated_read_bytes_per_gpu_total",
                                  "Estimated number of bytes read from memory per GPU "
                                  "(for Model Flops Utilization calculations).")
        self.write_bytes = counter("vllm:estimated_write_bytes_per_gpu_total",
                                   "Estimated number of bytes written to memory per GPU "
                                   "(for Model Flops Utilization calculations).")
        info = dict(cache_info)
        info["engine"] = engine
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig", list(info),
              registry=reg).labels(**info).set(1)
        # the emulator's own series: modelled, never measured
        self.power = Gauge("ridgeline_emulator:gpu_power_watts",
                           "Modelled GPU board power (emulator: idle plus a share of TDP that grows with "
                           "modelled memory and tensor-core utilisation), not a measurement.",
                           ["gpu", "gpu_name"], registry=reg).labels(gpu_index, gpu.name)
        self.energy = Counter("ridgeline_emulator:gpu_energy_joules",
                              "Modelled GPU energy since start (emulator), not a measurement.",
                              ["gpu", "gpu_name"], registry=reg).labels(gpu_index, gpu.name)
        Gauge("ridgeline_emulator:info", "What this emulator models (value 1).", list(emulated),
              registry=reg).labels(**emulated).set(1)
        self.lateness = Histogram("ridgeline_emulator:step_lateness_seconds",
                                  "How late the emulator's engine steps ended against the model (host load).",
                                  buckets=[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5],
                                  registry=reg)
        self.slips = Counter("ridgeline_emulator:clock_slips",
                             "Steps the emulator started late because its host fell behind the model.",
                             registry=reg)
        self.power.set(gpu.idle_w)
        self._power_ema = gpu.idle_w
        self._last_t: float | None = None

    # --- updates
    def set_state(self, running: int, waiting: int, kv_usage: float) -> None:
        self.running.set(running)
        self.waiting.set(waiting)
        self.waiting_capacity.set(waiting)
        self.kv_usage.set(kv_usage)

    def _account_idle(self, until: float) -> None:
        if self._last_t is not None and until > self._last_t:
            gap = until - self._last_t
            self.energy.inc(self.gpu.idle_w * gap)
            self._ema(self.gpu.idle_w, gap)
            self._last_t = until

    def _ema(self, watts: float, dt: float) -> None:
        a = min(1.0, dt / POWER_EMA_S)
        self._power_ema += a * (watts - self._power_ema)
        self.power.set(self._power_ema)

    def on_step(self, step: ScheduledStep, out: StepOutput, t_start: float, t_end: float, preemptions: int,
                queries: int, hits: int) -> None:
        """Counters and histograms of one finished step (times in one monotonic clock)."""
        timing = step.timing
        self._account_idle(t_start)
        if self._last_t is None:
            self._last_t = t_start
        dt = max(t_end - t_start, 0.0)
        watts = step_power_w(self.gpu, timing, self.compute_dtype)
        self.energy.inc(watts * dt)
        self._ema(watts, dt)
        self._last_t = max(self._last_t, t_end)
        if preemptions:
            self.preemptions.inc(preemptions)
        if queries:
            self.prefix_queries.inc(queries)
        if hits:
            self.prefix_hits.inc(hits)
        if out.prompt_tokens:
            self.prompt_tokens.inc(out.prompt_tokens)
        if out.generation_tokens:
            self.generation_tokens.inc(out.generation_tokens)
        self.iteration_tokens.observe(out.prompt_tokens + out.generation_tokens)
        self.flops.inc(timing.flops)
        self.read_bytes.inc(timing.read_bytes)
        self.write_bytes.inc(timing.write_bytes)

    def on_token(self, req: Request, t: float, prev_t: float | None) -> None:
        if prev_t is None:
            self.ttft.observe(max(t - req.http_time, 0.0))
        else:
            self.itl.observe(t - prev_t)

    def on_finished(self, reqs: Iterable[Request], now: float) -> None:
        for r in reqs:
            self.success[r.finish_reason or "abort"].inc()
            sched = r.queued_time if r.queued_time is not None else now
            first = r.first_token_time if r.first_token_time is not None else now
            last = r.last_token_time if r.last_token_time is not None else now
            self.e2e.observe(max(now - r.http_time, 0.0))
            self.queue.observe(max(sched - r.arrival_time, 0.0))
            self.prefill.observe(max(first - sched, 0.0))
            self.decode.observe(max(last - first, 0.0))
            self.inference.observe(max(last - sched, 0.0))
            self.req_prompt_tokens.observe(r.prompt_len)
            self.req_gen_tokens.observe(r.num_output)
            self.max_gen_tokens.observe(r.max_tokens)
            self.params_n.observe(1)
            self.params_max_tokens.observe(r.max_tokens)
            self.req_preemptions.observe(r.num_preemptions)
            if r.first_token_time is not None:
                self.prefill_computed.observe(r.prompt_len - r.cached_tokens)
                self.prompt_computed.inc(r.prompt_len - r.cached_tokens)
                if r.cached_tokens:
                    self.prompt_cache_hit.inc(r.cached_tokens)
                    self.prompt_cached.inc(r.cached_tokens)
                    self.prompt_cached_device.inc(r.cached_tokens)
            if r.num_output > 1:
                self.tpot.observe((last - first) / (r.num_output - 1))

    def idle_until(self, now: float) -> None:
        """Bring the energy counter up to `now` when no step has run for a while (called at scrape)."""
        self._account_idle(now)

    def render(self) -> bytes:
        return generate_latest(self.registry)
