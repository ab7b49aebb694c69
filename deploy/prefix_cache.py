"""A strict A/B against vLLM's prefix cache: serve without it, or empty it before every step.

vLLM caches prompt prefixes by default; ridgeline's generated prompts are new to the server
(scenarios/unique.py), but a dataset that repeats itself, or a comparison that must exclude any
reuse at all, needs more. `server.prefix_cache` in the plan:
  on     the server's default (caching on); hits are measured and flagged, nothing is changed;
  off    vLLM starts with --no-enable-prefix-caching: no hits are possible;
  reset  the cache is emptied before every step and every cross-check level with
         POST /reset_prefix_cache, which vLLM serves only in its development mode
         (VLLM_SERVER_DEV_MODE=1, set in the server's environment).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Optional

OFF_FLAG = "--no-enable-prefix-caching"
RESET_PATH = "/reset_prefix_cache"
DEV_MODE_ENV = {"VLLM_SERVER_DEV_MODE": "1"}


def server_args(setting: str) -> list[str]:
    """The vLLM flags a `server.prefix_cache` setting adds."""
    return [OFF_FLAG] if setting == "off" else []


def server_env(setting: str) -> dict[str, str]:
    """The environment a `server.prefix_cache` setting needs on the vLLM server."""
    return dict(DEV_MODE_ENV) if setting == "reset" else {}


def reset(url: str, headers: Optional[dict[str, str]] = None, timeout_s: float = 30.0) -> Optional[str]:
    """Empty the server's prefix cache; None when it did, else why not (never raises)."""
    req = urllib.request.Request(url.rstrip("/") + RESET_PATH, data=b"", method="POST", headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            if not 200 <= resp.status < 300:
                return f"{RESET_PATH} answered {resp.status}"
            body = resp.read()
    except urllib.error.HTTPError as exc:
        hint = " (vLLM serves it only with VLLM_SERVER_DEV_MODE=1)" if exc.code == 404 else ""
        return f"{RESET_PATH} answered {exc.code}{hint}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return f"{RESET_PATH} failed: {exc}"
    try:  # recent vLLM answers {"success": false} while blocks are still held by running requests
        said = json.loads(body or b"{}")
    except ValueError:
        return None
    if isinstance(said, dict) and said.get("success") is False:
        return f"{RESET_PATH} answered success: false (blocks still held by running requests)"
    return None
