"""`python -m deploy.emulator`: start the built-in vLLM emulator (an OpenAI-compatible server on loopback)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Optional

from aiohttp import web

from core.hardware.catalog import CatalogError, gpu_names, model_names
from core.hardware.formats import KV_CACHE_DTYPES, WEIGHT_FORMATS


def _json_dict(flag: str, text: Optional[str]) -> dict:
    if not text:
        return {}
    try:
        v = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"error: {flag}: not valid JSON ({exc}): {text!r}")
    if not isinstance(v, dict):
        raise SystemExit(f"error: {flag}: expected a JSON object, got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m deploy.emulator",
        description="An OpenAI-compatible server that behaves like vLLM on a modelled GPU: continuous batching, "
                    "paged KV cache, vLLM's /metrics, step times from a calibrated roofline.")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--gpu", default="h100-sxm", help=f"GPU catalogue name: {', '.join(gpu_names())}")
    ap.add_argument("--gpu-overrides", default=None, help='JSON object of GPU figures, e.g. {"mem_bw_tbps": 3.0}')
    ap.add_argument("--model", default="llama-3-8b",
                    help=f"catalogue name ({', '.join(model_names())}) or a directory holding config.json")
    ap.add_argument("--weights", default="fp16", choices=list(WEIGHT_FORMATS))
    ap.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES))
    ap.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "half"],
                    help="activation dtype; float16 with an fp8 KV cache fails on Hopper as in vLLM")
    ap.add_argument("--served-model-name", default=None)
    ap.add_argument("--max-num-seqs", type=int, default=None, help="default 256")
    ap.add_argument("--max-num-batched-tokens", type=int, default=None, help="default: vLLM's (8192 on H100)")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--max-model-len", type=int, default=None, help="default: the model's max_position_embeddings")
    ap.add_argument("--num-gpu-blocks-override", type=int, default=None, help="KV blocks of 16 tokens (for tests)")
    ap.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false")
    ap.add_argument("--eos-mean-tokens", type=float, default=0.0,
                    help="mean output length when ignore_eos is false (0: always run to max_tokens)")
    ap.add_argument("--calibration", default=None, help="JSON object overriding perf-model constants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stdout,
                        format="%(levelname)s %(asctime)s [emulator] %(message)s", datefmt="%m-%d %H:%M:%S")
    log = logging.getLogger("deploy.emulator")
    from deploy.emulator.server import EmulatorConfig, StartupError, build, make_app

    for name, v in (("--max-num-seqs", args.max_num_seqs), ("--max-num-batched-tokens", args.max_num_batched_tokens),
                    ("--max-model-len", args.max_model_len), ("--num-gpu-blocks-override", args.num_gpu_blocks_override)):
        if v is not None and v <= 0:
            raise SystemExit(f"error: {name} must be positive, got {v}")
    cfg = EmulatorConfig(
        gpu=args.gpu, model=args.model, weights=args.weights, kv_cache_dtype=args.kv_cache_dtype,
        served_model_name=args.served_model_name, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len, seed=args.seed,
        gpu_overrides=_json_dict("--gpu-overrides", args.gpu_overrides),
        calibration=_json_dict("--calibration", args.calibration), enable_prefix_caching=args.enable_prefix_caching,
        eos_mean_tokens=args.eos_mean_tokens, num_gpu_blocks_override=args.num_gpu_blocks_override)
    t0 = time.monotonic()
    try:
        emu = build(cfg)
    except (StartupError, CatalogError, ValueError) as exc:
        log.error("engine failed to start: %s", exc)
        return 1
    for line in emu.log_lines:
        log.info("%s", line)
    app = make_app(emu)
    log.info("Starting vLLM API server 0 on http://%s:%d (emulator, ready in %.2f s)", args.host, args.port,
             time.monotonic() - t0)
    log.info("Application startup complete.")
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True,
                shutdown_timeout=2.0)
    log.info("Shutting down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
