"""One base class for every error ridgeline raises on purpose.

A caller that wants "anything ridgeline refused, with its message" catches ``RidgelineError``;
each package's own classes (PlanError, ResultsError, CatalogError, ...) derive from it and from
the builtin they always derived from, so existing ``except ValueError`` / ``except RuntimeError``
handlers keep working.
"""

from __future__ import annotations


class RidgelineError(Exception):
    """Something ridgeline cannot do as asked; the message names what and where."""
