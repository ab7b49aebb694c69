"""What ridgeline needs to know about a backend wherever it is not launching it."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import RidgelineError


class BackendError(RidgelineError, ValueError):
    """A backend name no module provides."""


@dataclass(frozen=True)
class Backend:
    name: str  # the plan's `backend:` value
    note: str  # how reports and summary.json name it (the report's badge)
    modelled: bool = False  # its figures come from a model, not from a GPU (charts and sentences say so)
    starts_servers: bool = True  # ridgeline launches its servers (external: they run elsewhere, by URL)
    needs_url: bool = False  # every variant must give the URL of its running server
    launches_vllm: bool = False  # ridgeline starts a vLLM engine from a checkpoint (its flags, GPUs, weights apply)
