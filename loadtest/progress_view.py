"""The live progress display of a sweep (rich), throttled so drawing never competes with the load."""

from __future__ import annotations

import time
from typing import Optional

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from loadtest.runner import Progress


class LiveView:
    """A context manager whose `update(progress)` redraws at most `fps` times a second."""

    def __init__(self, console: Optional[Console] = None, fps: float = 4.0, enabled: bool = True):
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.min_gap = 1.0 / fps
        self._last = 0.0
        self._live: Optional[Live] = None
        self._printed = 0

    def __enter__(self) -> "LiveView":
        if self.enabled:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        if self._live is not None:
            self._live.__exit__(*exc)

    def update(self, p: Progress) -> None:
        if self._live is None:
            # not a terminal: one line per finished step is the progress
            while self._printed < len(p.finished):
                f = p.finished[self._printed]
                lvl = f"c={f['concurrency']}" if f["concurrency"] is not None else f"{f['rate']:g} req/s"
                self.console.print(f"{f['variant']:>12} {lvl:>10}  {f['tok_s']:9.1f} tok/s  "
                                   f"{f['requests']:5d} req  {f['errors']} err  {f['status']}")
                self._printed += 1
            return
        now = time.monotonic()
        if now - self._last < self.min_gap:
            return
        self._last = now
        self._live.update(render(p), refresh=True)


def render(p: Progress) -> Group:
    elapsed = time.time() - p.started
    head = Text.assemble(
        ("ridgeline ", "bold"), f"variant {p.variant_index}/{p.variants} ", (p.variant, "bold cyan"),
        f"  step {p.step}/{p.steps} {p.level}  ", (p.phase, "yellow"),
        f"  in flight {p.in_flight}  sent {p.sent}  elapsed {elapsed:5.0f}s",
    )
    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for col in ("variant", "level", "output tok/s", "requests", "errors", "step"):
        t.add_column(col, justify="right")
    for f in p.finished[-12:]:
        lvl = f"c={f['concurrency']}" if f["concurrency"] is not None else f"{f['rate']:g}/s"
        t.add_row(f["variant"], lvl, f"{f['tok_s']:.1f}", str(f["requests"]), str(f["errors"]), f["status"])
    return Group(head, t)
