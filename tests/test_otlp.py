"""OpenTelemetry traces of real multi-agent frameworks, exported to OTLP JSON and attributed.

Each framework runs offline on scripted models with a scripted fault: the researcher agent turns
the tool's "2.1 million" into "21 million" at its second model call, and the writer repeats it.
"""
import dataclasses
import json
import operator
import re
from pathlib import Path
from typing import Annotated, TypedDict

import pytest
from hypothesis import given, settings, strategies as st

from data_gen.files import RawRecord
from data_gen.marks import with_marks
from data_gen.otlp_spans import SPAN_KEYS
from data_gen.otlp_write import to_otlp
from data_gen.readers import load_traces, read_record, write_traces
from data_gen.trace import TraceError
from test_bad_input import json_values
from test_coarse import TINY, _sim

QUESTION = "How many people live in Paris?"
WRONG = "Paris has 21 million people."


def _provider(path: Path):
    """A tracer provider that keeps finished spans in memory and writes them as OTLP JSON lines
    (needs the otel extra)."""
    pytest.importorskip("opentelemetry.sdk", reason="needs the otel extra")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from data_gen.otel_export import OtlpJsonLinesExporter
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonLinesExporter(path)))
    return provider, memory


def _hex(span) -> str:
    return format(span.context.span_id, "016x")


@pytest.fixture(scope="module")
def langgraph_run(tmp_path_factory):
    """A LangGraph supervisor with two workers on fake chat models, traced by OpenInference.
    The team wraps the run in its own span, which carries the label."""
    pytest.importorskip("langgraph")
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
    from langchain_core.tools import tool
    from langgraph.graph import END, START, StateGraph
    from openinference.instrumentation.langchain import LangChainInstrumentor

    path = tmp_path_factory.mktemp("langgraph") / "run.otlp.json"
    provider, memory = _provider(path)
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)

    @tool
    def lookup(city: str) -> str:
        """Population of a city."""
        return {"Paris": "2.1 million"}.get(city, "unknown")

    class State(TypedDict):
        messages: Annotated[list[BaseMessage], operator.add]
        next: str

    boss = FakeMessagesListChatModel(responses=[AIMessage("researcher"), AIMessage("writer"),
                                                AIMessage("FINISH")])
    researcher_model = FakeMessagesListChatModel(responses=[
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"city": "Paris"}, "id": "c1"}]),
        AIMessage(WRONG)])  # the fault: the tool said 2.1 million
    writer_model = FakeMessagesListChatModel(responses=[AIMessage("Report: " + WRONG)])

    def supervisor(s: State) -> dict:
        return {"next": boss.invoke(s["messages"]).content}

    def researcher(s: State) -> dict:
        call = researcher_model.invoke(s["messages"])
        result = lookup.invoke(call.tool_calls[0])
        return {"messages": [call, result, researcher_model.invoke(s["messages"] + [call, result])]}

    def writer(s: State) -> dict:
        return {"messages": [writer_model.invoke(s["messages"])]}

    g = StateGraph(State)
    for name, fn in (("supervisor", supervisor), ("researcher", researcher), ("writer", writer)):
        g.add_node(name, fn)
    g.add_edge(START, "supervisor")
    g.add_conditional_edges("supervisor", lambda s: s["next"],
                            {"researcher": "researcher", "writer": "writer", "FINISH": END})
    g.add_edge("researcher", "supervisor")
    g.add_edge("writer", "supervisor")
    tracer = provider.get_tracer("team")
    try:
        with tracer.start_as_current_span("team run", attributes={
                "astra.label.agent": "researcher", "astra.label.step": 3,
                "astra.label.reason": "misread the tool's 2.1 million as 21 million"}):
            g.compile().invoke({"messages": [HumanMessage(QUESTION)]})
    finally:
        instrumentor.uninstrument()
    return path, memory.get_finished_spans()


@pytest.fixture(scope="module")
def agents_run(tmp_path_factory):
    """The OpenAI Agents SDK: a researcher with a tool hands off to a writer; a scripted model
    records its generations as the SDK's own models do, and marks the one it falsifies."""
    pytest.importorskip("agents")
    from agents import Agent, Runner, function_tool
    from opentelemetry import trace as otel_trace
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.tracing import generation_span
    from agents.usage import Usage
    from openai.types.responses import (ResponseFunctionToolCall, ResponseOutputMessage,
                                        ResponseOutputText)
    from openinference.instrumentation.openai_agents import OpenAIAgentsInstrumentor

    path = tmp_path_factory.mktemp("agents") / "run.otlp.jsonl"
    provider, memory = _provider(path)
    instrumentor = OpenAIAgentsInstrumentor()
    instrumentor.instrument(tracer_provider=provider)

    def say(text: str) -> ResponseOutputMessage:
        return ResponseOutputMessage(id="m", role="assistant", status="completed", type="message",
                                     content=[ResponseOutputText(text=text, type="output_text",
                                                                 annotations=[])])

    def call(name: str, args: dict, cid: str) -> ResponseFunctionToolCall:
        return ResponseFunctionToolCall(arguments=json.dumps(args), call_id=cid, name=name,
                                        type="function_call", id=cid, status="completed")

    class Scripted(Model):
        def __init__(self, turns: list[list], faulty: int | None = None):
            self.turns, self.faulty, self.n = turns, faulty, 0

        async def get_response(self, system_instructions, input, model_settings, tools,
                               output_schema, handoffs, tracing, **kw):
            out = self.turns[self.n]
            messages = input if isinstance(input, list) else [{"role": "user", "content": input}]
            with generation_span(input=messages, model="scripted",
                                 disabled=tracing.is_disabled()) as g:
                g.span_data.output = [{  # chat-completions shape, as the SDK's models record
                    "role": "assistant",
                    "content": "".join(o.content[0].text for o in out if o.type == "message"),
                    "tool_calls": [{"id": o.call_id, "type": "function", "function": {
                        "name": o.name, "arguments": o.arguments}}
                        for o in out if o.type == "function_call"]}]
                if self.n == self.faulty:
                    otel_trace.get_current_span().set_attribute("astra.label.decisive", True)
            self.n += 1
            return ModelResponse(output=out, usage=Usage(), response_id=None)

        def stream_response(self, *args, **kw):
            raise NotImplementedError("the tests run without streaming")

    @function_tool
    def lookup_population(city: str) -> str:
        """Population of a city."""
        return {"Paris": "2.1 million"}.get(city, "unknown")

    writer = Agent(name="Writer", instructions="Write the report.",
                   model=Scripted([[say("Report: " + WRONG)]]))
    researcher = Agent(name="Researcher", instructions="Find the facts.", tools=[lookup_population],
                       handoffs=[writer], model=Scripted([
                           [call("lookup_population", {"city": "Paris"}, "c1")],
                           [say(WRONG), call("transfer_to_writer", {}, "c2")]], faulty=1))
    try:
        with provider.get_tracer("team").start_as_current_span("team run"):
            Runner.run_sync(researcher, QUESTION)
    finally:
        instrumentor.uninstrument()
    return path, memory.get_finished_spans()


def _one(path: Path):
    report = load_traces(path)
    assert not report.errors, report.errors
    assert len(report.traces) == 1
    return report.traces[0], report.warnings


def test_langgraph_supervisor_becomes_steps_that_keep_their_spans(langgraph_run):
    path, spans = langgraph_run
    t, warnings = _one(path)
    assert not warnings
    assert t.source["format"] == "otlp" and t.task.question == QUESTION
    assert t.agents == ["supervisor", "researcher", "writer"]
    assert [(s.agent, s.kind, s.tool.name if s.tool else None) for s in t.steps] == [
        ("supervisor", "message", None), ("researcher", "message", None),
        ("researcher", "tool_call", "lookup"), ("researcher", "message", None),
        ("supervisor", "message", None), ("writer", "message", None),
        ("supervisor", "message", None)]
    llm = [s for s in sorted(spans, key=lambda s: s.start_time)
           if s.attributes.get("openinference.span.kind") in ("LLM", "TOOL")]
    assert [s.extra["span_id"] for s in t.steps] == [_hex(s) for s in llm]
    assert [s.extra["span_name"] for s in t.steps][2] == "lookup"
    assert t.steps[1].content == '→ lookup({"city": "Paris"})'
    assert t.steps[2].content == "2.1 million" and t.steps[2].tool.arguments == {"input": "Paris"}
    assert t.steps[3].content == WRONG and t.steps[3].refs == (2,)
    assert t.steps[0].content == "researcher" and t.steps[0].refs == ()
    assert (t.label.agent, t.label.step) == ("researcher", 3)
    assert t.outcome.success is None


def test_openai_agents_handoff_and_a_label_on_the_faulty_span(agents_run):
    path, spans = agents_run
    t, _ = _one(path)
    assert t.task.question == QUESTION
    assert t.agents == ["Researcher", "Writer"]
    assert [(s.agent, s.kind, s.tool.name if s.tool else None) for s in t.steps] == [
        ("Researcher", "message", None), ("Researcher", "tool_call", "lookup_population"),
        ("Researcher", "message", None), ("Researcher", "tool_call", "handoff to Writer"),
        ("Writer", "message", None)]
    decisive = next(s for s in spans if s.attributes.get("astra.label.decisive"))
    assert (t.label.agent, t.label.step) == ("Researcher", 2)
    assert t.steps[2].extra["span_id"] == _hex(decisive)
    assert t.steps[2].content.startswith(WRONG) and "transfer_to_writer" in t.steps[2].content
    assert t.steps[1].tool.arguments == {"city": "Paris"} and t.steps[1].content == "2.1 million"
    assert t.steps[1].tool.status == "ok"


def test_otlp_round_trips_native_and_framework_traces(langgraph_run, tmp_path):
    def bare(t):
        return dataclasses.replace(t, source={}, steps=tuple(dataclasses.replace(
            s, extra={k: v for k, v in s.extra.items() if k not in SPAN_KEYS}) for s in t.steps))

    sim = [t for t in _sim(4, 31) if t.label][:4]
    assert sim
    for t in sim:
        back, _ = read_record(RawRecord("x.json", None, to_otlp(t)))
        assert bare(back) == bare(with_marks(t))  # the entity marks travel in the file
        assert back.system.agents[-1].kind is not None
    framework, _ = _one(langgraph_run[0])
    again, _ = read_record(RawRecord("y.json", None, to_otlp(framework)))
    assert dataclasses.replace(again, source={}) == dataclasses.replace(framework, source={})
    assert to_otlp(again) == to_otlp(framework)


def test_a_large_trace_is_copied_out_of_its_decoded_file_unchanged(monkeypatch):
    """Past `COMPACT_CHARS` of text a trace is read into fresh memory (files.compacted): the
    same trace, none of its step texts the decoder's own objects."""
    from data_gen import otlp_read

    t = [t for t in _sim(4, 31) if t.label][0]
    raw = to_otlp(t)
    plain, _ = read_record(RawRecord("x.json", None, raw))
    monkeypatch.setattr(otlp_read, "COMPACT_CHARS", 10)
    copied, _ = read_record(RawRecord("x.json", None, raw))
    assert copied == plain and len(copied.steps) > 1
    assert all(a.content is not b.content for a, b in zip(copied.steps, plain.steps)
               if len(a.content) > 1)


def test_convert_to_otlp_and_back(tmp_path):
    from astra_cli.main import main
    sim = _sim(3, 32)
    write_traces(sim, tmp_path / "sim.jsonl")
    assert main(["traces", "convert", str(tmp_path / "sim.jsonl"), "--to", "otlp",
                 "--out", str(tmp_path / "sim.otlp.jsonl")]) == 0
    back = load_traces(tmp_path / "sim.otlp.jsonl")
    assert not back.errors
    assert [(t.trace_id, t.label, [s.content for s in t.steps]) for t in back.traces] == [
        (t.trace_id, t.label, [s.content for s in t.steps]) for t in sim]
    line = json.loads((tmp_path / "sim.otlp.jsonl").read_text().splitlines()[0])
    spans = line["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert all(len(s["spanId"]) == 16 and len(s["traceId"]) == 32 for s in spans)


def test_genai_semantic_conventions(tmp_path):
    """Spans as GenAI-instrumented frameworks (AutoGen, for one) write them: invoke_agent,
    chat with the output in an event, execute_tool with its arguments and result."""
    path = tmp_path / "genai.jsonl"
    provider, _ = _provider(path)
    tracer = provider.get_tracer("autogen-core")
    with tracer.start_as_current_span("team") as root:
        for agent, text, tool in (("planner", "Ask the coder for 2+2.", None),
                                  ("coder", "It is 5.", ("add", '{"a": 2, "b": 2}', "4"))):
            with tracer.start_as_current_span(f"invoke_agent {agent}", attributes={
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent}):
                if tool:
                    with tracer.start_as_current_span(f"execute_tool {tool[0]}", attributes={
                            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool[0],
                            "gen_ai.tool.call.arguments": tool[1],
                            "gen_ai.tool.call.result": tool[2]}):
                        pass
                with tracer.start_as_current_span("chat", attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
                            {"type": "text", "content": "What is 2+2?"}]}])}) as chat:
                    chat.add_event("gen_ai.client.inference.operation.details", {
                        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
                            {"type": "text", "content": text}]}])})
                    faulty = _hex(chat)
        root.set_attribute("astra.label.span_id", faulty)  # the team's reviewer points at it
    t, _ = _one(path)
    assert [(s.agent, s.kind, s.content) for s in t.steps] == [
        ("planner", "message", "Ask the coder for 2+2."), ("coder", "tool_call", "4"),
        ("coder", "message", "It is 5.")]
    assert t.steps[1].tool.arguments == {"a": 2, "b": 2} and t.task.question == "What is 2+2?"
    assert (t.label.agent, t.label.step) == ("coder", 2) and t.system.framework == "autogen-core"


def _span(tid, sid, parent=None, start=1, **attrs):
    d = {"traceId": tid, "spanId": sid, "name": sid, "startTimeUnixNano": str(start),
         "endTimeUnixNano": str(start + 1),
         "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()]}
    if parent:
        d["parentSpanId"] = parent
    return d


def _line(*spans):
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]})


def test_bad_otlp_input_is_reported_and_the_rest_is_read(tmp_path):
    a, b, c, d, e = (f"{n:032x}" for n in range(1, 6))
    agent = {"gen_ai.operation.name": "invoke_agent"}
    good_root = _span(a, "a" * 16, start=10, **agent, **{"gen_ai.agent.name": "planner"})
    lines = [
        _line(good_root, {**_span(a, "b" * 16), "traceId": None}),  # 1: a span without trace id
        '{"resourceSpans": [',  # 2: broken JSON
        _line(_span(b, "c" * 16, **{"openinference.span.kind": "CHAIN"})),  # 3: no agent span
        # 4: clock skew: the child starts before its parent
        _line(_span(c, "d" * 16, start=50, **agent, **{"gen_ai.agent.name": "boss"}),
              _span(c, "e" * 16, "d" * 16, start=20, **{"gen_ai.operation.name": "chat",
                                                         "output.value": "child"})),
        # 5, 6: a span exported twice (dropped once, warned) and a conflicting span id
        _line(_span(d, "f" * 16, **agent, **{"gen_ai.agent.name": "x"})),
        _line(_span(d, "f" * 16, **agent, **{"gen_ai.agent.name": "x"}),
              _span(e, "1" * 16, **agent, **{"gen_ai.agent.name": "y"})),
        _line(_span(e, "1" * 16, **agent, **{"gen_ai.agent.name": "z"})),
        # 8: the second span of trace a, on its own line
        _line(_span(a, "2" * 16, "a" * 16, start=11, **{"gen_ai.operation.name": "chat",
                                                        "output.value": "plan"})),
    ]
    path = tmp_path / "export.json"  # a Collector writes JSON lines into a .json file
    path.write_text("\n".join(lines) + "\n")
    report = load_traces(path)
    errors = sorted(str(x) for x in report.errors)
    assert len(errors) == 4, errors
    assert any("record 1" in x and "traceId" in x and "missing" in x for x in errors)
    assert any("record 2" in x and "malformed JSON" in x for x in errors)
    assert any(f"trace {b}" in x and "record 3" in x and "nothing to attribute" in x
               for x in errors)
    assert any(f"trace {e}" in x and "line 6" in x and "line 7" in x for x in errors)
    assert all(str(path) in x for x in errors)
    got = {t.trace_id: t for t in report.traces}
    assert set(got) == {a, c, d}
    assert [s.content for s in got[a].steps] == ["plan"]  # spans of one trace across lines
    assert [s.extra["span_id"] for s in got[c].steps] == ["e" * 16]
    assert any("clock skew" in w and "e" * 16 in w for w in report.warnings)
    assert any("appears twice" in w and "line 5" in w and "line 6" in w for w in report.warnings)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["traceId", "spanId", "parentSpanId", "startTimeUnixNano", "name",
                        "attributes", "events", "links", "status"]), json_values,
       st.sampled_from([0, 1]))
def test_mutated_spans_read_or_fail_naming_the_file(key, value, which):
    rec = json.loads(_line(
        _span(f"{1:032x}", "a" * 16, **{"gen_ai.operation.name": "invoke_agent",
                                        "gen_ai.agent.name": "boss"}),
        _span(f"{1:032x}", "b" * 16, "a" * 16, start=2, **{"gen_ai.operation.name": "chat",
                                                           "output.value": "hi"})))
    rec["resourceSpans"][0]["scopeSpans"][0]["spans"][which][key] = value
    try:
        trace, _ = read_record(RawRecord("fuzz.json", None, rec))
    except TraceError as e:
        assert "fuzz.json" in str(e)
    else:
        assert trace.steps and all(s.agent == "boss" for s in trace.steps)


ATTRIBUTES = ("gen_ai.agent.name", "gen_ai.operation.name", "openinference.span.kind", "metadata",
              "agent.name", "output.value", "input.value", "gen_ai.output.messages",
              "gen_ai.input.messages", "llm.output_messages.0.message.content",
              "llm.output_messages.0.message.tool_calls.0.tool_call.function.name", "tool.name",
              "gen_ai.tool.call.arguments", "astra.label.step", "astra.label.span_id",
              "astra.label.decisive", "astra.step.refs", "astra.step.kind", "astra.step.extra",
              "astra.system.agents", "astra.variant", "astra.outcome.success")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ATTRIBUTES), json_values, st.booleans(), st.sampled_from([0, 1]))
def test_hostile_attribute_values_read_or_fail_naming_the_file(key, value, as_json, which):
    from data_gen.otlp_write import to_any_value
    rec = json.loads(_line(
        _span(f"{1:032x}", "a" * 16, **{"gen_ai.operation.name": "invoke_agent",
                                        "gen_ai.agent.name": "boss"}),
        _span(f"{1:032x}", "b" * 16, "a" * 16, start=2, **{"gen_ai.operation.name": "chat"})))
    span = rec["resourceSpans"][0]["scopeSpans"][0]["spans"][which]
    span["attributes"].append({"key": key, "value": to_any_value(json.dumps(value) if as_json
                                                           else value)})
    try:
        trace, _ = read_record(RawRecord("fuzz.json", None, rec))
    except TraceError as e:
        assert "fuzz.json" in str(e)
    else:
        assert trace.steps and all(isinstance(s.content, str) for s in trace.steps)


def test_one_record_must_hold_one_trace():
    rec = json.loads(_line(
        _span(f"{1:032x}", "a" * 16, **{"gen_ai.operation.name": "invoke_agent"}),
        _span(f"{2:032x}", "b" * 16, **{"gen_ai.operation.name": "invoke_agent"})))
    with pytest.raises(TraceError, match="expected one trace, found 2"):
        read_record(RawRecord("two.json", None, rec))


def test_astra_run_attributes_framework_exports_end_to_end(langgraph_run, agents_run,
                                                          tmp_path, capsys):
    from astra_cli.main import main
    from astra_eval.html_report import page_name
    from astra_jax.features import HashingEmbedder, featurise
    from astra_jax.train import train
    tr, va = _sim(16, 33), [t for t in _sim(6, 34) if t.variant == "fatal"]
    emb = HashingEmbedder()
    run = tmp_path / "coarse"
    train(dataclasses.replace(TINY, epochs=1), tr, featurise(tr, emb), va, featurise(va, emb),
          run, progress=False)
    out = tmp_path / "out"
    exports = [str(langgraph_run[0]), str(agents_run[0])]
    assert main(["run", *exports, "--coarse", str(run), "--out", str(out)]) == 0
    traces = load_traces(exports).traces
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert [v["trace_id"] for v in verdicts] == [t.trace_id for t in traces]
    for t, v in zip(traces, verdicts):
        assert v["agent"] in t.agents and 0 <= v["step"] < len(t.steps)
        page = (out / "report" / "traces" / page_name(t.trace_id)).read_text()
        assert f'span {t.steps[v["step"]].extra["span_id"]}' in page
    rep = json.loads((out / "eval.json").read_text())
    assert rep["n_labelled"] == 2 and set(rep["subsets"]) == {"otlp"}
    capsys.readouterr()
    assert main(["attribute", exports[0], "--run", str(run)]) == 0
    said = capsys.readouterr().out
    assert re.search(r"when: step \d+, span [0-9a-f]{16}", said), said
