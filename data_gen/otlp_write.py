"""Native traces → OpenTelemetry traces (OTLP JSON), the inverse of `data_gen.otlp_read`:
`read(to_otlp(trace))` gives the trace back, its native fields with no OpenTelemetry home carried
in `astra.*` attributes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from typing import Any, Iterable

from data_gen.marks import with_marks
from data_gen.otlp_spans import SPAN_KEYS
from data_gen.trace import Step, Trace


def _id(seed: str, n_bytes: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[: 2 * n_bytes]


def to_any_value(v: Any) -> dict[str, Any]:
    """A Python value as an OTLP AnyValue (the inverse of `any_value`; dicts become JSON text)."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [to_any_value(x) for x in v]}}
    return {"stringValue": v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}


def _attrs(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": to_any_value(v)} for k, v in d.items() if v is not None and v != ()]


def _span(trace_id: str, span_id: str, parent: str | None, name: str, start: int, end: int,
          attrs: dict[str, Any], links: Iterable[str] = (), status: str | None = None
          ) -> dict[str, Any]:
    d = {"traceId": trace_id, "spanId": span_id, "name": name, "kind": 1,
         "startTimeUnixNano": str(start), "endTimeUnixNano": str(end), "attributes": _attrs(attrs)}
    if parent:
        d["parentSpanId"] = parent
    if links:
        d["links"] = [{"traceId": trace_id, "spanId": s} for s in links]
    if status is not None:
        d["status"] = {"code": {"ok": 1, "error": 2}[status]}
    return d


def to_otlp(trace: Trace, start_unix_nano: int = 1_700_000_000_000_000_000) -> dict[str, Any]:
    """A trace as one OTLP JSON object: a root span (task, outcome, label as `astra.*`), one agent
    span per run of consecutive steps by one agent, and in it one LLM span per message step and
    one tool span per tool step, with OpenInference and GenAI attributes so any OpenTelemetry
    viewer shows who said what. Span ids and times read from OTLP are kept; others are derived
    from the trace id (1 ms per step from `start_unix_nano`). Refs become span links too."""
    tid = trace.source.get("otlp_trace_id") or _id(f"trace:{trace.trace_id}", 16)
    root_id = trace.source.get("root_span_id") or _id(f"{tid}:root", 8)
    ids = [s.extra.get("span_id") or _id(f"{tid}:step:{s.index}", 8) for s in trace.steps]
    times = [(s.extra.get("start_unix_nano", start_unix_nano + (i + 1) * 1_000_000),
              s.extra.get("end_unix_nano", start_unix_nano + (i + 1) * 1_000_000 + 900_000))
             for i, s in enumerate(trace.steps)]
    spans = []
    for agent, run in itertools.groupby(trace.steps, key=lambda s: s.agent):
        run = list(run)
        turn_id = _id(f"{tid}:turn:{run[0].index}", 8)
        spans.append(_span(tid, turn_id, root_id, f"invoke_agent {agent}", times[run[0].index][0],
                           times[run[-1].index][1], {"openinference.span.kind": "AGENT",
                                                     "gen_ai.operation.name": "invoke_agent",
                                                     "gen_ai.agent.name": agent,
                                                     "agent.name": agent}))
        spans += [_step_span(s, tid, ids[s.index], turn_id, *times[s.index],
                             [ids[r] for r in s.refs]) for s in run]
    a = with_marks(trace).system.agents  # every entity's mark goes with it
    root = {"openinference.span.kind": "CHAIN", "astra.trace_id": trace.trace_id,
            "astra.task.question": trace.task.question,
            "astra.task.ground_truth": trace.task.ground_truth,
            "input.value": trace.task.question,
            "astra.system.framework": trace.system.framework,
            "astra.system.topology": trace.system.topology,
            "astra.system.agents": json.dumps([_drop_none(dataclasses.asdict(x)) for x in a],
                                              ensure_ascii=False),
            "astra.outcome.success": trace.outcome.success,
            "astra.outcome.final_answer": trace.outcome.final_answer,
            "output.value": trace.outcome.final_answer,
            "astra.variant": trace.variant,
            "astra.trace.extra": json.dumps(trace.extra, ensure_ascii=False) if trace.extra
            else None}
    if trace.label is not None:
        root.update({"astra.label.agent": trace.label.agent, "astra.label.step": trace.label.step,
                     "astra.label.span_id": ids[trace.label.step]
                     if 0 <= trace.label.step < len(ids) else None,
                     "astra.label.mode": trace.label.mode,
                     "astra.label.reason": trace.label.reason})
    first = min([t0 for t0, _ in times] + [start_unix_nano])
    last_end = max([t1 for _, t1 in times] + [start_unix_nano])
    spans.insert(0, _span(tid, root_id, None, f"astra trace {trace.trace_id}", first, last_end,
                          root))
    return {"resourceSpans": [{"resource": {"attributes": _attrs({"service.name": "astra"})},
                               "scopeSpans": [{"scope": {"name": "astra"}, "spans": spans}]}]}


def _step_span(s: Step, tid: str, sid: str, parent: str, t0: int, t1: int,
               links: list[str]) -> dict[str, Any]:
    extra = {k: v for k, v in s.extra.items() if k not in SPAN_KEYS}
    attrs: dict[str, Any] = {"astra.step.kind": s.kind, "astra.step.to": s.to,
                             "astra.step.role": s.role, "astra.step.refs": list(s.refs),
                             "astra.step.extra": json.dumps(extra, ensure_ascii=False) if extra
                             else None, "gen_ai.agent.name": s.agent}
    name = s.extra.get("span_name")
    if s.tool is not None:
        attrs.update({"openinference.span.kind": "TOOL", "gen_ai.operation.name": "execute_tool",
                      "tool.name": s.tool.name, "gen_ai.tool.name": s.tool.name,
                      "input.value": json.dumps(s.tool.arguments, ensure_ascii=False),
                      "output.value": s.content})
        return _span(tid, sid, parent, name or f"execute_tool {s.tool.name}", t0, t1, attrs,
                     links, s.tool.status)
    attrs.update({"openinference.span.kind": "LLM", "gen_ai.operation.name": "chat",
                  "llm.output_messages.0.message.role": "assistant",
                  "llm.output_messages.0.message.content": s.content})
    return _span(tid, sid, parent, name or f"chat {s.agent}", t0, t1, attrs, links)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()
            if v is not None and v != ()}
