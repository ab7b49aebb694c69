"""The raw quality rows' Arrow schemas: the contract with the analysis (QUALITY.md, "Raw rows").

Variants are paired with the baseline by doc/prompt/item id and, for likelihood, by position in the
document's tokenization; tokens are "token_id:N" where the server can say so, so positions align.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

LIKELIHOOD_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("position", pa.int32()), ("token", pa.string()), ("logprob", pa.float64()),
    ("top_tokens", pa.list_(pa.string())), ("top_logprobs", pa.list_(pa.float64())),
])
GREEDY_SCHEMA = pa.schema([
    ("prompt_id", pa.string()), ("tokens", pa.list_(pa.string())), ("text", pa.string()),
    ("finish_reason", pa.string()),
])
TASK_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("prompt", pa.string()), ("reference", pa.string()), ("output", pa.string()),
])

QUALITY_JSON = "quality.json"
MEASURED, NOT_MEASURED, FAILED = "measured", "not_measured", "failed"
DONE = (MEASURED, NOT_MEASURED)  # a resumed run does not ask again


def table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts keyed by the schema's names) as a table of exactly that schema, even when empty."""
    return pa.Table.from_pylist(rows, schema=schema)
