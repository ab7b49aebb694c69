"""A report table as plain strings: headers, rows, which cells to flag and which columns are text.

report_tables (and quality.table) build these; report.html and report.md only render them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Row:
    cells: list[str]
    flagged: set[int] = field(default_factory=set)  # cells to highlight (a difference beyond the limit)
    bad: bool = False  # the whole row (a throttled step, a failed level)


@dataclass
class Table:
    headers: list[str]
    rows: list[Row]
    text: set[int] = field(default_factory=lambda: {0})  # columns of text (aligned left), by index
