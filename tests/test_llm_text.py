import json

import pytest

from data_gen.chat_client import ChatConfig, ChatError, chat
from data_gen.sim.generate import GenConfig, generate
from data_gen.sim.llm_text import required_values, rewrite_all
from data_gen.trace import trace_from_dict


def _traces(n_tasks=3):
    cfg = GenConfig(n_tasks=n_tasks, seed=9, max_tools=2, workers=1)
    return [t for r in generate(cfg) for t in r.traces]


def test_client_retries_server_errors(chat_server):
    chat_server.fail_every = 2  # requests 2, 4, ... fail with 503
    cfg = ChatConfig(url=chat_server.url, model="m", backoff_s=0.01)
    for _ in range(3):
        reply = chat(cfg, [{"role": "user", "content": "x\n<<<\nhello 42\n>>>"}])
        assert reply.text == "In my words: hello 42" and reply.completion_tokens == 5
    assert chat_server.count > 3


def test_client_fails_fast_on_4xx_and_names_the_url(chat_server):
    chat_server.stop_after = -1
    with pytest.raises(ChatError, match="HTTP 400: quota exhausted"):
        chat(ChatConfig(url=chat_server.url, backoff_s=0.01), [{"role": "user", "content": "a"}])
    with pytest.raises(ChatError, match="gave up after 2 attempts"):
        chat(ChatConfig(url="http://127.0.0.1:9/v1", retries=1, backoff_s=0.01),
             [{"role": "user", "content": "a"}])


def test_rewrite_keeps_structure_and_values(chat_server, tmp_path):
    chat_server.drop_on = 3  # one answer drops the values: the template must be kept
    traces = _traces()
    out = tmp_path / "llm.jsonl"
    stats = rewrite_all(traces, ChatConfig(url=chat_server.url, model="tiny"), out, concurrency=3)
    back = {t.trace_id: t for t in map(trace_from_dict, map(json.loads, out.read_text().splitlines()))}
    assert stats.traces == len(traces) == len(back)
    assert stats.kept_template >= 1 and stats.prompt_tokens > 0
    for t in traces:
        b = back[t.trace_id]
        assert b.label == t.label and [s.agent for s in b.steps] == [s.agent for s in t.steps]
        for s, bs in zip(t.steps, b.steps):
            assert all(v in bs.content for v in required_values(s.content))
        assert sum(bs.content.startswith("In my words: ") for bs in b.steps) >= len(b.steps) - 1


def test_interrupted_run_resumes_without_duplicates(chat_server, tmp_path):
    traces = _traces(4)
    out = tmp_path / "llm.jsonl"
    cfg = ChatConfig(url=chat_server.url, model="tiny", backoff_s=0.01)
    chat_server.stop_after = 25  # the endpoint starts refusing mid-run
    with pytest.raises(ChatError):
        rewrite_all(traces, cfg, out, concurrency=1)
    partial = out.read_text().splitlines()
    assert 0 < len(partial) < len(traces)
    with out.open("a") as f:
        f.write('{"trace_id": "torn')  # a line cut off by the interruption
    chat_server.stop_after = 0
    rewrite_all(traces, cfg, out, concurrency=2)
    ids = [json.loads(line)["trace_id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == sorted(t.trace_id for t in traces)
