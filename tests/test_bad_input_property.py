"""Random plans and random dataset records through validation: a typed error or a valid object, never a traceback."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.plan import Plan, PlanError, parse_plan
from scenarios.datasets import Dataset, DatasetError

# more examples for a bug hunt: RIDGELINE_HYPOTHESIS_EXAMPLES=5000
SETTINGS = settings(max_examples=int(os.environ.get("RIDGELINE_HYPOTHESIS_EXAMPLES", "150")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "name": "prop",
    "backend": "external",
    "variants": [{"name": "a", "url": "http://127.0.0.1:8000", "extra_args": ["--x"]},
                 {"name": "b", "url": "http://127.0.0.1:8001", "env": {"K": "v"}}],
    "scenario": {"api": "chat", "prompt_tokens": {"dist": "uniform", "min": 4, "max": 64},
                 "output_tokens": 16, "shared_prefix": {"prefixes": 2, "prefix_tokens": 8},
                 "extra_body": {"fault": "ok"}},
    "sweep": {"mode": "concurrency", "concurrency": [1, 2, 4], "duration_s": 1.0, "warmup_s": 0.5},
    "slo": {"ttft_s": 1.0},
    "timeouts": {"connect_s": 1, "first_token_s": 5, "total_s": 10},
    "server": {"on_failure": "restart"},
    "thresholds": [1.5, 1.0],
}

# keys of the real schema, so random documents reach deep into validation
KEYS = sorted({"name", "backend", "variants", "scenario", "sweep", "slo", "timeouts", "server", "scrape", "model",
               "gpu", "baseline", "thresholds", "url", "preset", "dist", "value", "min", "max", "mean", "std",
               "concurrency", "rates", "mode", "duration_s", "requests", "prompt_tokens", "output_tokens",
               "on_failure", "program", "env", "extra_args", "api", "dataset", "tokenizer", "builtin", "turns",
               "first_token_s", "total_s", "connect_s", "interval_s", "output_dir", "workers", "api_key_env"})

scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["fixed", "uniform", "rate", "chat", "skip", "", "../x", "1e9"]))
keys = st.sampled_from(KEYS) | st.text(max_size=8) | st.integers(-3, 3) | st.booleans() | st.none()
values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=5),
                      max_leaves=25)


def _validate(data) -> None:  # noqa: ANN001
    """Dump to YAML and validate as `ridgeline run` would; only PlanError may come out."""
    try:
        text = yaml.safe_dump(data, allow_unicode=True)
    except yaml.YAMLError:
        return  # not representable as YAML: not a plan anyone can write
    try:
        plan = parse_plan(text, "random.yaml")
    except PlanError as exc:
        assert exc.problems and str(exc).startswith("invalid plan random.yaml:")
        return
    assert isinstance(plan, Plan)
    plan.to_yaml()  # a valid plan can be written back


@SETTINGS
@given(st.dictionaries(keys, values, max_size=8))
def test_random_documents(data):
    _validate(data)


@SETTINGS
@given(st.text(max_size=200))
def test_random_text(text):
    try:
        parse_plan(text, "random.yaml")
    except PlanError:
        pass


def _paths(node, prefix=()):  # noqa: ANN001, ANN202
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated(draw):  # noqa: ANN001, ANN201
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        last = path[-1]
        op = draw(st.sampled_from(["delete", "replace", "add", "typo"]))
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(values)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif op == "typo" and isinstance(parent, dict) and isinstance(last, str) and last:
            i = draw(st.integers(0, len(last) - 1))
            parent[last[:i] + last[i + 1:] + draw(st.sampled_from(["", "s", "_"]))] = parent.pop(last)
    return doc


def test_the_valid_plan_is_valid():
    """The document the mutations start from is accepted, with the values it gives."""
    plan = parse_plan(yaml.safe_dump(VALID), "valid.yaml")
    assert [(v.name, v.url) for v in plan.variants] == [("a", "http://127.0.0.1:8000"), ("b", "http://127.0.0.1:8001")]
    assert plan.variants[0].extra_args == ["--x"] and plan.variants[1].env == {"K": "v"}
    assert plan.scenario.api == "chat" and plan.scenario.shared_prefix.prefixes == 2
    assert list(plan.sweep.concurrency) == [1, 2, 4] and plan.slo.ttft_s == 1.0
    assert plan.server.on_failure == "restart" and list(plan.thresholds) == [1.5, 1.0]


@SETTINGS
@given(mutated())
def test_mutations_of_a_valid_plan(doc):
    _validate(doc)


# --- datasets ----------------------------------------------------------------------------------

turn = st.fixed_dictionaries({}, optional={"from": st.sampled_from(["human", "gpt", "system", "robot"]) | scalars,
                                           "value": st.text(max_size=20) | scalars,
                                           "role": st.sampled_from(["user", "assistant"]),
                                           "content": st.text(max_size=10)})
sharegpt = st.fixed_dictionaries({}, optional={"id": scalars, "conversations": st.lists(turn, max_size=5) | values})
prompts = st.fixed_dictionaries({}, optional={"prompt": st.text(max_size=20) | scalars,
                                              "output_tokens": st.integers(-2, 5) | scalars})
record = sharegpt | prompts | values


def _load(path: Path) -> None:
    try:
        ds = Dataset(path)
    except DatasetError as exc:
        assert str(exc).startswith("dataset ")
        return
    assert len(ds) > 0
    for i in range(len(ds)):
        assert ds.record(i)
    ds.describe()


@SETTINGS
@given(st.lists(record, min_size=0, max_size=6), st.booleans())
def test_random_dataset_records(records, as_list):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("data.json" if as_list else "data.jsonl")
        try:
            if as_list:
                path.write_text(json.dumps(records))
            else:
                path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        except ValueError:
            return  # NaN and friends are still written by json.dumps; values it refuses are skipped
        _load(path)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_dataset_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "data.jsonl"
        path.write_bytes(data)
        _load(path)
