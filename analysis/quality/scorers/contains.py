"""contains: the reference (stripped) occurs in the output; case-sensitive unless `ignore_case`."""

from __future__ import annotations

from typing import Any


def score(output: str, reference: str, options: dict[str, Any]) -> bool:
    ref, out = str(reference).strip(), str(output)
    if options.get("ignore_case"):
        ref, out = ref.casefold(), out.casefold()
    return bool(ref) and ref in out
