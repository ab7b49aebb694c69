"""Soak: a long sweep up to 512 concurrent streams with 1% injected faults; nothing lost, memory flat.

The sweep runs in this process, exactly as `ridgeline run` runs it, against the fault server
(testdoubles/fault_server.py, started through ridgeline's launcher), which fails a given fraction of
requests in assorted ways (HTTP 500 and 429, dropped sockets, error events, truncated and
malformed events). With `--upstream emulator` the fault server stands in front of the emulator
(modelled H100, Llama-3-8B): the requests that draw no fault are batched, queued and streamed by it,
so the soak exercises continuous batching at 512 streams (256 running, the rest waiting). It
checks, per step and in all:

- every request sent is recorded once: manifest sent == recorded == rows in the step's Parquet
  file, and the total equals what the server says it received;
- every injected fault shows up as an error record, and nothing else does;
- the resident memory of this process, sampled twice a second, does not grow with the number of
  requests: its level after each step at the top concurrency stays within a bound of the first.

    python benchmarks/soak.py                     # the published soak (docs/robustness.md)
    python benchmarks/soak.py --upstream emulator # the same through the emulator
    python benchmarks/soak.py --levels 1 64 256 --duration 4 --repeats 1 --min-requests 2000

It writes soak.json (figures and the memory series) into the run directory and prints a table.
"""

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gevent  # noqa: E402
import psutil  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from core.plan import parse_plan  # noqa: E402
from deploy import launcher
from loadtest.runner import Sweep, new_run_dir  # noqa: E402
from testdoubles import fault_server  # noqa: E402

MB = 1024 * 1024


@dataclass
class SoakConfig:
    levels: list[int] = field(default_factory=lambda: [1, 16, 64, 256, 512])
    repeats: int = 2
    warmup_s: float = 2.0
    duration_s: float = 15.0
    drain_s: float = 30.0
    events: int = 16  # token events per request
    ttft_ms: float = 50.0
    gap_ms: float = 50.0
    error_rate: float = 0.01
    seed: int = 1
    min_requests: int = 20000
    rss_growth_mb: float = 48.0  # allowed growth of the post-step RSS at the top level, first to last
    out: str = str(ROOT / "results")
    upstream: Optional[str] = None  # "emulator": the fault server passes the rest of the requests to it


class RssSampler:
    """This process's resident memory (and the server's), every `every_s` seconds, in a greenlet."""

    def __init__(self, server_pid: Optional[int], every_s: float = 0.5):
        self.me = psutil.Process()
        self.server = psutil.Process(server_pid) if server_pid else None
        self.every_s = every_s
        self.t0 = time.time()
        self.samples: list[tuple[float, float, Optional[float]]] = []  # (s since start, ours MB, server MB)
        self._g = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.sample()
            gevent.sleep(self.every_s)

    def sample(self) -> float:
        ours = self.me.memory_info().rss / MB
        srv = None
        if self.server is not None:
            try:
                srv = self.server.memory_info().rss / MB
            except psutil.Error:
                srv = None
        self.samples.append((round(time.time() - self.t0, 2), round(ours, 1), round(srv, 1) if srv else None))
        return ours

    def stop(self) -> None:
        self._g.kill(block=True)

    @property
    def peak_mb(self) -> float:
        return max(s[1] for s in self.samples)


def _plan(cfg: SoakConfig, port: int):
    d = {
        "name": "soak", "backend": "external",
        "variants": [{"name": "fault", "url": f"http://127.0.0.1:{port}"}],
        "scenario": {"prompt_tokens": 32, "output_tokens": cfg.events},
        "sweep": {"concurrency": list(cfg.levels), "repeats": cfg.repeats, "warmup_s": cfg.warmup_s,
                  "duration_s": cfg.duration_s, "drain_s": cfg.drain_s, "ramp_s": 0.5},
        "timeouts": {"connect_s": 10, "first_token_s": 60, "total_s": 120},
        "scrape": {"interval_s": 2.0},
        "output_dir": cfg.out,
    }
    return parse_plan(yaml.safe_dump(d), "soak plan")


def _emulator(log_dir: Path) -> launcher.Server:
    """The emulator the fault server forwards to (served name "fault", as the plan's requests say)."""
    port = launcher.free_port()
    cmd = launcher.ServerCommand("emulator", [sys.executable, "-m", "deploy.emulator", "--port", str(port),
                                              "--served-model-name", "fault", "--log-level", "warning"],
                                 port=port, startup_timeout_s=60, cwd=str(ROOT))
    log_dir.mkdir(parents=True, exist_ok=True)
    return launcher.start(cmd, log_dir / "emulator.log")


def soak(cfg: SoakConfig, quiet: bool = False) -> dict[str, Any]:
    """Run the soak; returns the figures (and writes them to <run>/soak.json)."""
    if cfg.upstream not in (None, "emulator"):
        raise SystemExit(f"--upstream {cfg.upstream!r}: only 'emulator' is known")
    port = launcher.free_port()
    plan = _plan(cfg, port)
    run = new_run_dir(plan)
    upstream = _emulator(run.path / "logs") if cfg.upstream == "emulator" else None
    extra = ["--seed", str(cfg.seed)] + (["--upstream", upstream.command.url] if upstream else [])
    # through the emulator a request streams as many events as it asks tokens (max_tokens), at the model's pace
    cmd = fault_server.command(port, events=cfg.events, ttft_ms=cfg.ttft_ms, gap_ms=cfg.gap_ms,
                               error_rate=cfg.error_rate, extra=extra, variant="fault")
    after_step: list[dict[str, Any]] = []
    state: dict[str, Any] = {"sampler": None, "seen": 0}

    def on_progress(p) -> None:  # noqa: ANN001
        srv = sweep._servers.get("fault")
        if state["sampler"] is None and srv is not None:
            state["sampler"] = RssSampler(srv.pid)
        while state["seen"] < len(p.finished):
            f = p.finished[state["seen"]]
            state["seen"] += 1
            rss = state["sampler"].sample() if state["sampler"] else psutil.Process().memory_info().rss / MB
            after_step.append({"step": f["step"], "concurrency": f["concurrency"], "requests": f["requests"],
                               "errors": f["errors"], "tok_s": round(f["tok_s"], 1), "rss_mb": round(rss, 1)})
            # the server's own counts, read while it still runs (it is stopped after the last step)
            try:
                state["stats"] = json.loads(urllib.request.urlopen(cmd.url + "/admin/stats", timeout=10).read())
            except OSError:
                pass
            if not quiet:
                print(f"step {f['step']:2d}  c={f['concurrency']:<4} {f['requests']:6d} requests "
                      f"{f['errors']:4d} errors  {f['tok_s']:8.0f} tok/s  rss {rss:6.1f} MB", flush=True)

    sweep = Sweep(plan, run, commands=[cmd], on_progress=on_progress)
    t0 = time.time()
    try:
        sweep.execute()
    finally:
        sweep.stop_all()
        if upstream is not None:
            launcher.stop(upstream)
        if state["sampler"] is not None:
            state["sampler"].stop()
    wall = time.time() - t0
    return _check(cfg, run, after_step, state["sampler"], wall, state.get("stats"))


def _check(cfg: SoakConfig, run, after_step, sampler, wall, stats) -> dict[str, Any]:  # noqa: ANN001
    man = run.read_manifest()
    problems: list[str] = []
    total_sent = total_rows = 0
    for s in man["steps"]:
        rows = pq.read_metadata(run.requests_path(s["variant"], s["step"])).num_rows
        total_sent += s["sent"]
        total_rows += rows
        if not (s["sent"] == s["recorded"] == rows):
            problems.append(f"step {s['step']}: sent {s['sent']}, recorded {s['recorded']}, rows {rows}")
        if s["status"] != "complete":
            problems.append(f"step {s['step']} is {s['status']}: {s.get('error')}")
    df = run.read_requests(columns=["status", "error_kind", "http_status", "step"])
    errors = int((df.status == "error").sum())
    cancelled = int((df.status == "cancelled").sum())
    injected = sum(v for k, v in stats.get("faults", {}).items() if k != "ok") if stats else None
    if stats is None:
        problems.append("the server's own counts could not be read")
    else:
        if stats["requests"] != total_rows:
            problems.append(f"the server received {stats['requests']} requests, {total_rows} were recorded")
        if injected != errors:
            problems.append(f"the server injected {injected} faults, {errors} error records")
    if total_rows < cfg.min_requests:
        problems.append(f"only {total_rows} requests (wanted at least {cfg.min_requests})")
    top = max(cfg.levels)
    tops = [a["rss_mb"] for a in after_step if a["concurrency"] == top]
    growth = (tops[-1] - tops[0]) if len(tops) >= 2 else 0.0
    if growth > cfg.rss_growth_mb:
        problems.append(f"RSS after the c={top} steps grew by {growth:.1f} MB (bound {cfg.rss_growth_mb} MB)")
    out = {
        "config": asdict(cfg),
        "run": str(run.path),
        "wall_s": round(wall, 1),
        "steps": len(man["steps"]),
        "requests_sent": total_sent,
        "requests_recorded": total_rows,
        "errors": errors,
        "cancelled": cancelled,
        "error_fraction": round(errors / max(total_rows, 1), 4),
        "error_kinds": df[df.status == "error"].error_kind.value_counts().to_dict(),
        "server_received": (stats or {}).get("requests"),
        "server_injected": injected,
        "rss_peak_mb": round(sampler.peak_mb, 1) if sampler else None,
        "rss_after_top_steps_mb": tops,
        "rss_growth_top_mb": round(growth, 1),
        "client_cpu_max": max((s.get("client_cpu_max") or 0) for s in man["steps"]),
        "after_step": after_step,
        "rss_series": sampler.samples if sampler else [],
        "warnings": man.get("warnings", []),
        "problems": problems,
        "ok": not problems,
    }
    (run.path / "soak.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    d = SoakConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=d.levels)
    ap.add_argument("--repeats", type=int, default=d.repeats)
    ap.add_argument("--duration", type=float, default=d.duration_s, help="measured seconds per step")
    ap.add_argument("--events", type=int, default=d.events)
    ap.add_argument("--gap-ms", type=float, default=d.gap_ms)
    ap.add_argument("--error-rate", type=float, default=d.error_rate)
    ap.add_argument("--min-requests", type=int, default=d.min_requests)
    ap.add_argument("--rss-growth-mb", type=float, default=d.rss_growth_mb)
    ap.add_argument("--out", default=d.out, help="results directory root")
    ap.add_argument("--upstream", choices=["emulator"], default=None,
                    help="put the fault server in front of the emulator instead of streaming by itself")
    a = ap.parse_args(argv)
    cfg = SoakConfig(levels=a.levels, repeats=a.repeats, duration_s=a.duration, events=a.events, gap_ms=a.gap_ms,
                     error_rate=a.error_rate, min_requests=a.min_requests, rss_growth_mb=a.rss_growth_mb, out=a.out,
                     upstream=a.upstream)
    r = soak(cfg)
    print(json.dumps({k: v for k, v in r.items() if k not in ("rss_series", "after_step", "config")}, indent=1))
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
