"""Where the quality-proof models live, for tests: a small Llama trained here and its variants.

.ci/setup-quality-models.sh builds them (tests/support/quality_build.py, in a venv of their own)
into $RIDGELINE_QUALITY_MODELS, default ~/.cache/ridgeline/quality-models/<recipe hash>/. Tests
call `quality_models()` for the paths, or skip with `SKIP_REASON` when they were not built.
Each model directory holds ridgeline_quality.json, which says whether its weights are "real" or
"dequantized-bf16" (see QUALITY.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "quality_build.py"
SETUP = HERE.parent.parent / ".ci" / "setup-quality-models.sh"
ORIGIN_FILE = "ridgeline_quality.json"  # the same name quality_build.ORIGIN_FILE writes
INT4 = ("gptq", "awq", "rtn", "broken")  # compressed-tensors W4A16 checkpoints
DEQUANT = tuple(f"{v}-dequant" for v in INT4)  # the same weights dequantized back to bf16
EVALS = ("text.jsonl", "prompts.jsonl", "task.jsonl")


def recipe_hash() -> str:
    """The recipe's content hash, computed by the recipe itself (with this interpreter: the same
    Python version as the build's, the corpus being its standard library)."""
    return subprocess.run([sys.executable, str(RECIPE), "hash"], capture_output=True, text=True,
                          check=True).stdout.strip()


def models_dir() -> Path:
    env = os.environ.get("RIDGELINE_QUALITY_MODELS")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "ridgeline" / "quality-models" / recipe_hash()


@dataclass(frozen=True)
class QualityModels:
    """Paths of one build: base/ (bf16), the INT4 variants, their dequantized twins, the eval sets."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def evals(self) -> Path:
        return self.root / "evals"

    def variant(self, name: str) -> Path:
        """base, gptq, awq, rtn, broken, or one of those with -dequant."""
        if name not in ("base", *INT4, *DEQUANT):
            raise KeyError(f"no quality model {name!r}: expected base, {', '.join(INT4)} or a -dequant twin")
        return self.root / name

    def eval_file(self, name: str) -> Path:
        return self.evals / name

    def has_variants(self) -> bool:
        return (self.root / "variants.json").exists() and all((self.root / v / "config.json").exists()
                                                             for v in (*INT4, *DEQUANT))


def origin(model_dir: Path) -> dict:
    """A model directory's ridgeline_quality.json ({} when absent): "weights" is "real" or "dequantized-bf16"."""
    p = Path(model_dir) / ORIGIN_FILE
    return json.loads(p.read_text()) if p.exists() else {}


SKIP_REASON = ("no quality models: run .ci/setup-quality-models.sh (a few minutes on two cores; output in "
               "$RIDGELINE_QUALITY_MODELS, default ~/.cache/ridgeline/quality-models/<recipe hash>/)")


def find_quality_models() -> Optional[QualityModels]:
    """The build for this recipe when base/ and evals/ exist, else None."""
    m = QualityModels(models_dir())
    if (m.base / "model.safetensors").exists() and all((m.evals / e).exists() for e in EVALS):
        return m
    return None


def quality_models(variants: bool = False) -> QualityModels:
    """The built models, or skip the calling test with a message saying how to build them
    (`variants=True`: also the INT4 variants and their dequantized twins)."""
    m = find_quality_models()
    if m is None:
        pytest.skip(f"{SKIP_REASON}; none at {models_dir()}")
    if variants and not m.has_variants():
        pytest.skip(f"{SKIP_REASON}; {m.root} has base/ and evals/ but not every INT4 variant")
    return m
