"""How much CPU the emulator needs to hold many concurrent streams, and how well it keeps time.

Starts the emulator (modelled H100, Llama-3-8B fp16), drives C closed-loop streaming clients from a
separate process for a fixed time at each C, and reports the emulator's own CPU use (its process's
CPU seconds over wall seconds), how late its engine steps ended against the model, and the measured
output tokens/s against what the same scheduler predicts in simulated time.

    python benchmarks/emulator_streams.py [--concurrency 64 256 512] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
import psutil  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from deploy import launcher  # noqa: E402

PROMPT_TOKENS = 128
OUTPUT_TOKENS = 256


async def _client(url: str, concurrency: int, seconds: float, out: dict) -> None:
    body = {"model": "m", "prompt": list(range(1000, 1000 + PROMPT_TOKENS)), "max_tokens": OUTPUT_TOKENS,
            "ignore_eos": True, "stream": True}
    start = time.perf_counter()
    stop = start + seconds
    last_event = start
    events = 0
    done = 0
    itl: list[float] = []
    timeout = aiohttp.ClientTimeout(total=None)
    conn = aiohttp.TCPConnector(limit=0)

    async with aiohttp.ClientSession(timeout=timeout, connector=conn) as s:
        async def user(i: int) -> None:
            nonlocal events, done, last_event
            while time.perf_counter() < stop:
                body["prompt"][0] = i * 100_000 + done  # distinct prompts: no prefix-cache hits
                async with s.post(url + "/v1/completions", json=body) as r:
                    last = None
                    async for line in r.content:
                        if line.startswith(b"data: {"):
                            now = time.perf_counter()
                            events += 1
                            if last is not None and len(itl) < 200_000:
                                itl.append(now - last)
                            last = now
                last_event = max(last_event, last or start)
                done += 1

        await asyncio.gather(*(user(i) for i in range(concurrency)))
    itl.sort()
    out.update(events=events, done=done, itl_p50=itl[len(itl) // 2] if itl else 0.0, span=last_event - start)


def _client_proc(url: str, concurrency: int, seconds: float, q) -> None:
    out: dict = {}
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    asyncio.run(_client(url, concurrency, seconds, out))
    out["wall"] = time.perf_counter() - t0
    out["cpu"] = time.process_time() - cpu0
    q.put(out)


def _metric(url: str, name: str) -> dict:
    text = urllib_get(url + "/metrics")
    for fam in text_string_to_metric_families(text):
        if fam.name == name:
            return {s.name + json.dumps(s.labels, sort_keys=True): s.value for s in fam.samples}
    return {}


def urllib_get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _predicted(concurrency: int, requests: int) -> float:
    """Tokens/s of the same closed loop (same request count) in simulated time."""
    from deploy.emulator.sim import run_point

    r = run_point("fp16", "auto", concurrency, prompt_len=PROMPT_TOKENS, output_len=OUTPUT_TOKENS,
                  num_prompts=requests)
    return r.output_throughput


def run(concurrencies: list[int], seconds: float, log_dir: Path, cpu: int | None = 0) -> list[dict]:
    rows = []
    for c in concurrencies:
        port = launcher.free_port()
        pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
        cmd = launcher.ServerCommand(f"emu-c{c}", pin + [sys.executable, "-m", "deploy.emulator", "--port", str(port),
                                                         "--served-model-name", "m"], port=port, startup_timeout_s=60)
        srv = launcher.start(cmd, log_dir / f"emulator-c{c}.log")
        try:
            proc = psutil.Process(srv.pid)
            q: mp.Queue = mp.Queue()
            cli = mp.Process(target=_client_proc, args=(srv.url, c, seconds, q))
            t0 = time.perf_counter()
            cpu0 = proc.cpu_times()
            cli.start()
            res = q.get(timeout=seconds + 120)
            cli.join()
            wall = time.perf_counter() - t0
            cpu1 = proc.cpu_times()
            server_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall
            late = _metric(srv.url, "ridgeline_emulator:step_lateness_seconds")
            count = sum(v for k, v in late.items() if k.startswith("ridgeline_emulator:step_lateness_seconds_count"))
            total = sum(v for k, v in late.items() if k.startswith("ridgeline_emulator:step_lateness_seconds_sum"))
            le1 = sum(v for k, v in late.items() if '"le": "0.002"' in k)
            slips = sum(_metric(srv.url, "ridgeline_emulator:clock_slips").values())
            measured = res["events"] / res["span"]
            predicted = _predicted(c, res["done"])
            load = os.getloadavg()[0]
            rows.append({"concurrency": c, "server_cpu": server_cpu, "load": load,
                         "cpu_us_per_token": 1e6 * server_cpu * wall / max(res["events"], 1), "client_cpu": res["cpu"] / res["wall"],
                         "events_per_s": measured, "predicted_tok_s": predicted, "requests": res["done"],
                         "itl_p50_ms": res["itl_p50"] * 1e3, "steps": count,
                         "mean_late_ms": 1e3 * total / count if count else 0.0,
                         "late_le_2ms": le1 / count if count else 0.0, "slips": slips})
        finally:
            launcher.stop(srv)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 512])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--log-dir", default="/tmp/emulator-streams")
    ap.add_argument("--cpu", type=int, default=0, help="pin the emulator to this CPU (-1: no pinning)")
    a = ap.parse_args()
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = run(a.concurrency, a.seconds, log_dir, None if a.cpu < 0 else a.cpu)
    print(f"host: {os.cpu_count()} CPUs; emulator pinned to CPU {a.cpu}; client in its own process")
    print("| streams | emulator CPU (one core) | CPU us per token | client CPU | tokens/s measured | "
          "tokens/s simulated | error | median ITL ms | steps | mean step lateness ms | steps <= 2 ms late | "
          "clock slips | host load (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        err = 100 * (r["events_per_s"] / r["predicted_tok_s"] - 1)
        print(f"| {r['concurrency']} | {100 * r['server_cpu']:.0f}% | {r['cpu_us_per_token']:.1f} | "
              f"{100 * r['client_cpu']:.0f}% | {r['events_per_s']:.0f} | {r['predicted_tok_s']:.0f} | {err:+.1f}% | "
              f"{r['itl_p50_ms']:.1f} | {r['steps']:.0f} | {r['mean_late_ms']:.2f} | {100 * r['late_le_2ms']:.0f}% | "
              f"{r['slips']:.0f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
