"""ridgeline's traffic under plain Locust: `locust -f scenarios/locustfile.py --host URL`.

Each user is a closed-loop streaming user of one scenario (a built-in, a plan's scenario section,
or a dataset). Locust's own statistics and web UI show every request twice: "<scenario> e2e"
(end to end, POST) and "<scenario>" (time to first token, TTFT). Options:

    --rl-scenario NAME    built-in scenario (ridgeline scenarios list), default chat-short
    --rl-plan FILE        take the scenario section of a ridgeline plan instead
    --rl-dataset FILE     ShareGPT or prompts file (needed by --rl-scenario sharegpt)
    --rl-tokenizer DIR    Hugging Face tokenizer directory: prompts of exact token counts
    --rl-model NAME       model name in the requests (default: the first the server lists)
    --rl-turns N          turns per chat session (multi-turn resends the history)

Distributed Locust works as usual (--master / --worker, each side given the same options).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run by path: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from locust import events  # noqa: E402

from core.plan import ScenarioSpec, load_plan  # noqa: E402
from scenarios.openai_stream import Timeouts, served_model  # noqa: E402
from scenarios.users import StepControl, StreamingUser  # noqa: E402
from scenarios.workload import build_workload  # noqa: E402

CONTROL = StepControl(keep_records=False)


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # noqa: ANN001
    g = parser.add_argument_group("ridgeline")
    g.add_argument("--rl-scenario", default="chat-short", help="built-in scenario (ridgeline scenarios list)")
    g.add_argument("--rl-plan", default=None, help="use the scenario section of this ridgeline plan")
    g.add_argument("--rl-dataset", default=None, help="ShareGPT or prompts file")
    g.add_argument("--rl-tokenizer", default=None, help="Hugging Face tokenizer directory (exact prompt lengths)")
    g.add_argument("--rl-model", default=None, help="model name sent in requests (default: the server's first)")
    g.add_argument("--rl-turns", type=int, default=None, help="turns per chat session")
    g.add_argument("--rl-first-token-timeout", type=float, default=300.0, help="seconds to the first token")


def scenario_from_options(opts):  # noqa: ANN001, ANN201
    """The ScenarioSpec the options describe; bad input raises with what is wrong."""
    if opts.rl_plan:
        spec = load_plan(opts.rl_plan).scenario.model_dump(exclude_unset=True)
    else:
        spec = {"builtin": opts.rl_scenario}
    if opts.rl_dataset:
        spec["dataset"] = opts.rl_dataset
    if opts.rl_tokenizer:
        spec["tokenizer"] = opts.rl_tokenizer
    if opts.rl_turns:
        spec["turns"] = opts.rl_turns
    return ScenarioSpec.model_validate(spec)


def _configure(environment) -> None:  # noqa: ANN001
    opts = environment.parsed_options
    spec = scenario_from_options(opts)
    host = environment.host or ScenarioUser.host
    model = opts.rl_model or served_model(host, None) or "default"
    ScenarioUser.workload = build_workload(spec, model)
    ScenarioUser.timeouts = Timeouts(first_token_s=opts.rl_first_token_timeout)
    name = "plan" if opts.rl_plan else (spec.builtin or "scenario")
    CONTROL.begin(name, 0, None, None)
    CONTROL.window_start = 0.0  # every request is measured


@events.test_start.add_listener
def _on_test_start(environment, **kw) -> None:  # noqa: ANN001
    if environment.parsed_options is not None and not hasattr(environment.runner, "server"):  # not the master
        _configure(environment)


class ScenarioUser(StreamingUser):
    """One closed-loop streaming user of the chosen scenario."""

    abstract = False
    control = CONTROL
