"""exact: the output, stripped of surrounding whitespace, equals the reference (also stripped)."""

from __future__ import annotations

from typing import Any


def score(output: str, reference: str, options: dict[str, Any]) -> bool:
    return str(output).strip() == str(reference).strip()
