"""Named scenarios: a plan's `scenario.builtin` starts from one of these, and its own keys win.

Plain data only (this module is imported while a plan is validated).
"""

from __future__ import annotations

import copy
from typing import Any

BUILTINS: dict[str, dict[str, Any]] = {
    "chat-short": {
        "description": "short chat turns: log-normal prompts around 128 tokens and answers around 128",
        "scenario": {
            "api": "chat",
            "prompt_tokens": {"dist": "lognormal", "mean": 128, "sigma": 0.6, "min": 16, "max": 1024},
            "output_tokens": {"dist": "lognormal", "mean": 128, "sigma": 0.5, "min": 16, "max": 512},
        },
    },
    "rag-long-prompt": {
        "description": "retrieval-augmented answers: long prompts (~4k tokens of context), short answers",
        "scenario": {
            "api": "chat",
            "prompt_tokens": {"dist": "normal", "mean": 4000, "std": 500, "min": 2048, "max": 6144},
            "output_tokens": {"dist": "uniform", "min": 64, "max": 256},
        },
    },
    "summarise": {
        "description": "summarisation: 1.5k-3k token documents in, ~256 tokens out",
        "scenario": {
            "api": "completions",
            "prompt_tokens": {"dist": "uniform", "min": 1500, "max": 3000},
            "output_tokens": {"dist": "normal", "mean": 256, "std": 32, "min": 128, "max": 512},
        },
    },
    "shared-prefix": {
        "description": "8 system prompts of 1024 tokens x 32 questions of ~64 tokens: exercises prefix caching",
        "scenario": {
            "api": "chat",
            "shared_prefix": {"prefixes": 8, "prefix_tokens": 1024, "questions": 32},
            "prompt_tokens": {"dist": "uniform", "min": 32, "max": 96},
            "output_tokens": {"dist": "fixed", "value": 128},
        },
    },
    "sharegpt": {
        "description": "real conversations from a ShareGPT-format FILE (scenario.dataset); lengths from the file",
        "argument": "FILE",
        "scenario": {
            "api": "chat",
            "dataset_format": "sharegpt",
            "prompt_tokens": {"dist": "dataset"},
            "output_tokens": {"dist": "dataset"},
        },
        "requires": ["dataset"],
    },
}

# nested sections merged key by key; every other key a plan gives replaces the built-in's whole value
_MERGED = ("shared_prefix", "extra_body")


def apply_builtin(data: dict[str, Any]) -> dict[str, Any]:
    """The scenario mapping with its built-in's defaults under the keys it gives."""
    name = data.get("builtin")
    if name is None:
        return data
    if not isinstance(name, str) or name not in BUILTINS:
        raise ValueError(f"unknown builtin scenario {name!r} (known: {', '.join(BUILTINS)})")
    b = BUILTINS[name]
    out = copy.deepcopy(b["scenario"])
    for k, v in data.items():
        if k in _MERGED and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    missing = [k for k in b.get("requires", []) if not out.get(k)]
    if missing:
        raise ValueError(f"builtin {name!r} needs scenario.{missing[0]} "
                         f"({b.get('argument', 'a value')}: a ShareGPT JSON or JSONL file)")
    return out


def listing() -> list[dict[str, Any]]:
    """Every built-in with its parameters, for `ridgeline scenarios list`."""
    return [{"name": n + (f" {b['argument']}" if "argument" in b else ""), "description": b["description"],
             "scenario": b["scenario"]} for n, b in BUILTINS.items()]
