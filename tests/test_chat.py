"""Chat-message logs (data_gen/chat.py), entity marks (data_gen/marks.py) and the DHCG rules
that use them. The dialect files under tests/data/chat and docs/examples are written from the
OpenAI chat completions and Anthropic Messages documentation."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from data_gen.chat import to_chat
from data_gen.dhcg import EDGE_TYPES, build_dhcg
from data_gen.files import RawRecord
from data_gen.marks import entity_marks, override_marks, single_agent
from data_gen.readers import detect_format, load_traces, read_record
from data_gen.stage_files import SINGLE_AGENT, coarse_verdict
from data_gen.trace import TraceError, trace_from_dict

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).parent / "data"
EXAMPLES = ROOT / "docs" / "examples"


def _kinds(t):
    return {a: m.kind for a, m in entity_marks(t).items()}


def _read(messages, name="run.json"):
    return read_record(RawRecord(name, None, messages))


def test_openai_example_reads_with_tool_steps_and_marks():
    rep = load_traces(EXAMPLES / "chat_openai.json")
    assert not rep.errors and not rep.warnings
    t = rep.traces[0]
    assert detect_format(json.loads((EXAMPLES / "chat_openai.json").read_text())) == "chat"
    assert [s.agent for s in t.steps] == ["system", "user", "assistant", "web_search",
                                          "assistant"]
    assert [s.kind for s in t.steps] == ["message", "message", "tool_call", "tool_result",
                                         "message"]
    assert t.steps[2].tool.name == "web_search"
    assert t.steps[2].tool.arguments == {"query": "Paris population 1923"}
    assert t.task.question == "What was the population of Paris in 2023?"
    assert t.extra == {"id": "paris-population", "model": "gpt-4o-mini",
                       "mistake_note": "step 2 searched for the wrong year"}
    assert _kinds(t) == {"system": "human", "user": "human", "assistant": "agent",
                         "web_search": "tool"}
    assert single_agent(t)
    assert to_chat(t) == json.loads((EXAMPLES / "chat_openai.json").read_text())


def test_anthropic_example_tool_result_in_a_user_message_is_a_tool_step():
    t = load_traces(EXAMPLES / "chat_anthropic.json").traces[0]
    assert [s.agent for s in t.steps] == ["user", "assistant", "web_search", "assistant"]
    assert t.steps[1].kind == "tool_call" and t.steps[1].content.startswith("I will search")
    assert t.steps[2].kind == "tool_result" and "2,906,472" in t.steps[2].content
    assert _kinds(t)["web_search"] == "tool" and _kinds(t)["user"] == "human"
    assert to_chat(t) == json.loads((EXAMPLES / "chat_anthropic.json").read_text())


def test_jsonl_holds_one_run_per_line():
    rep = load_traces(EXAMPLES / "chat_runs.jsonl")
    assert not rep.errors and [t.trace_id for t in rep.traces] == ["chat_runs:1", "chat_runs:2"]
    assert all(t.steps[2].agent == "add" and t.steps[2].kind == "tool_result"
               for t in rep.traces)


def test_legacy_function_role_developer_and_named_assistant():
    t = load_traces(HERE / "chat" / "openai_legacy.json").traces[0]
    assert [s.agent for s in t.steps] == ["developer", "user", "assistant", "get_weather",
                                          "WeatherBot"]
    assert t.steps[1].content == "Weather in Oslo?"
    assert _kinds(t) == {"developer": "human", "user": "human", "assistant": "agent",
                         "get_weather": "tool", "WeatherBot": "agent"}
    assert not single_agent(t)


def test_anthropic_thinking_parallel_calls_and_error_result():
    rep = load_traces(HERE / "chat" / "anthropic_multi.json")
    assert not rep.warnings
    t = rep.traces[0]
    assert "Two lookups" in t.steps[1].content and t.steps[1].content.count("lookup(") == 2
    assert t.steps[2].agent == "lookup" and t.steps[2].tool.status == "error"
    assert t.extra == {"metadata": {"task": "geo-1"}}


def test_dhcg_gives_tool_results_return_edges_and_never_blames_tools():
    t = load_traces(EXAMPLES / "chat_openai.json").traces[0]
    g = build_dhcg(t)
    assert [a for a, e in zip(g.agents, g.agent_is_env) if not e] == ["assistant"]
    ret = {r for r, e in zip(g.receivers, g.edge_type) if EDGE_TYPES[e] == "return"}
    assert g.step_node[3] in ret and g.step_node[4] not in ret
    # a user's word overrides the format's
    t2 = override_marks(t, {"user": "agent"})
    assert not build_dhcg(t2).agent_is_env[t2.agents.index("user")]
    with pytest.raises(TraceError, match="nobody"):
        override_marks(t, {"nobody": "agent"})


def test_marks_are_stored_in_the_native_format_and_old_files_still_read():
    t = load_traces(EXAMPLES / "chat_openai.json").traces[0]
    d = t.to_dict()
    assert {a["name"]: a["kind"] for a in d["system"]["agents"]}["web_search"] == "tool"
    assert trace_from_dict(d).system == t.system
    old = dict(d, system={"agents": [{"name": a["name"]} for a in d["system"]["agents"]]})
    back = trace_from_dict(old)
    assert all(a.kind is None for a in back.system.agents)
    assert _kinds(back)["web_search"] == "tool"  # the run's structure: every step a result
    bad = dict(d, system={"agents": [{"name": "user", "kind": "robot"}]})
    with pytest.raises(TraceError, match=r"system.agents\[0\].kind"):
        trace_from_dict(bad)


def test_single_agent_verdict_says_so():
    cands = {"trace_id": "x", "agents": [{"agent": "assistant", "score": 1.0,
                                          "steps": [{"step": 2, "score": 0.4}]}],
             "single_agent": True}
    assert coarse_verdict(cands)["reason"].startswith(SINGLE_AGENT)
    assert not coarse_verdict(dict(cands, single_agent=False))["reason"].startswith(SINGLE_AGENT)


# --- bad input: each named with its file and position, the rest of the run read -------------

def test_unknown_role_is_a_warning_and_the_message_is_kept():
    t, w = _read([{"role": "user", "content": "hi"}, {"role": "critic", "content": "no"},
                  {"role": "assistant", "content": "ok"}])
    assert len(t.steps) == 3 and t.steps[1].agent == "critic"
    assert any("[1].role" in x and "unknown role 'critic'" in x for x in w)


def test_tool_result_answering_no_call_and_a_call_never_answered():
    t, w = _read({"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "zzz", "content": "orphan"},
        {"role": "assistant", "content": "done"}]})
    assert len(t.steps) == 4 and t.steps[2].kind == "tool_result"
    assert any("messages[2]" in x and "'zzz' answers no call" in x for x in w)
    assert any("messages[1]" in x and "'a' (f) is never answered" in x for x in w)


def test_empty_and_non_text_content_are_named():
    t, w = _read([{"role": "user", "content": "look"},
                  {"role": "assistant", "content": ""},
                  {"role": "assistant", "content": [{"type": "image_url",
                                                     "image_url": {"url": "x"}}]},
                  {"role": "assistant", "content": 42}])
    assert len(t.steps) == 4 and t.steps[2].content == "[image_url]"
    assert any("[1].content: empty" in x for x in w)
    assert any("[2].content[0]: image_url part has no text" in x for x in w)
    assert any("[3].content: expected a string" in x for x in w)


def test_runs_of_zero_and_one_message(tmp_path):
    with pytest.raises(TraceError, match=r"run.json: field 'messages': the run has no messages"):
        _read({"messages": []})
    t, w = _read([{"role": "assistant", "content": "alone"}])
    assert len(t.steps) == 1 and any("one message" in x for x in w)


def test_a_jsonl_line_that_is_not_json_is_named_and_the_rest_read(tmp_path):
    f = tmp_path / "runs.jsonl"
    good = json.dumps([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])
    f.write_text(good + "\n{not json\n" + good + "\n")
    rep = load_traces(f)
    assert len(rep.traces) == 2 and len(rep.errors) == 1
    assert "runs.jsonl: record 2: malformed JSON" in str(rep.errors[0])


def test_a_lone_message_per_line_is_refused_with_a_hint(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"role": "user", "content": "a"}) + "\n")
    rep = load_traces(f)
    assert "m.jsonl: record 1" in str(rep.errors[0]) and "one run per" in str(rep.errors[0])


# --- the graphs of the logs the shipped model was trained on do not move ------------------------

def _digest(v) -> str:
    if isinstance(v, tuple):
        return hashlib.sha256(json.dumps(v).encode()).hexdigest()[:16]
    return hashlib.sha256(np.ascontiguousarray(v).tobytes() + str(v.dtype).encode()
                          + str(v.shape).encode()).hexdigest()[:16]


def test_dhcg_arrays_match_the_prefix_rules_on_dev_logs():
    """Digests of main's DHCG arrays (before marks replaced R3's prefixes and R6's notice) on
    24 dev logs: every array is unchanged, except that Magentic-One's `human`, who only states
    the task, is no longer a suspect (rule S2)."""
    expected = json.loads((HERE / "dhcg_main.json").read_text())
    for path, want in expected.items():
        t = load_traces(ROOT / path).traces[0]
        g = build_dhcg(t)
        for k, d in want.items():
            if k == "env_agents":
                got = [a for a, e in zip(g.agents, g.agent_is_env) if e]
                assert [a for a in got if a != "human"] == d, path
                assert ("human" in got) == ("Hand-Crafted" in path), path
            elif k != "agent_is_env" or "Hand-Crafted" not in path:
                assert _digest(getattr(g, k)) == d, (path, k)


def test_the_report_shows_who_is_not_an_agent_and_a_single_agents_run():
    from astra_eval.html_report import trace_page

    t = load_traces(EXAMPLES / "chat_openai.json").traces[0]
    html = trace_page(t, None, None)
    assert SINGLE_AGENT in html and 'id="not-agents"' in html
    assert "answers tool calls" in html and "system messages (the harness)" in html
    team = load_traces(HERE / "chat" / "openai_legacy.json").traces[0]
    assert SINGLE_AGENT not in trace_page(team, None, None)


def test_run_structure_marks_a_tool_without_reading_names():
    """A Who&When-layout log with no system_prompt: the entity that answers each code block with
    bare output is a tool (S3), whatever it is called; one who opens with the task and never
    speaks again is the human (S2); a reviewer who answers prose stays an agent."""
    code = "```python\nprint(search('Paris population'))\n```"
    for tool in ("Tool_executor", "Planner"):
        rec = {"question": "Population of Paris?", "history": [
            {"name": "Asker", "role": "user", "content": "Population of Paris?"},
            {"name": "Research_Agent", "role": "assistant", "content": code},
            {"name": tool, "role": "user", "content": "2,102,650 (2023 census)"},
            {"name": "Research_Agent", "role": "assistant", "content": code},
            {"name": tool, "role": "user", "content": "2,102,650"},
            {"name": "Reviewer", "role": "assistant", "content": "Looks right: 2,102,650."},
            {"name": "Research_Agent", "role": "assistant", "content": "2.1 million"}]}
        t, _ = read_record(RawRecord("ww.json", None, rec))
        assert _kinds(t) == {"Asker": "human", "Research_Agent": "agent", tool: "tool",
                             "Reviewer": "agent"}
        g = build_dhcg(t)
        ret = {int(r) for r, e in zip(g.receivers, g.edge_type) if EDGE_TYPES[e] == "return"}
        assert {int(g.step_node[2]), int(g.step_node[4])} <= ret  # R3: the answers are output
