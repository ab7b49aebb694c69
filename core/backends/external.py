"""Servers that run elsewhere, reached by each variant's URL; ridgeline starts nothing."""

from core.backends.base import Backend

BACKEND = Backend("external", "external — measured on servers run elsewhere", starts_servers=False, needs_url=True)
