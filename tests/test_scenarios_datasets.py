"""Dataset files: every format loads; every malformed one fails naming the file, record and line."""

import json

import pytest

from core.plan import ScenarioSpec
from scenarios.datasets import Dataset, DatasetError, load_dataset
from scenarios.workload import build_workload


def conv(*pairs):
    out = []
    for h, g in pairs:
        out += [{"from": "human", "value": h}, {"from": "gpt", "value": g}]
    return {"id": "x", "conversations": out}


RECORDS = [conv(("hello there", "general kenobi " * 20)),
           conv(("first question", "first answer"), ("second question", "second answer")),
           {"conversations": []},  # no usable turn: skipped
           conv(("third", "x " * 300))]


def test_sharegpt_json_list(tmp_path):
    p = tmp_path / "sg.json"
    p.write_text(json.dumps(RECORDS, indent=2))
    ds = Dataset(p)
    assert (ds.format, ds.container, len(ds), ds.skipped, ds.records_read) == ("sharegpt", "json", 3, 1, 4)
    assert ds.record(1)[1].prompt == "second question" and ds.record(1)[1].reply == "second answer"


def test_sharegpt_jsonl_rereads_records_lazily(tmp_path):
    p = tmp_path / "sg.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    ds = Dataset(p)
    assert (ds.format, ds.container, len(ds), ds.skipped) == ("sharegpt", "jsonl", 3, 1)
    assert not ds._turns  # only offsets are held
    assert ds.record(2)[0].prompt == "third"


def test_json_list_read_in_small_blocks(tmp_path):
    from scenarios.datasets import _iter_json_list

    p = tmp_path / "sg.json"
    p.write_text(json.dumps(RECORDS * 50))
    got = [r for r, _ in _iter_json_list(p, block=37)]
    assert got == RECORDS * 50


def test_prompts_jsonl(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "write a poem", "output_tokens": 64}\n{"prompt": "and another"}\n')
    ds = Dataset(p)
    assert ds.format == "prompts" and len(ds) == 2
    assert ds.record(0)[0].output_tokens == 64 and ds.record(1)[0].output_tokens is None


@pytest.mark.parametrize("name,text,record,line,why", [
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', 2, 2, "not JSON"),
    ("types.jsonl", '{"prompt": "a"}\n\n{"prompt": 3}\n', 2, 3, "'prompt' must be a string, got a number"),
    ("empty_prompt.jsonl", '{"prompt": "  "}\n', 1, 1, "'prompt' is empty"),
    ("out.jsonl", '{"prompt": "a", "output_tokens": "many"}\n', 1, 1, "'output_tokens' must be a whole number"),
    ("noturns.jsonl", '{"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}\n'
                      '{"id": 2, "conversations": null}\n', 2, 2, "missing turns"),
    ("turn.jsonl", '{"conversations": [{"from": "human", "value": 5}]}\n', 1, 1, "'value' must be a string"),
    ("speaker.jsonl", '{"conversations": [{"from": "robot", "value": "x"}]}\n', 1, 1, "unknown speaker"),
    ("list.jsonl", '{"prompt": "a"}\n["a", "b"]\n', 2, 2, "expected an object, got a list"),
    ("what.jsonl", '{"text": "a"}\n', 1, 1, "cannot tell the format"),
])
def test_malformed_jsonl_names_file_record_and_line(tmp_path, name, text, record, line, why):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(DatasetError) as ei:
        Dataset(p)
    e = ei.value
    assert (e.record, e.line) == (record, line)
    assert why in str(e) and str(p) in str(e) and f"record {record} (line {line})" in str(e)


def test_malformed_json_list_names_the_record(tmp_path):
    p = tmp_path / "sg.json"
    p.write_text('[\n' + json.dumps(RECORDS[0]) + ',\n' + json.dumps(RECORDS[1]) + ',\n{"conversations": 7}\n]')
    with pytest.raises(DatasetError, match=r"record 3 \(line 4\): 'conversations' must be a list"):
        Dataset(p)
    p.write_text('[\n' + json.dumps(RECORDS[0]) + ',\n{"conversations": [}\n]')
    with pytest.raises(DatasetError, match=r"record 2 \(line 3\): not JSON"):
        Dataset(p)
    p.write_text('[' + json.dumps(RECORDS[0]))
    with pytest.raises(DatasetError, match="not closed"):
        Dataset(p)


@pytest.mark.parametrize("text,why", [("", "empty file"), ("   \n", "empty file"), ("[]", "empty: no usable record"),
                                      ('[{"conversations": []}]', "1 conversations have no human turn")])
def test_empty_files(tmp_path, text, why):
    p = tmp_path / "e.json"
    p.write_text(text)
    with pytest.raises(DatasetError, match=why):
        Dataset(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match="not a file"):
        Dataset(tmp_path)


def test_not_utf8(tmp_path):
    p = tmp_path / "b.json"
    p.write_bytes(b'[{"conversations": "\xff\xfe"}]')
    with pytest.raises(DatasetError, match="not UTF-8"):
        Dataset(p)


def test_sharegpt_workload_uses_prompts_and_reply_lengths(tmp_path):
    p = tmp_path / "sg.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in RECORDS))
    spec = ScenarioSpec(builtin="sharegpt", dataset=str(p))
    wl = build_workload(spec, "m")
    seen = {}
    for _ in range(30):
        r = wl.next_request()
        seen[r.body["messages"][-1]["content"]] = r.output_tokens
        assert r.body["max_tokens"] == r.output_tokens and r.body["ignore_eos"] is True
    assert set(seen) == {"hello there", "first question", "third"}
    assert seen["third"] == 300  # approximate count of the reply: 300 words
    d = wl.describe()
    assert d["kind"] == "dataset" and d["dataset"]["records"] == 3 and d["exact_prompt_tokens"] is False


def test_prompts_without_output_tokens_fail_when_lengths_come_from_the_file(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a", "output_tokens": 3}\n{"prompt": "b"}\n')
    spec = ScenarioSpec(dataset=str(p), prompt_tokens={"dist": "dataset"}, output_tokens={"dist": "dataset"})
    with pytest.raises(ValueError, match=r"record 2: output_tokens is 'dataset'"):
        build_workload(spec, "m")
    spec = ScenarioSpec(dataset=str(p), output_tokens=7)
    assert build_workload(spec, "m").next_request().output_tokens == 7
