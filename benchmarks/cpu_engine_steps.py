"""How much the real CPU engine moves by itself: one step swept back to back, what a scrape costs, and
how steady the CPU under it is.

The cross-check compares two clients reading the same server seconds apart; whether they can agree
within 5% depends first on how much one client reading the same step twice differs. Three measures,
each on tests/support's tiny bf16 model with the host split (server.cpus):

    python benchmarks/cpu_engine_steps.py steps --repeats 6 --scrape 10     # one step 6 times, sd
    python benchmarks/cpu_engine_steps.py steps --repeats 6 --scrape 1
    python benchmarks/cpu_engine_steps.py steps --repeats 6 --scrape 600    # scrapes at the edges only
    python benchmarks/cpu_engine_steps.py steps --repeats 6 --executor uni  # worker inside the engine core
    python benchmarks/cpu_engine_steps.py scrape-cost                       # API-server CPU per scrape
    python benchmarks/cpu_engine_steps.py cpu --seconds 60                  # a fixed loop on the engine CPU

docs/analysis.md (the cross-check section) and docs/metrics.md have the figures these printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def steps(a: argparse.Namespace) -> None:
    """The same closed-loop step `repeats` times back to back on one server: each value and their sd."""
    from gevent import monkey

    monkey.patch_all()
    from analysis.pipeline import compute
    from loadtest.runner import Sweep, new_run_dir
    from tests.support.vllm_plan import ENGINE_ARGS, ENGINE_ENV, tiny_vllm_plan

    root = Path(a.out or tempfile.mkdtemp(prefix="cpu-engine-steps-"))
    server = {}
    if a.executor == "uni":
        server = {"env": {**ENGINE_ENV, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
                  "extra_args": list(ENGINE_ARGS) + ["--distributed-executor-backend", "uni"]}
    c = a.concurrency
    plan = tiny_vllm_plan(root, ["bf16"], served_model_name="tiny",
                          scenario={"prompt_tokens": 64, "output_tokens": 64, "seed": 3,
                                    "tokenizer": str(root / "models" / "plain")},
                          sweep={"concurrency": [c], "warmup_s": 3, "duration_s": None, "requests": [48 * c],
                                 "drain_s": 120, "repeats": a.repeats},
                          scrape={"interval_s": a.scrape}, server=server, name=f"steps-{a.executor}")
    run = new_run_dir(plan)
    sweep = Sweep(plan, run)
    try:
        sweep.execute()
    finally:
        sweep.stop_all()
    v = compute(run.path, use_cache=False).steps.output_tokens_per_s.to_numpy()
    print(f"executor {a.executor}, concurrency {c}, scrape every {a.scrape:g} s: "
          f"{', '.join(f'{x:,.0f}' for x in v)} tok/s; mean {v.mean():,.0f}, sd {100 * v.std(ddof=1) / v.mean():.1f}%"
          f"  ({run.path})")


def scrape_cost(a: argparse.Namespace) -> None:
    """CPU time the API server spends on `scrapes` scrapes in a row, against its idle use."""
    import psutil

    from deploy.servers import server_commands
    from tests.support.vllm_plan import serving, tiny_vllm_plan

    root = Path(a.out or tempfile.mkdtemp(prefix="cpu-engine-scrape-"))
    cmd = server_commands(tiny_vllm_plan(root, ["bf16"]))[0]
    with serving(cmd, root / "bf16.log") as srv:
        url = srv.url + "/metrics"
        api = psutil.Process(srv.pid)

        def cpu() -> float:
            t = api.cpu_times()
            return t.user + t.system

        page = urllib.request.urlopen(url).read()
        c0 = cpu()
        time.sleep(a.idle_s)
        idle = cpu() - c0
        c0, t0 = cpu(), time.perf_counter()
        for _ in range(a.scrapes):
            urllib.request.urlopen(url).read()
        wall = time.perf_counter() - t0
        print(f"page {len(page):,} bytes; API server CPU idle {idle:.3f} s in {a.idle_s:g} s; "
              f"{a.scrapes} scrapes: {1000 * (cpu() - c0) / a.scrapes:.1f} ms CPU and {1000 * wall / a.scrapes:.1f} ms "
              f"wall each")


def cpu_steadiness(a: argparse.Namespace) -> None:
    """A fixed single-core numpy loop on one CPU: work done each second, and its spread."""
    import numpy as np

    os.sched_setaffinity(0, {a.cpu})
    x0 = np.random.default_rng(0).random((300, 300))
    per_s = []
    end = time.time() + a.seconds
    while time.time() < end:
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < 1.0:
            x = x0.copy()
            for _ in range(20):
                x = np.sin(x) + 1.0
            n += 1
        per_s.append(n)
    r = np.asarray(per_s, float)
    print(f"CPU {a.cpu}: {r.mean():.1f} loops/s over {r.size} s, sd {100 * r.std() / r.mean():.2f}%, "
          f"min {r.min():.0f}, max {r.max():.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--repeats", type=int, default=6)
    s.add_argument("--concurrency", type=int, default=4)
    s.add_argument("--scrape", type=float, default=10.0, help="scrape.interval_s")
    s.add_argument("--executor", choices=["mp", "uni"], default="mp")
    s.add_argument("--out", default=None)
    s.set_defaults(fn=steps)
    c = sub.add_parser("scrape-cost")
    c.add_argument("--scrapes", type=int, default=60)
    c.add_argument("--idle-s", type=float, default=30.0)
    c.add_argument("--out", default=None)
    c.set_defaults(fn=scrape_cost)
    u = sub.add_parser("cpu")
    u.add_argument("--seconds", type=float, default=60.0)
    u.add_argument("--cpu", type=int, default=0)
    u.set_defaults(fn=cpu_steadiness)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
