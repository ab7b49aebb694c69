"""The backends a plan can name, one module each, and what the rest of ridgeline asks of them.

Reports, the plan validator and the telemetry ask a ``Backend`` (is it modelled? does ridgeline
start its servers? does every variant need a URL? how is it named?) instead of comparing
``plan.backend`` with a string. How a backend's servers are started lives in deploy/servers.py
(``SERVER_COMMANDS``). To add a backend: a module here with ``BACKEND = Backend(...)``, its line
in ``BACKENDS`` below, and its command builder's line in ``deploy.servers.SERVER_COMMANDS``.
"""

from __future__ import annotations

from core.backends import emulator, external, vllm
from core.backends.base import Backend, BackendError

BACKENDS: dict[str, Backend] = {b.name: b for b in (
    emulator.BACKEND,
    vllm.BACKEND,
    external.BACKEND,
)}


def backend(name: str) -> Backend:
    """The backend a plan names; BackendError naming the known ones otherwise."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})") from None


def note(name: str) -> str:
    """How reports name a backend; a name no module provides (an old results directory) as it is."""
    return BACKENDS[name].note if name in BACKENDS else name


def is_modelled(name: str) -> bool:
    return name in BACKENDS and BACKENDS[name].modelled


__all__ = ["BACKENDS", "Backend", "BackendError", "backend", "is_modelled", "note"]
