"""`ridgeline scenarios list|show`."""

from typer.testing import CliRunner

from loadtest.cli_scenarios import scenarios_app


def test_list_names_every_builtin_with_parameters():
    r = CliRunner().invoke(scenarios_app, ["list"])
    assert r.exit_code == 0
    for name in ("chat-short", "rag-long-prompt", "summarise", "shared-prefix", "sharegpt FILE"):
        assert name in r.output
    assert "lognormal(mean=128" in r.output and "prefix_tokens" in r.output


def test_list_json():
    import json

    r = CliRunner().invoke(scenarios_app, ["list", "--json"])
    items = json.loads(r.output)
    assert {i["name"] for i in items} >= {"chat-short", "sharegpt FILE"}


def test_show_a_plan_and_a_bad_dataset(tmp_path):
    plan = tmp_path / "p.yaml"
    plan.write_text("variants: [{name: a}]\nscenario: {builtin: summarise, output_tokens: 7}\n")
    r = CliRunner().invoke(scenarios_app, ["show", str(plan)])
    assert r.exit_code == 0 and '"max_tokens": 7' in r.output and "/v1/completions" in r.output
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"conversations": [{"from": "human", "value": "a"}]}\n{"conversations": 3}\n')
    r = CliRunner().invoke(scenarios_app, ["show", "--builtin", "sharegpt", "--dataset", str(bad)])
    assert r.exit_code == 2 and "record 2 (line 2)" in r.output
