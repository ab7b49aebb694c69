"""The plan's `quality:` section and its eval files, validated when the plan is loaded.

Quality is measured on the user's own eval files through each variant's live server. A typo in one
of those files must fail before a server starts (a vLLM start costs minutes), naming the file, the
line and what is wrong, so the eval files are read and checked here, as part of the plan.

Paths are taken as written: relative to the directory `ridgeline` runs in, as scenario datasets are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from core.errors import RidgelineError

SCORERS = ("exact", "contains", "regex", "numeric")


class EvalFileError(RidgelineError, ValueError):
    """An eval file that cannot be used; names the file, the line (when there is one) and why."""

    def __init__(self, path: str, line: Optional[int], reason: str):
        self.path, self.line, self.reason = path, line, reason
        super().__init__(f"eval file {path}" + (f", line {line}" if line else "") + f": {reason}")


@dataclass(frozen=True)
class EvalRecord:
    """One record of an eval file: its id (the line number when the file gives none) and its fields."""

    id: str
    line: int
    fields: dict[str, str]

    def __getitem__(self, key: str) -> str:
        return self.fields[key]


def read_eval_file(path: str, required: tuple[str, ...]) -> list[EvalRecord]:
    """The records of a JSONL eval file, each an object with non-empty string `required` keys.

    Blank lines are skipped; ids (given or the line number) must be unique, since variants are
    paired with the baseline by id.
    """
    p = Path(path)
    if not p.exists():
        raise EvalFileError(path, None, "no such file")
    if not p.is_file():
        raise EvalFileError(path, None, "not a regular file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise EvalFileError(path, None, f"cannot be read ({exc.strerror or exc})") from None
    out: list[EvalRecord] = []
    seen: dict[str, int] = {}
    for n, line_bytes in enumerate(raw.splitlines(), start=1):
        try:
            line = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EvalFileError(path, n, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalFileError(path, n, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise EvalFileError(path, n, f"expected a JSON object with {', '.join(required)}, got "
                                         f"{type(obj).__name__}")
        fields: dict[str, str] = {}
        for key in required:
            if key not in obj:
                raise EvalFileError(path, n, f"missing key '{key}' (each record needs {', '.join(required)})")
            v = obj[key]
            if not isinstance(v, str):
                raise EvalFileError(path, n, f"'{key}' must be a string, got {type(v).__name__}")
            if not v.strip():
                raise EvalFileError(path, n, f"'{key}' is empty")
            fields[key] = v
        rid = obj.get("id", n)
        if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
            raise EvalFileError(path, n, f"'id' must be a non-empty string or an integer, got {rid!r}")
        rid = str(rid)
        if rid in seen:
            raise EvalFileError(path, n, f"id {rid!r} repeats (first on line {seen[rid]})")
        seen[rid] = n
        out.append(EvalRecord(rid, n, fields))
    if not out:
        raise EvalFileError(path, None, "holds no records (empty file)")
    return out


def file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _EvalBlock(_Strict):
    """A block that reads one eval file: checked (and counted) when the plan is loaded."""

    file: str
    REQUIRED: ClassVar[tuple[str, ...]] = ()

    def records(self) -> list[EvalRecord]:
        return read_eval_file(self.file, self.REQUIRED)


class LikelihoodSpec(_EvalBlock):
    """Token log-likelihood of eval texts, from the server's prompt logprobs: {"id"?, "text"}."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("text",)
    max_docs: int = Field(default=64, ge=1)
    max_tokens: int = Field(default=512, ge=2, description="per document, counted by the server's tokenizer")
    top_k: int = Field(default=20, ge=1, description="top logprobs kept per position (vLLM's --max-logprobs caps it)")


class GreedySpec(_EvalBlock):
    """Prompts answered at temperature 0, compared token by token with the baseline: {"id"?, "prompt"}."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("prompt",)
    max_tokens: int = Field(default=32, ge=1)
    max_prompts: Optional[int] = Field(default=None, ge=1)


class TaskSpec(_EvalBlock):
    """The user's own task: {"id"?, "prompt", "reference"}, scored by `scorer` in the analysis."""

    REQUIRED: ClassVar[tuple[str, ...]] = ("prompt", "reference")
    scorer: Literal["exact", "contains", "regex", "numeric"] = "contains"
    tolerance: float = Field(default=0.0, ge=0, description="numeric scorer: largest absolute difference that matches")
    ignore_case: bool = Field(default=False, description="exact/contains/regex: compare without case")
    max_tokens: int = Field(default=32, ge=1)
    max_items: Optional[int] = Field(default=None, ge=1)


class LmEvalSpec(_Strict):
    """The lm-eval harness pointed at the same server (its local-completions model)."""

    tasks: list[str] = Field(min_length=1, description="task names, or paths of local task YAML files")
    limit: Optional[int] = Field(default=None, ge=1)
    num_fewshot: Optional[int] = Field(default=None, ge=0)
    program: list[str] = Field(default_factory=lambda: ["lm_eval"], description="how to run the harness")
    timeout_s: float = Field(default=3600.0, gt=0)


class QualityGates(_Strict):
    max_ppl_increase_pct: Optional[float] = Field(default=None, ge=0)
    max_accuracy_drop_points: Optional[float] = Field(default=None, ge=0)
    max_kl: Optional[float] = Field(default=None, ge=0)


class QualitySpec(_Strict):
    """What each variant's live server is asked, beside the speed sweep (docs/quality.md)."""

    baseline: Optional[str] = Field(default=None, description="default: the plan's baseline variant")
    confidence: float = Field(default=0.95, gt=0, lt=1)
    variants: Optional[list[str]] = Field(default=None, description="measure these only (default: all)")
    concurrency: int = Field(default=4, ge=1, description="requests in flight to one server")
    timeout_s: float = Field(default=300.0, gt=0, description="per request")
    retries: int = Field(default=3, ge=0, description="on connection errors, 429 and 5xx answers")
    likelihood: Optional[LikelihoodSpec] = None
    greedy: Optional[GreedySpec] = None
    task: Optional[TaskSpec] = None
    lm_eval: Optional[LmEvalSpec] = None
    gates: QualityGates = Field(default_factory=QualityGates)

    def blocks(self) -> dict[str, Any]:
        """The measurement blocks the plan gives, by name (likelihood, greedy, task, lm_eval)."""
        return {k: getattr(self, k) for k in ("likelihood", "greedy", "task", "lm_eval") if getattr(self, k) is not None}

    def check_names(self, names: list[str], speed_baseline: str) -> None:
        """Refuse variant names the plan does not have; fill in the baseline (the speed one by default)."""
        for key, given in (("baseline", [self.baseline] if self.baseline else []), ("variants", self.variants or [])):
            unknown = [n for n in given if n not in names]
            if unknown:
                raise ValueError(f"quality.{key} names {', '.join(unknown)}, not among the variants "
                                 f"({', '.join(names)})")
        if not self.blocks():
            raise ValueError("quality has no measurement: give likelihood, greedy, task or lm_eval")
        if self.baseline is None:
            self.__dict__["baseline"] = speed_baseline
        if self.variants is not None and self.baseline not in self.variants:
            raise ValueError(f"quality.variants must include the quality baseline '{self.baseline}'")

    def measures(self, variant: str) -> bool:
        return self.variants is None or variant in self.variants

    def eval_file_problems(self) -> list[tuple[str, str]]:
        """(key path, what is wrong) for each eval file that cannot be used.

        Checked when a plan is loaded to be run, not whenever the schema validates one: a results
        directory analysed on another machine must not need the eval files.
        """
        out = []
        for name, block in self.blocks().items():
            if isinstance(block, _EvalBlock):
                try:
                    read_eval_file(block.file, block.REQUIRED)
                except EvalFileError as exc:
                    out.append((f"quality.{name}.file", str(exc)))
        return out
