"""The emulator's HTTP face: vLLM's OpenAI-compatible endpoints on aiohttp.

POST /v1/completions and /v1/chat/completions (streaming and not), GET /v1/models, /health,
/version and /metrics. Bodies are validated the way vLLM does it and bad ones get vLLM's 400 error
body. Prompt tokens are counted without a tokenizer: a token-id list counts its ids; text counts one
token per run of up to 6 non-space characters (a common short word is one token, a long word
several), and a chat request adds 4 tokens per message for the role markers plus 5 for the
template's start and the assistant header.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from aiohttp import web

from core.errors import RidgelineError
from core.hardware.catalog import GPUSpec, ModelSpec, get_gpu, load_model
from core.hardware.formats import FORMATS, INT4_FORMATS, KV_CACHE_DTYPES, WEIGHT_FORMATS, kv_bytes
from core.hardware.roofline import activation_reserve_bytes, compute_dtype, kv_capacity_tokens
from deploy.emulator.engine import BLOCK_SIZE, EngineConfig, EngineCore, Request
from deploy.emulator.metrics import CONTENT_TYPE_LATEST, EmulatorMetrics
from deploy.emulator.perf_model import PerfModel, calibration_for
from deploy.emulator.runtime import AsyncEngine
from deploy.emulator.sim import default_limits
from deploy.emulator.streams import Stream, error_response, set_fingerprint

log = logging.getLogger("deploy.emulator")

EMULATED_VLLM_VERSION = "0.24.0"  # the release the H100 anchors were measured with
EMULATOR_MARKER = "ridgeline-emulator"
_PIECE = re.compile(r"\S{1,6}")
CHAT_TOKENS_PER_MESSAGE = 4
CHAT_TOKENS_EXTRA = 5


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class BadRequest(Exception):
    def __init__(self, message: str, err_type: str = "BadRequestError", code: int = 400,
                 param: Optional[str] = None):
        super().__init__(message)
        self.message, self.err_type, self.code, self.param = message, err_type, code, param


def text_pieces(text: str) -> list[str]:
    """The emulator's tokens of a text: runs of up to 6 non-space characters."""
    return _PIECE.findall(text)


def block_hashes(tokens: list, block_size: int = BLOCK_SIZE) -> tuple[int, ...]:
    """Chained hashes of the full blocks of a token sequence (a block's hash covers its whole prefix)."""
    out = []
    h = 0
    for i in range(len(tokens) // block_size):
        h = hash((h, tuple(tokens[i * block_size:(i + 1) * block_size])))
        out.append(h)
    return tuple(out)


@dataclass
class EmulatorConfig:
    """Everything the emulator was started with (the CLI's flags)."""

    gpu: str = "h100-sxm"
    model: str = "llama-3-8b"
    weights: str = "fp16"
    kv_cache_dtype: str = "auto"
    served_model_name: Optional[str] = None
    dtype: str = "auto"
    max_num_seqs: Optional[int] = None
    max_num_batched_tokens: Optional[int] = None
    gpu_memory_utilization: float = 0.9
    max_model_len: Optional[int] = None
    seed: int = 0
    gpu_overrides: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, float] = field(default_factory=dict)
    enable_prefix_caching: bool = True
    eos_mean_tokens: float = 0.0  # 0: no end-of-sequence, every request runs to max_tokens
    num_gpu_blocks_override: Optional[int] = None


class StartupError(RidgelineError, RuntimeError):
    """The emulated engine refuses to start, with the message vLLM would give."""


@dataclass
class Emulator:
    """The assembled emulator: catalogue entries, engine, metrics and the startup log it prints."""

    cfg: EmulatorConfig
    gpu: GPUSpec
    model: ModelSpec
    served_name: str
    max_model_len: int
    dtype: str
    core: EngineCore
    engine: AsyncEngine
    metrics: EmulatorMetrics
    log_lines: list[str]


def _resolve_dtype(cfg: EmulatorConfig) -> str:
    if cfg.dtype not in ("auto", "float16", "bfloat16", "half"):
        raise StartupError(f"--dtype {cfg.dtype}: one of auto, float16, bfloat16")
    if cfg.dtype == "half":
        return "float16"
    if cfg.dtype != "auto":
        return cfg.dtype
    if cfg.weights == "bf16" or cfg.weights == "fp8" or cfg.kv_cache_dtype.startswith("fp8"):
        return "bfloat16"
    return "float16"


def quantization_name(weights: str) -> Optional[str]:
    return FORMATS[weights].vllm_method if weights in FORMATS else None


def kernel_line(gpu: GPUSpec, weights: str) -> Optional[str]:
    """The kernel-selection log line vLLM prints for quantized weights on this GPU's architecture."""
    if weights in INT4_FORMATS:
        kernel = "MacheteLinearKernel" if gpu.arch == "hopper" else "MarlinLinearKernel"
        method = {"awq": "AutoAWQMarlinLinearMethod", "w4a16": "CompressedTensorsWNA16"}.get(weights,
                                                                                           "AutoGPTQLinearMethod")
        return f"Using {kernel} for {method}"
    if weights == "fp8":
        if not gpu.supports("fp8"):
            return ("Your GPU does not have native support for FP8 computation but FP8 quantization is being used. "
                    "Weight-only FP8 compression will be used leveraging the Marlin kernel.")
        return "Using CutlassFP8ScaledMMLinearKernel for Fp8LinearMethod"
    return None


def build(cfg: EmulatorConfig) -> Emulator:
    """Size the engine the way vLLM does and prepare the startup log; raise StartupError where vLLM would fail."""
    gpu = get_gpu(cfg.gpu, cfg.gpu_overrides or None)
    model = load_model(cfg.model)
    if cfg.weights not in WEIGHT_FORMATS:
        raise StartupError(f"--weights {cfg.weights}: one of {', '.join(WEIGHT_FORMATS)}")
    if cfg.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise StartupError(f"--kv-cache-dtype {cfg.kv_cache_dtype}: one of {', '.join(KV_CACHE_DTYPES)}")
    dtype = _resolve_dtype(cfg)
    if cfg.kv_cache_dtype.startswith("fp8") and dtype == "float16" and gpu.arch == "hopper":
        # what vLLM's attention backend raises on Hopper (see notes/real-vllm-on-h100.md)
        raise StartupError("For FP16/BF16 input, output must have the same dtype as inputs. "
                           "For FP8 input, output must have dtype BF16")
    max_model_len = cfg.max_model_len or model.max_position
    seqs_d, tokens_d = default_limits(gpu)
    max_num_seqs = cfg.max_num_seqs or seqs_d
    max_batched = cfg.max_num_batched_tokens or max(tokens_d, 0)
    if not 0 < cfg.gpu_memory_utilization <= 1:
        raise StartupError(f"--gpu-memory-utilization {cfg.gpu_memory_utilization}: must be in (0, 1]")
    cal = calibration_for(gpu.name, cfg.calibration)
    weight_bytes = model.weight_bytes(cfg.weights)
    budget = gpu.memory_bytes * cfg.gpu_memory_utilization
    if weight_bytes >= budget:
        raise StartupError(
            f"CUDA out of memory: the {model.name} weights in {cfg.weights} need {weight_bytes / 1024**3:.2f} GiB but "
            f"{gpu.name} offers {budget / 1024**3:.2f} GiB at gpu_memory_utilization={cfg.gpu_memory_utilization}")
    kv_tokens = kv_capacity_tokens(model, gpu, cfg.weights, cfg.kv_cache_dtype, cfg.gpu_memory_utilization,
                                   max_num_batched_tokens=max_batched, max_num_seqs=max_num_seqs)
    num_blocks = cfg.num_gpu_blocks_override or kv_tokens // BLOCK_SIZE
    kv_tokens = num_blocks * BLOCK_SIZE
    if num_blocks <= 0:
        raise StartupError("No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
                           "when initializing the engine.")
    if max_model_len > kv_tokens:
        raise StartupError(
            f"The model's max seq len ({max_model_len}) is larger than the maximum number of tokens that can be "
            f"stored in KV cache ({kv_tokens}). Try increasing `gpu_memory_utilization` or decreasing "
            f"`max_model_len` when initializing the engine.")
    served = cfg.served_model_name or cfg.model
    set_fingerprint(f"vllm-{EMULATED_VLLM_VERSION}-"
                    + hashlib.sha256(repr(sorted(vars(cfg).items())).encode()).hexdigest()[:8])
    perf = PerfModel(model, gpu, cfg.weights, cfg.kv_cache_dtype, cal)
    core = EngineCore(EngineConfig(num_gpu_blocks=num_blocks, max_num_seqs=max_num_seqs,
                                   max_num_batched_tokens=max_batched, max_model_len=max_model_len,
                                   enable_prefix_caching=cfg.enable_prefix_caching), perf, seed=cfg.seed)
    kv_dtype = cfg.kv_cache_dtype
    cache_info = {
        "block_size": str(BLOCK_SIZE), "cache_dtype": kv_dtype, "gpu_memory_utilization": str(cfg.gpu_memory_utilization),
        "num_gpu_blocks": str(num_blocks), "num_cpu_blocks": "None", "enable_prefix_caching": str(cfg.enable_prefix_caching),
        "prefix_caching_hash_algo": "sha256", "sliding_window": "None", "is_attention_free": "False",
        "num_gpu_blocks_override": str(cfg.num_gpu_blocks_override), "kv_cache_memory_bytes": "None",
    }
    emulated = {"gpu": gpu.name, "model": model.name, "weights": cfg.weights, "kv_cache_dtype": kv_dtype,
                "vllm_version": EMULATED_VLLM_VERSION}
    metrics = EmulatorMetrics(served, max_model_len, gpu, cache_info, emulated,
                              compute_dtype=compute_dtype(cfg.weights, gpu))
    engine = AsyncEngine(core, metrics)
    gib = 1024**3
    kv_mem = kv_tokens * model.kv_bytes_per_token(kv_bytes(kv_dtype))
    lines = [
        f"ridgeline emulator: modelled {gpu.name}, not a real GPU; emulating vLLM {EMULATED_VLLM_VERSION} "
        f"serving {model.name} ({cfg.weights} weights, kv_cache_dtype={kv_dtype})",
        f"vLLM API server version {EMULATED_VLLM_VERSION} (emulated)",
        f"Resolved architecture: {model.architecture}",
        f"Using max model len {max_model_len}",
        f"Chunked prefill is enabled with max_num_batched_tokens={max_batched}.",
        (f"Initializing a V1 LLM engine (v{EMULATED_VLLM_VERSION}) with config: model='{cfg.model}', "
         f"speculative_config=None, tokenizer='{cfg.model}', dtype=torch.{dtype}, max_seq_len={max_model_len}, "
         f"download_dir=None, load_format=dummy, tensor_parallel_size=1, pipeline_parallel_size=1, "
         f"quantization={quantization_name(cfg.weights)}, enforce_eager=False, kv_cache_dtype={kv_dtype}, "
         f"device_config=cuda, seed={cfg.seed}, served_model_name={served}, "
         f"enable_prefix_caching={cfg.enable_prefix_caching}, enable_chunked_prefill=True"),
    ]
    kl = kernel_line(gpu, cfg.weights)
    if kl:
        lines.append(kl)
    lines += [
        f"Model loading took {weight_bytes / gib:.4f} GiB memory and 0.500000 seconds",
        f"Available KV cache memory: {kv_mem / gib:.2f} GiB",
        (f"GPU KV cache size: {kv_tokens:,} tokens, Maximum concurrency for {max_model_len:,} tokens per request: "
         f"{kv_tokens / max_model_len:.2f}x"),
        f"Engine 000: vllm cache_config_info with initialization after num_gpu_blocks is: {num_blocks}",
        f"activation and non-torch reserve: {activation_reserve_bytes(model, max_batched, max_num_seqs) / gib:.2f} GiB "
        f"(modelled)",
    ]
    return Emulator(cfg, gpu, model, served, max_model_len, dtype, core, engine, metrics, lines)


# --- request parsing -------------------------------------------------------------------------------

def _int(body: dict, key: str, default: Optional[int], lo: int) -> Optional[int]:
    v = body.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"'{key}' must be an integer, got {v!r}", param=key)
    if v < lo:
        raise BadRequest(f"'{key}' must be at least {lo}, got {v}", param=key)
    return v


def _bool(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BadRequest(f"'{key}' must be a boolean, got {v!r}", param=key)
    return v


def _prompt_tokens(prompt: Any) -> list:
    """The tokens of a completions prompt: ids as given, or the text's pieces."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        toks = text_pieces(prompt)
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        toks = list(prompt)
    elif isinstance(prompt, list):
        raise BadRequest("'prompt': the emulator serves one prompt per request (a string or a list of token ids)",
                         param="prompt")
    else:
        raise BadRequest(f"'prompt' must be a string or a list of token ids, got {type(prompt).__name__}",
                         param="prompt")
    if not toks:
        raise BadRequest("The prompt cannot be empty.", param="prompt")
    return toks


def _message_text(msg: Any, i: int) -> str:
    if not isinstance(msg, dict):
        raise BadRequest(f"'messages[{i}]' must be an object with 'role' and 'content'", param="messages")
    if not isinstance(msg.get("role"), str):
        raise BadRequest(f"'messages[{i}].role' must be a string", param="messages")
    content = msg.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            else:
                raise BadRequest(f"'messages[{i}].content': only text parts are supported by the emulator",
                                 param="messages")
        return "\n".join(parts)
    raise BadRequest(f"'messages[{i}].content' must be a string or a list of parts", param="messages")


def _chat_tokens(messages: Any) -> list:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    toks: list = ["<bos>"]
    for i, m in enumerate(messages):
        toks += [f"<{m.get('role') if isinstance(m, dict) else ''}>"] * CHAT_TOKENS_PER_MESSAGE
        toks += text_pieces(_message_text(m, i))
    toks += ["<assistant>"] * (CHAT_TOKENS_EXTRA - 1)
    return toks


class Handlers:
    """The HTTP endpoints of one emulator."""

    def __init__(self, emu: Emulator):
        self.emu = emu
        self._n = 0
        self._rng = random.Random(emu.cfg.seed)

    async def _json(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def _check_model(self, body: dict) -> None:
        name = body.get("model")
        if name is not None and name != self.emu.served_name:
            raise BadRequest(f"The model `{name}` does not exist.", "NotFoundError", 404, "model")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    def _parse(self, body: dict, chat: bool) -> tuple[list, int, int, bool, bool, Optional[int]]:
        self._check_model(body)
        if chat:
            toks = _chat_tokens(body.get("messages"))
        else:
            if "prompt" not in body:
                raise BadRequest("'prompt' is required", param="prompt")
            toks = _prompt_tokens(body["prompt"])
        n = _int(body, "n", 1, 1)
        if n != 1:
            raise BadRequest("'n': the emulator generates one choice per request (n=1)", param="n")
        max_len = self.emu.max_model_len
        if len(toks) > max_len:
            raise BadRequest(f"This model's maximum context length is {max_len} tokens. However, your prompt "
                             f"contains {len(toks)} input tokens, which exceeds this limit even without any output "
                             f"tokens. Please reduce the length of the input prompt.", param="input_tokens")
        key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = _int(body, key, None, 1)
        if max_tokens is None:
            max_tokens = (max_len - len(toks)) if chat else 16
        if len(toks) + max_tokens > max_len:
            raise BadRequest(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{len(toks) + max_tokens} tokens ({len(toks)} in the messages, {max_tokens} in the completion). "
                f"Please reduce the length of the messages or completion.", param=key)
        min_tokens = _int(body, "min_tokens", 0, 0) or 0
        if min_tokens > max_tokens:
            raise BadRequest(f"min_tokens must be less than or equal to max_tokens={max_tokens}, got {min_tokens}.",
                             param="min_tokens")
        stream = _bool(body, "stream")
        opts = body.get("stream_options")
        include_usage = False
        if opts is not None:
            if not stream:
                raise BadRequest("Stream options can only be defined when `stream=True`.", param="stream_options")
            if not isinstance(opts, dict):
                raise BadRequest("'stream_options' must be an object", param="stream_options")
            include_usage = _bool(opts, "include_usage")
        ignore_eos = _bool(body, "ignore_eos")
        stop_at = None
        if not ignore_eos and self.emu.cfg.eos_mean_tokens > 0:
            # geometric output length with the configured mean, never before min_tokens
            p = 1.0 / self.emu.cfg.eos_mean_tokens
            stop_at = max(min_tokens, 1 + int(math.log(1.0 - self._rng.random()) / math.log(1.0 - p))) \
                if p < 1 else max(min_tokens, 1)
        return toks, max_tokens, min_tokens, stream, include_usage, stop_at

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await self._json(request)
            toks, max_tokens, min_tokens, stream, include_usage, stop_at = self._parse(body, chat)
        except BadRequest as e:
            return error_response(e.message, e.err_type, e.code, e.param)
        emu = self.emu
        self._n += 1
        req = Request(request_id=str(self._n), prompt_len=len(toks), max_tokens=max_tokens, arrival_time=0.0,
                      block_hashes=block_hashes(toks) if emu.cfg.enable_prefix_caching else (),
                      min_tokens=min_tokens, stop_at=stop_at)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        resp: Optional[web.StreamResponse] = None
        if stream:
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                           "Cache-Control": "no-cache"})
            await resp.prepare(request)
        st = Stream(resp, chat, emu.served_name, len(toks), stream, include_usage, emu.cfg.seed * 1_000_003 + self._n,
                    done)
        req.sink = st
        st.on_broken = lambda: emu.engine.abort(req)
        emu.engine.submit(req)
        try:
            await done
        except asyncio.CancelledError:
            emu.engine.abort(req)
            raise
        if stream:
            if not st.broken:
                try:
                    await resp.write_eof()
                except (ConnectionError, RuntimeError):
                    pass
            return resp
        return web.json_response(st.body(), dumps=_compact)

    async def models(self, request: web.Request) -> web.Response:
        now = int(time.time())
        card = {"id": self.emu.served_name, "object": "model", "created": now, "owned_by": "vllm",
                "root": self.emu.cfg.model, "parent": None, "max_model_len": self.emu.max_model_len,
                "permission": [{"id": f"modelperm-{self._rng.getrandbits(64):016x}", "object": "model_permission",
                                "created": now, "allow_create_engine": False, "allow_sampling": True,
                                "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                                "allow_fine_tuning": False, "organization": "*", "group": None,
                                "is_blocking": False}]}
        return web.json_response({"object": "list", "data": [card]}, dumps=_compact)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def version(self, request: web.Request) -> web.Response:
        e = self.emu
        return web.json_response({"version": EMULATED_VLLM_VERSION, "emulator": EMULATOR_MARKER,
                                  "emulated": {"gpu": e.gpu.name, "model": e.model.name, "weights": e.cfg.weights,
                                               "kv_cache_dtype": e.cfg.kv_cache_dtype}}, dumps=_compact)

    async def metrics(self, request: web.Request) -> web.Response:
        self.emu.metrics.idle_until(self.emu.engine.now())
        return web.Response(body=self.emu.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def not_allowed(self, request: web.Request) -> web.Response:
        return error_response(f"Method {request.method} not allowed for {request.path}", "MethodNotAllowed", 405)


def make_app(emu: Emulator) -> web.Application:
    h = Handlers(emu)
    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/completions", h.completions)
    app.router.add_post("/v1/chat/completions", h.chat)
    app.router.add_get("/v1/models", h.models)
    app.router.add_get("/health", h.health)
    app.router.add_get("/version", h.version)
    app.router.add_get("/metrics", h.metrics)

    async def on_startup(app: web.Application) -> None:
        emu.engine.start()

    async def on_cleanup(app: web.Application) -> None:
        await emu.engine.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
