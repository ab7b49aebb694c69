"""Prompts of exact length with a tokenizer, shared prefixes, multi-turn bodies, built-ins."""

import json

import numpy as np
import pytest

from core.plan import ScenarioSpec, parse_plan
from core.scenario_builtins import BUILTINS, listing
from scenarios.openai_stream import Timeouts, make_client
from scenarios.prompts import ScenarioError, TokenizerPrompter, WordPrompter, load_tokenizer
from scenarios.users import StepControl, send_one
from scenarios.workload import build_workload

TEXT = ("The quick brown fox jumps over the lazy dog. Prefix caching keeps the keys and values of a shared "
        "system prompt, so the second request with it skips the prefill. Quantised weights halve the bytes "
        "read per decoded token; compute-bound batches gain nothing from it. ") * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A byte-level BPE tokenizer trained here on a few paragraphs, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    from scenarios.prompts import WORDS

    corpus = [TEXT, " ".join(WORDS)] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    d = tmp_path_factory.mktemp("tok")
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return d


def test_exact_prompts_with_a_tokenizer(tokenizer_dir):
    p = TokenizerPrompter(str(tokenizer_dir))
    tok = load_tokenizer(str(tokenizer_dir))
    rng = np.random.default_rng(0)
    for n in [1, 2, 7, 64, 333, 1024, 4000]:
        t = p.text(n, rng)
        assert len(tok.encode(t, add_special_tokens=False).ids) == n


def test_workload_with_tokenizer_says_exact(tokenizer_dir):
    spec = ScenarioSpec(tokenizer=str(tokenizer_dir), prompt_tokens={"dist": "uniform", "min": 10, "max": 300})
    wl = build_workload(spec, "m")
    tok = load_tokenizer(str(tokenizer_dir))
    for _ in range(20):
        r = wl.next_request()
        assert len(tok.encode(r.body["prompt"], add_special_tokens=False).ids) == r.prompt_tokens
    d = wl.describe()
    assert d["exact_prompt_tokens"] is True and d["prompt_token_count"].startswith("exact")
    assert build_workload(ScenarioSpec(), "m").describe()["prompt_token_count"].startswith("approximate")


def test_a_directory_that_is_not_a_tokenizer_fails_clearly(tmp_path):
    with pytest.raises(ScenarioError, match="not a Hugging Face tokenizer directory: it has no tokenizer.json"):
        build_workload(ScenarioSpec(tokenizer=str(tmp_path)), "m")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ScenarioError, match="tokenizer.json cannot be loaded"):
        build_workload(ScenarioSpec(tokenizer=str(tmp_path)), "m")
    with pytest.raises(ScenarioError, match="no such file"):
        build_workload(ScenarioSpec(tokenizer=str(tmp_path / "nope")), "m")


def test_word_prompts_are_one_word_per_token():
    rng = np.random.default_rng(1)
    t = WordPrompter().text(50, rng)
    assert len(t.split()) == 50


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_shared_prefix_bodies(api):
    spec = ScenarioSpec(api=api, shared_prefix={"prefixes": 3, "prefix_tokens": 100, "questions": 4},
                        prompt_tokens=20, output_tokens=9)
    wl = build_workload(spec, "m")
    prefixes, pairs = set(), set()
    for _ in range(300):
        r = wl.next_request()
        if api == "chat":
            sys_msg, user = r.body["messages"]
            assert sys_msg["role"] == "system" and user["role"] == "user"
            prefix, q = sys_msg["content"], user["content"]
        else:
            prefix, q = r.body["prompt"].split("\n\n")
        assert len(prefix.split()) == 100 and len(q.split()) == 20
        prefixes.add(prefix)
        pairs.add((prefix, q))
        assert r.prompt_tokens == 120 and r.body["max_tokens"] == 9
    assert len(prefixes) == 3
    assert len(pairs) == 12  # 3 system prompts x 4 questions each, all seen
    assert wl.describe()["shared_prefix"]["questions"] == 4


def test_multi_turn_session_resends_history_with_answers():
    spec = ScenarioSpec(api="chat", turns=3, prompt_tokens=5, output_tokens=4)
    wl = build_workload(spec, "m")
    s = wl.session()
    r1 = s.next_request()
    assert (r1.turn, r1.keep_text) == (1, True) and len(r1.body["messages"]) == 1
    with pytest.raises(RuntimeError, match="in flight"):
        s.next_request()
    r1.on_done(True, "answer one", 4)
    r2 = s.next_request()
    msgs = r2.body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0] == r1.body["messages"][0] and msgs[1]["content"] == "answer one"
    assert r2.turn == 2 and r2.session == r1.session and r2.prompt_tokens == 5 + 4 + 5
    r2.on_done(True, "answer two", 4)
    r3 = s.next_request()
    assert len(r3.body["messages"]) == 5 and r3.turn == 3
    r3.on_done(True, "three", 4)
    r4 = s.next_request()  # the conversation is over: a new one starts
    assert r4.turn == 1 and r4.session != r1.session and len(r4.body["messages"]) == 1
    r4.on_done(False, None, None)  # a failed turn starts over too
    assert s.next_request().turn == 1


def test_open_loop_pool_lends_idle_conversations():
    wl = build_workload(ScenarioSpec(api="chat", turns=2, prompt_tokens=3, output_tokens=2), "m")
    a, b = wl.next_request(), wl.next_request()
    assert a.session != b.session  # both in flight: two conversations
    a.on_done(True, "x", 2)
    c = wl.next_request()
    assert c.session == a.session and c.turn == 2


def test_multi_turn_needs_chat():
    with pytest.raises(ValueError, match="needs api: chat"):
        ScenarioSpec(turns=2)


def test_multi_turn_against_a_server_sends_back_its_answers(null_server):
    import gevent

    srv = null_server(events=0)
    wl = build_workload(ScenarioSpec(api="chat", turns=3, prompt_tokens=3, output_tokens=5), "m")
    ctl = StepControl()
    ctl.begin("v", 0, 1, None)
    client = make_client(srv.url, Timeouts())
    conv = wl.session()
    sent = []
    for _ in range(4):
        req = conv.next_request()
        sent.append(req)
        rec = send_one(client, req, Timeouts(), ctl)
        assert rec.status == "ok"
    gevent.sleep(0)
    client.close()
    assert sent[2].body["messages"][1] == {"role": "assistant", "content": " tok" * 5}
    assert sent[2].body["messages"][3] == {"role": "assistant", "content": " tok" * 5}
    ids = [r.request_id for r in ctl.records]
    assert [i.rsplit("/", 1)[1] for i in ids] == ["t1", "t2", "t3", "t1"]


def test_builtins_apply_defaults_and_the_plan_wins(tmp_path):
    s = ScenarioSpec(builtin="rag-long-prompt")
    assert s.prompt_tokens.mean == 4000 and s.api == "chat"
    s = ScenarioSpec(builtin="rag-long-prompt", api="completions", output_tokens=50)
    assert s.api == "completions" and s.output_tokens.value == 50 and s.prompt_tokens.mean == 4000
    plan = parse_plan("variants: [{name: a}]\nscenario: {builtin: shared-prefix, shared_prefix: {prefixes: 2}}\n")
    assert plan.scenario.shared_prefix.prefixes == 2 and plan.scenario.shared_prefix.prefix_tokens == 1024
    with pytest.raises(Exception, match="unknown builtin scenario 'chat-long'"):
        parse_plan("variants: [{name: a}]\nscenario: {builtin: chat-long}\n", "p.yaml")
    with pytest.raises(Exception, match="needs scenario.dataset"):
        parse_plan("variants: [{name: a}]\nscenario: {builtin: sharegpt}\n", "p.yaml")
    for name in BUILTINS:
        if name != "sharegpt":
            build_workload(ScenarioSpec(builtin=name), "m").next_request()
    assert [x["name"] for x in listing()][-1] == "sharegpt FILE"


def test_output_is_forced_by_ignore_eos_and_min_tokens_only_when_asked():
    plain = build_workload(ScenarioSpec(output_tokens=32), "m").next_request().body
    assert plain["ignore_eos"] is True and plain["max_tokens"] == 32 and "min_tokens" not in plain
    both = build_workload(ScenarioSpec(output_tokens=32, min_tokens=True), "m")
    assert both.next_request().body["min_tokens"] == 32
    assert both.describe()["output_forced"] == ["ignore_eos", "min_tokens"]
    free = build_workload(ScenarioSpec(output_tokens=32, ignore_eos=False), "m")
    assert "ignore_eos" not in free.next_request().body and free.describe()["output_forced"] == []
