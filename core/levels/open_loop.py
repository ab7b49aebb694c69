"""Open loop at R req/s: requests sent on a schedule fixed in advance, whatever the server does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from core.levels.base import Level, LevelDriver


@dataclass(frozen=True)
class OpenLoop(Level):
    name = "rate"
    plan_key = "rates"
    word = "rate"
    axis = "request rate (req/s)"
    no_levels = "rate sweep needs 'rates'"

    @classmethod
    def from_fields(cls, concurrency: Optional[float], rate: Optional[float]) -> Optional[Level]:
        return cls(float(rate)) if concurrency is None and rate is not None else None

    @property
    def rate(self) -> Optional[float]:
        return float(self.value)

    def label(self) -> str:
        return f"{self.value:g} req/s"

    def drive(self, driver: LevelDriver, ramp_s: float) -> None:  # noqa: ARG002 - an open loop does not ramp
        driver.send_at_rate(float(self.value))
