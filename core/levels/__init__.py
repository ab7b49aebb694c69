"""A load level as one typed value, and the load profiles that make them.

A step runs at one ``Level``: "closed loop at C requests in flight" or "open loop at R requests
per second" (and whatever profile comes next). The level knows how the plan lists it (its sweep
key), how a driver holds it (``drive``), how it is written into the request and step records
(``concurrency`` / ``rate`` columns, kept for the results-directory format) and how reports name
it. Runner, drivers and analysis ask the level; none of them tests which kind it is.

To add a load profile: one file in this package with a ``Level`` subclass, and one line in
``PROFILES`` below (docs/architecture.md shows the diff).
"""

from __future__ import annotations

from core.levels.base import Level, LevelDriver, ProfileError
from core.levels.closed_loop import ClosedLoop
from core.levels.open_loop import OpenLoop

# sweep.mode -> the profile that makes that sweep's levels; one line per profile
PROFILES: dict[str, type[Level]] = {
    ClosedLoop.name: ClosedLoop,
    OpenLoop.name: OpenLoop,
}


def profile(mode: str) -> type[Level]:
    """The profile a plan's sweep.mode names; ProfileError naming the known ones otherwise."""
    try:
        return PROFILES[mode]
    except KeyError:
        raise ProfileError(f"unknown sweep mode '{mode}' (known: {', '.join(PROFILES)})") from None


def from_fields(concurrency: float | None, rate: float | None) -> Level | None:
    """The level a record's (concurrency, rate) columns describe; None when neither is set."""
    for p in PROFILES.values():
        lv = p.from_fields(concurrency, rate)
        if lv is not None:
            return lv
    return None


def mode_of(recorded_mode: str | None, levels: list[Level | None]) -> str:
    """The sweep mode of a run: the one its manifest recorded, else the one its steps' levels share."""
    if recorded_mode in PROFILES:
        return recorded_mode
    kinds = {lv.name for lv in levels if lv is not None}
    if len(kinds) == 1:
        return kinds.pop()
    return ClosedLoop.name


__all__ = ["PROFILES", "ClosedLoop", "Level", "LevelDriver", "OpenLoop", "ProfileError", "from_fields", "mode_of",
           "profile"]
