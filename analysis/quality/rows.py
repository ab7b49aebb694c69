"""The raw quality rows of a results directory (quality/<variant>/), read and checked.

The measurement side writes, per variant, quality.json (status, reason, weights, settings) and up
to three tables: likelihood.parquet (one row per scored prompt position), greedy.parquet (one row
per prompt) and task.parquet (one row per item). This module reads them and checks their columns,
so every metric downstream can trust the shapes; a table that is missing a column, or cannot be
read, is an error naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from analysis.data import AnalysisError

QUALITY_DIR = "quality"
RECORD = "quality.json"
COLUMNS: dict[str, tuple[str, ...]] = {
    "likelihood": ("doc_id", "position", "token", "logprob", "top_tokens", "top_logprobs"),
    "greedy": ("prompt_id", "tokens", "text", "finish_reason"),
    "task": ("item_id", "prompt", "reference", "output"),
}
NUMERIC: dict[str, dict[str, str]] = {"likelihood": {"position": "int64", "logprob": "float64"}}
MEASURED, NOT_MEASURED, FAILED = "measured", "not_measured", "failed"
INVALID = "invalid"  # rows that were written but cannot be used (the reason names file and record)


class QualityError(AnalysisError):
    """Quality rows the analysis cannot use; the message names the variant, file and record."""


@dataclass
class VariantRows:
    """One variant's quality record and tables (None where that block was not measured)."""

    variant: str
    status: str
    reason: Optional[str]
    weights: Optional[str]
    record: dict[str, Any] = field(default_factory=dict)
    likelihood: Optional[pd.DataFrame] = None
    greedy: Optional[pd.DataFrame] = None
    task: Optional[pd.DataFrame] = None

    @property
    def measured(self) -> bool:
        return self.status == MEASURED

    @property
    def has_rows(self) -> bool:
        """Whether any table was written: a measured variant, or one whose other blocks failed."""
        return any(t is not None and not t.empty for t in (self.likelihood, self.greedy, self.task))

    @property
    def settings(self) -> dict[str, Any]:
        s = self.record.get("settings")
        return s if isinstance(s, dict) else {}


def quality_root(run_path: Path) -> Path:
    return Path(run_path) / QUALITY_DIR


def _read_record(path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise QualityError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(rec, dict):
        raise QualityError(f"{path}: expected a JSON object, got {type(rec).__name__}")
    return rec


def _read_table(path: Path, kind: str) -> Optional[pd.DataFrame]:
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise QualityError(f"{path}: cannot be read as a {kind} table ({exc})") from None
    missing = [c for c in COLUMNS[kind] if c not in table.column_names]
    if missing:
        raise QualityError(f"{path}: missing column(s) {', '.join(missing)} (a {kind} table has "
                           f"{', '.join(COLUMNS[kind])})")
    df = table.to_pandas()
    for c in [c for c in COLUMNS[kind] if c.endswith("_id")]:
        df[c] = df[c].astype(str)
    for c, typ in NUMERIC.get(kind, {}).items():
        try:
            df[c] = df[c].astype(typ)
        except (TypeError, ValueError) as exc:
            raise QualityError(f"{path}: column {c} does not hold {typ} values ({exc})") from None
    return df


def read_variant(variant_dir: Path) -> VariantRows:
    """One variant's rows. A directory without quality.json reads as failed, with the reason."""
    variant = variant_dir.name
    rec_path = variant_dir / RECORD
    if not rec_path.exists():
        return VariantRows(variant, FAILED, f"no {RECORD} in {variant_dir}", None)
    rec = _read_record(rec_path)
    status = str(rec.get("status") or FAILED)
    rows = VariantRows(str(rec.get("variant") or variant), status, rec.get("reason"), rec.get("weights"), rec)
    if status in (MEASURED, FAILED):  # a failed block leaves the others' tables
        rows.likelihood = _read_table(variant_dir / "likelihood.parquet", "likelihood")
        rows.greedy = _read_table(variant_dir / "greedy.parquet", "greedy")
        rows.task = _read_table(variant_dir / "task.parquet", "task")
    return rows


def read_quality(run_path: Path) -> dict[str, VariantRows]:
    """Every variant's rows under results/<run>/quality/, by variant name (empty: none measured)."""
    root = quality_root(run_path)
    if not root.is_dir():
        return {}
    out: dict[str, VariantRows] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            rows = read_variant(d)
        except QualityError as exc:
            rows = VariantRows(d.name, INVALID, str(exc), None)
        out[d.name] = rows
    return out


def quality_files(run_path: Path) -> list[Path]:
    """The files whose change means the quality figures must be recomputed."""
    root = quality_root(run_path)
    return sorted(root.glob("*/*")) if root.is_dir() else []
