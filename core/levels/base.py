"""What every load profile's level provides (the interface runner, drivers and analysis use)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol

from core.errors import RidgelineError


class ProfileError(RidgelineError, ValueError):
    """A sweep mode no profile provides."""


class LevelDriver(Protocol):
    """The two ways a driver can put load on a server; a level picks one in ``Level.drive``."""

    def hold_users(self, users: int, ramp_s: float) -> None:
        """Keep `users` closed-loop users sending, each waiting for its answer before the next."""

    def send_at_rate(self, rate: float) -> None:
        """Send on an arrival schedule of `rate` requests/s fixed in advance (open loop)."""


@dataclass(frozen=True)
class Level:
    """One load level: the value the driver holds constant through a step."""

    name: ClassVar[str]  # the sweep.mode that selects this profile
    plan_key: ClassVar[str]  # the sweep key that lists its levels
    word: ClassVar[str]  # how tables and sentences name the level ("concurrency", "rate")
    axis: ClassVar[str]  # the chart axis label
    no_levels: ClassVar[str]  # the plan error when the sweep lists none

    value: float

    @classmethod
    def from_sweep(cls, sweep: Any) -> list["Level"]:
        """The levels of a plan's sweep section, in plan order."""
        return [cls(float(v)) for v in getattr(sweep, cls.plan_key)]

    @classmethod
    def from_fields(cls, concurrency: Optional[float], rate: Optional[float]) -> Optional["Level"]:
        """This profile's level from a record's (concurrency, rate) columns, or None when they are not its."""
        raise NotImplementedError

    @property
    def concurrency(self) -> Optional[int]:
        """The records' `concurrency` column (None: not a closed-loop level)."""
        return None

    @property
    def rate(self) -> Optional[float]:
        """The records' `rate` column (None: not an open-loop level)."""
        return None

    def label(self) -> str:
        """Short text for progress lines and logs."""
        raise NotImplementedError

    def drive(self, driver: LevelDriver, ramp_s: float) -> None:
        """Start putting this level's load on the server through the driver."""
        raise NotImplementedError
