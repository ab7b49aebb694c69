"""Backends behind one interface: the plan, the reports and the launcher ask the registry."""

from __future__ import annotations

import pytest

from core.backends import BACKENDS, backend, is_modelled, note
from core.plan import PlanError, parse_plan
from deploy.servers import SERVER_COMMANDS, server_commands


def test_every_backend_can_be_started_and_is_named_in_reports():
    assert set(SERVER_COMMANDS) == set(BACKENDS) == {"emulator", "vllm", "external"}
    assert note("emulator") == "emulator — modelled, not measured on a GPU"
    assert note("vllm") == "vllm — measured on real servers"
    assert note("external") == "external — measured on servers run elsewhere"
    assert note("something-older") == "something-older"  # a results directory from elsewhere reads as it is
    assert is_modelled("emulator") and not is_modelled("vllm") and not is_modelled("nope")
    # what checks, verification, telemetry and quality ask instead of comparing names
    assert [b.name for b in BACKENDS.values() if b.launches_vllm] == ["vllm"]
    assert [b.name for b in BACKENDS.values() if not b.starts_servers] == ["external"]


def test_the_plan_refuses_an_unknown_backend_naming_the_known_ones():
    with pytest.raises(PlanError, match=r"backend.*unknown backend 'sglang' \(known: emulator, vllm, external\)"):
        parse_plan("backend: sglang\nvariants: [{name: a}]\n")


def test_a_backend_that_needs_urls_says_so_and_starts_nothing():
    assert backend("external").needs_url and not backend("external").starts_servers
    with pytest.raises(PlanError, match="backend external needs a url for every variant"):
        parse_plan("backend: external\nvariants: [{name: a}]\n")
    plan = parse_plan("backend: external\nvariants: [{name: a, url: 'http://127.0.0.1:9'}]\n")
    (cmd,) = server_commands(plan)
    assert cmd.argv == [] and cmd.url == "http://127.0.0.1:9"
