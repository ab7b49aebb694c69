"""A load level as one typed value: read from the plan, from the records, and driven through one interface."""

from __future__ import annotations

import pytest

from core.levels import PROFILES, ClosedLoop, OpenLoop, ProfileError, from_fields, mode_of, profile
from core.plan import PlanError, parse_plan

VARIANTS = "variants: [{name: a}]\n"


class Calls:
    """Records which of the driver's two ways a level asked for."""

    def __init__(self):
        self.calls = []

    def hold_users(self, users, ramp_s):
        self.calls.append(("hold_users", users, ramp_s))

    def send_at_rate(self, rate):
        self.calls.append(("send_at_rate", rate))


def test_the_plan_lists_typed_levels_in_order():
    p = parse_plan(VARIANTS + "sweep: {concurrency: [1, 4, 16]}\n")
    assert p.sweep.load_levels() == [ClosedLoop(1.0), ClosedLoop(4.0), ClosedLoop(16.0)]
    p = parse_plan(VARIANTS + "sweep: {mode: rate, rates: [0.5, 2]}\n")
    assert p.sweep.load_levels() == [OpenLoop(0.5), OpenLoop(2.0)]
    assert p.sweep.levels() == [0.5, 2.0]


def test_an_unknown_mode_names_the_known_ones():
    with pytest.raises(PlanError, match=r"sweep.mode.*unknown sweep mode 'burst' \(known: concurrency, rate\)"):
        parse_plan(VARIANTS + "sweep: {mode: burst}\n")
    with pytest.raises(ProfileError):
        profile("burst")


def test_record_columns_round_trip():
    assert from_fields(8, None) == ClosedLoop(8.0) and ClosedLoop(8.0).concurrency == 8
    assert from_fields(None, 2.5) == OpenLoop(2.5) and OpenLoop(2.5).rate == 2.5
    assert ClosedLoop(8.0).rate is None and OpenLoop(2.5).concurrency is None
    assert from_fields(None, None) is None
    assert ClosedLoop(8.0) != OpenLoop(8.0)
    assert (ClosedLoop(8.0).label(), OpenLoop(2.5).label()) == ("c=8", "2.5 req/s")


def test_the_mode_is_the_recorded_one_else_the_steps_kind():
    assert mode_of("rate", [ClosedLoop(1.0)]) == "rate"
    assert mode_of(None, [OpenLoop(1.0), OpenLoop(2.0), None]) == "rate"
    assert mode_of("bogus", [ClosedLoop(1.0)]) == "concurrency"
    assert mode_of(None, []) == "concurrency"


def test_each_level_drives_its_own_way():
    d = Calls()
    ClosedLoop(4.0).drive(d, 1.5)
    OpenLoop(3.0).drive(d, 1.5)
    assert d.calls == [("hold_users", 4, 1.5), ("send_at_rate", 3.0)]
    assert set(PROFILES) == {"concurrency", "rate"}
