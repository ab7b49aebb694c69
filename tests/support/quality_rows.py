"""Raw quality rows written per the results-directory contract (quality/<variant>/), for tests.

The tables have the contract's column types (doc_id str, position int32, list<str> top tokens,
list<float64> top logprobs, ...) and are written with the project's atomic writers, like the
measurement side. `synthetic_likelihood` draws documents from a known next-token model, so a test
knows the full distributions (and the true KL) behind the top-k rows it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import pyarrow as pa

from core.results import atomic_write_json, atomic_write_table

LIKELIHOOD_SCHEMA = pa.schema([("doc_id", pa.string()), ("position", pa.int32()), ("token", pa.string()),
                               ("logprob", pa.float64()), ("top_tokens", pa.list_(pa.string())),
                               ("top_logprobs", pa.list_(pa.float64()))])
GREEDY_SCHEMA = pa.schema([("prompt_id", pa.string()), ("tokens", pa.list_(pa.string())), ("text", pa.string()),
                           ("finish_reason", pa.string())])
TASK_SCHEMA = pa.schema([("item_id", pa.string()), ("prompt", pa.string()), ("reference", pa.string()),
                         ("output", pa.string())])


def write_variant(run_path: Path, variant: str, *, status: str = "measured", reason: Optional[str] = None,
                  weights: str = "real", settings: Optional[dict[str, Any]] = None,
                  likelihood: Optional[list[dict[str, Any]]] = None, greedy: Optional[list[dict[str, Any]]] = None,
                  task: Optional[list[dict[str, Any]]] = None) -> Path:
    d = Path(run_path) / "quality" / variant
    for name, rows, schema in (("likelihood", likelihood, LIKELIHOOD_SCHEMA), ("greedy", greedy, GREEDY_SCHEMA),
                               ("task", task, TASK_SCHEMA)):
        if rows is not None:
            atomic_write_table(d / f"{name}.parquet", pa.Table.from_pylist(rows, schema=schema))
    atomic_write_json(d / "quality.json", {
        "variant": variant, "status": status, "reason": reason, "weights": weights, "served_model": "tiny",
        "settings": settings or {}, "files": {}, "token_ids": True, "started": 0.0, "ended": 1.0})
    return d


def token(i: int) -> str:
    return f"token_id:{i}"


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def topk_row(doc: str, pos: int, tok: int, probs: np.ndarray, k: int) -> dict[str, Any]:
    top = np.argsort(-probs, kind="stable")[:k]
    return {"doc_id": doc, "position": pos, "token": token(tok), "logprob": float(np.log(probs[tok])),
            "top_tokens": [token(int(t)) for t in top], "top_logprobs": [float(np.log(probs[t])) for t in top]}


def synthetic_likelihood(docs: int, positions: int, vocab: int, k: int, damage: Sequence[float] = (0.0,),
                         seed: int = 0) -> tuple[list[list[dict[str, Any]]], list[float]]:
    """Rows for the baseline (damage 0) and variants whose logits get Gaussian noise of each scale.

    Returns one row list per damage level, and each level's true mean KL(baseline || variant) over
    the full vocabulary, token-weighted, for comparison with the top-k estimate.
    """
    rng = np.random.default_rng(seed)
    out: list[list[dict[str, Any]]] = [[] for _ in damage]
    kl_sum = np.zeros(len(damage))
    n = 0
    for d in range(docs):
        for pos in range(1, positions + 1):
            logits = rng.normal(0, 2.5, size=vocab)
            p = softmax(logits)
            tok = int(rng.choice(vocab, p=p))
            for j, scale in enumerate(damage):
                q = softmax(logits + rng.normal(0, scale, size=vocab)) if scale else p
                out[j].append(topk_row(f"doc{d}", pos, tok, q, k))
                kl_sum[j] += float(np.sum(p * (np.log(p) - np.log(q))))
            n += 1
    return out, list(kl_sum / n)


def add_quality(run_path: Path, damage: dict[str, float], not_measured: Optional[dict[str, str]] = None,
                docs: int = 8, positions: int = 40, vocab: int = 64, k: int = 8, prompts: int = 20,
                items: int = 30, seed: int = 0) -> None:
    """Quality rows for a run: per variant a damage scale (0 for the baseline) or a not-measured reason.

    Greedy outputs and task answers degrade with the damage: each greedy token, and each task answer
    the baseline got right, is changed with probability min(1, damage / 2).
    """
    names = list(damage)
    levels, _ = synthetic_likelihood(docs, positions, vocab, k, damage=[damage[n] for n in names], seed=seed)
    rng = np.random.default_rng(seed + 1)
    base_tokens = [[token(int(t)) for t in rng.integers(0, vocab, size=8)] for _ in range(prompts)]
    base_ok = rng.random(items) < 0.8
    for name, rows in zip(names, levels):
        flip = min(1.0, damage[name] / 2)
        r = np.random.default_rng(seed_of(name))
        greedy = []
        for i, toks in enumerate(base_tokens):
            out = [t if r.random() >= flip else token(vocab + int(r.integers(0, vocab))) for t in toks]
            greedy.append({"prompt_id": f"p{i}", "tokens": out, "text": " ".join(out), "finish_reason": "length"})
        task = []
        for i, ok in enumerate(base_ok):
            right = bool(ok) and r.random() >= flip
            task.append({"item_id": f"i{i}", "prompt": f"q{i}", "reference": str(i),
                         "output": f"the answer is {i}" if right else "the answer is -1"})
        write_variant(run_path, name, likelihood=rows, greedy=greedy, task=task,
                      settings={"task": {"scorer": "numeric"}})
    for name, reason in (not_measured or {}).items():
        write_variant(run_path, name, status="not_measured", reason=reason, weights="dummy")


def seed_of(name: str) -> int:
    return sum(ord(c) * 31 ** i for i, c in enumerate(name)) % (2 ** 32)
