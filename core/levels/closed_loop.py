"""Closed loop at C: C users, each sending its next request when the last one has answered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from core.levels.base import Level, LevelDriver


@dataclass(frozen=True)
class ClosedLoop(Level):
    name = "concurrency"
    plan_key = "concurrency"
    word = "concurrency"
    axis = "concurrency (requests in flight)"
    no_levels = "concurrency sweep has no steps"

    @classmethod
    def from_fields(cls, concurrency: Optional[float], rate: Optional[float]) -> Optional[Level]:
        return cls(float(concurrency)) if concurrency is not None else None

    @property
    def concurrency(self) -> Optional[int]:
        return int(self.value)

    def label(self) -> str:
        return f"c={int(self.value)}"

    def drive(self, driver: LevelDriver, ramp_s: float) -> None:
        driver.hold_users(int(self.value), ramp_s)
