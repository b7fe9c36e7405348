"""OpenTelemetry traces (OTLP JSON) ⇄ native traces.

Teams record multi-agent runs as OpenTelemetry spans: the GenAI semantic conventions
(`gen_ai.operation.name` = `invoke_agent`, `chat`, `execute_tool`; `gen_ai.agent.name`; messages in
`gen_ai.input.messages`/`gen_ai.output.messages` or in events) or OpenInference's
(`openinference.span.kind` = AGENT, LLM, TOOL, CHAIN; `input.value`, `output.value`,
`llm.output_messages.*`). A Collector's file exporter, or `data_gen.otel_export`, writes them as
OTLP JSON: objects `{"resourceSpans": [...]}`, one per line or one per file.

Data model (docs/readers.md has every field):
- Spans are grouped by trace id, across all the lines and files of one path; one group is one trace.
- A span's *agent* is `gen_ai.agent.name`, else an AGENT/`invoke_agent` span's `agent.name` or
  name, else LangGraph's node (the first node of `langgraph_checkpoint_ns` in the span's
  `metadata`, so a sub-graph's inner nodes belong to the team member that runs it), else the agent
  of its parent.
- A *turn* is the outermost span of a chain of nested spans with the same agent. Inside a turn,
  every LLM span is one step (kind `message`, the model's output) and every tool span is one step
  (kind `tool_call`, naming its tool; the content is the tool's output). An agent span with no LLM
  or tool span below it is one step (its output). Everything else (chains, routers, graph
  internals) folds into the steps around it and gives no step.
- Steps are in start-time order; a child that starts before its parent (clock skew) is ordered
  after its parent, with a warning.
- Each step keeps its span in `Step.extra` (`span_id`, `span_name`, `start_unix_nano`,
  `end_unix_nano`), so a verdict's step points at a span.
- `astra.*` attributes carry native fields with no OpenTelemetry home (labels, task, exact refs);
  `to_otlp` writes them, so `read(to_otlp(trace))` gives the trace back.

Span text is untrusted: it is only ever read as text, and bounded by `max_chars`.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from data_gen.files import RawRecord
from data_gen.marks import with_marks
from data_gen.trace import (ENTITY_KINDS, MAX_CONTENT_CHARS, STEP_KINDS, VARIANTS, AgentSpec,
                            Label, Outcome, Step, System, Task, ToolCall, Trace, TraceError,
                            check_content, check_trace)

FORMAT = "otlp"
SPAN_KEYS = ("span_id", "span_name", "start_unix_nano", "end_unix_nano")  # kept in Step.extra
LLM_OPERATIONS = ("chat", "text_completion", "generate_content")
_HEX = re.compile(r"^[0-9a-f]+$")
_CONTENT_TEXT = re.compile(r"^message\.contents\.\d+\.message_content\.text$")
_STATUS = {0: None, 1: "ok", 2: "error", "STATUS_CODE_UNSET": None, "STATUS_CODE_OK": "ok",
           "STATUS_CODE_ERROR": "error"}


@dataclass(frozen=True)
class Span:
    """One span, decoded; `source`, `record` and `path` say where it was read."""
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start: int
    end: int
    attrs: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    links: tuple[str, ...]  # span ids in the same trace
    status: str | None  # "ok" | "error" | None
    status_message: str | None
    scope: str | None
    source: str
    record: int | None
    path: str
    raw: Any  # the span's JSON, to tell an exact duplicate from a conflicting one

    def error(self, message: str, key: str | None = None) -> TraceError:
        return TraceError(message, self.source, self.record,
                          self.path + (f".attributes[{key}]" if key else ""))


@dataclass(frozen=True)
class BadSpan:
    """A span that cannot be read; its trace (when its id could be read) is refused with it."""
    trace_id: str | None
    error: TraceError


def is_otlp(d: Any) -> bool:
    return isinstance(d, dict) and "resourceSpans" in d


# --- decoding ---------------------------------------------------------------------------------

def any_value(v: Any, where: str) -> Any:
    """An OTLP AnyValue as a Python value: str, bool, int, float, list or dict."""
    if not isinstance(v, dict) or len(v) > 1:
        raise TraceError("expected an AnyValue object with one key", field=where)
    if not v:
        return None
    (kind, x), = v.items()
    if kind in ("stringValue", "bytesValue") and isinstance(x, str):
        return x
    if kind == "boolValue" and isinstance(x, bool):
        return x
    if kind == "intValue" and isinstance(x, (int, str)) and not isinstance(x, bool):
        try:
            return int(x)
        except ValueError:
            raise TraceError(f"{x!r} is not an integer", field=where) from None
    if kind == "doubleValue" and isinstance(x, (int, float, str)) and not isinstance(x, bool):
        try:
            return float(x)
        except ValueError:
            raise TraceError(f"{x!r} is not a number", field=where) from None
    if kind == "arrayValue" and isinstance(x, dict):
        return [any_value(e, f"{where}[{i}]") for i, e in enumerate(_list(x, "values", where))]
    if kind == "kvlistValue" and isinstance(x, dict):
        return key_values(_list(x, "values", where), where)
    raise TraceError(f"unknown or malformed AnyValue {kind!r}", field=where)


def key_values(items: Any, where: str) -> dict[str, Any]:
    if not isinstance(items, list):
        raise TraceError(f"expected a list, got {type(items).__name__}", field=where)
    out = {}
    for i, kv in enumerate(items):
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise TraceError("expected {key, value}", field=f"{where}[{i}]")
        out[kv["key"]] = any_value(kv.get("value", {}), f"{where}[{kv['key']}]")
    return out


def _list(d: dict, key: str, where: str) -> list:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise TraceError(f"expected a list, got {type(v).__name__}", field=f"{where}.{key}")
    return v


def otlp_id(v: Any, n_bytes: int, where: str) -> str:
    """A trace or span id as lowercase hex. OTLP JSON writes hex; protobuf's own JSON mapping
    writes base64, which is accepted too (the lengths differ, so the two never clash)."""
    if not isinstance(v, str) or not v:
        raise TraceError("missing or not a string", field=where)
    if len(v) == 2 * n_bytes and _HEX.match(v.lower()):
        return v.lower()
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != n_bytes:
        raise TraceError(f"{v[:40]!r} is not a {n_bytes}-byte id in hex", field=where)
    return raw.hex()


def _nanos(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise TraceError("expected a time in Unix nanoseconds", field=where)
    try:
        return int(v)
    except ValueError:
        raise TraceError(f"{v!r} is not a time in Unix nanoseconds", field=where) from None


def decode_span(d: Any, scope: str | None, raw: RawRecord, path: str) -> Span | BadSpan:
    """One OTLP span, or the error that names the file, line and field at fault."""
    def bad(msg: str, fld: str, trace_id: str | None = None) -> BadSpan:
        return BadSpan(trace_id, TraceError(msg, raw.source, raw.record,
                                            f"{path}.{fld}" if fld else path))
    if not isinstance(d, dict):
        return bad(f"expected a span object, got {type(d).__name__}", "")
    try:
        trace_id = otlp_id(d.get("traceId"), 16, "traceId")
    except TraceError as e:
        return bad(e.message, e.field or "")
    try:
        span_id = otlp_id(d.get("spanId"), 8, "spanId")
        parent = d.get("parentSpanId") or None
        parent_id = otlp_id(parent, 8, "parentSpanId") if parent else None
        start = _nanos(d.get("startTimeUnixNano"), "startTimeUnixNano")
        end = _nanos(d.get("endTimeUnixNano", start), "endTimeUnixNano")
        attrs = key_values(d.get("attributes", []), "attributes")
        events = tuple((str(e.get("name", "")), key_values(e.get("attributes", []),
                                                            f"events[{i}].attributes"))
                       for i, e in enumerate(_list(d, "events", "")) if isinstance(e, dict))
        links = tuple(otlp_id(lk.get("spanId"), 8, f"links[{i}].spanId")
                      for i, lk in enumerate(_list(d, "links", ""))
                      if isinstance(lk, dict) and lk.get("traceId") in (None, d.get("traceId")))
        status = d.get("status") or {}
        if not isinstance(status, dict):
            raise TraceError("expected an object", field="status")
        name = d.get("name", "")
        if not isinstance(name, str):
            raise TraceError(f"expected str, got {type(name).__name__}", field="name")
    except TraceError as e:
        return bad(e.message, e.field or "", trace_id)
    message, code = status.get("message"), status.get("code", 0)
    return Span(trace_id, span_id, parent_id, name, start, end, attrs, events, links,
                _STATUS.get(code) if isinstance(code, (int, str)) else None,
                message if isinstance(message, str) else None,
                scope, raw.source, raw.record, path, d)


def spans_of(raw: RawRecord) -> Iterator[Span | BadSpan | TraceError]:
    """Every span of one OTLP record; a bad span becomes a BadSpan, a bad record or resource a
    TraceError, and the rest are read."""
    try:
        resource_spans = _list(raw.data, "resourceSpans", "")
    except TraceError as e:
        yield e.located(raw.source, raw.record)
        return
    for i, rs in enumerate(resource_spans):
        p = f"resourceSpans[{i}]"
        if not isinstance(rs, dict) or not isinstance(rs.get("scopeSpans", []), list):
            yield TraceError("expected an object with a list 'scopeSpans'", raw.source,
                             raw.record, p)
            continue
        for j, ss in enumerate(rs.get("scopeSpans", [])):
            q = f"{p}.scopeSpans[{j}]"
            if not isinstance(ss, dict) or not isinstance(ss.get("spans", []), list):
                yield TraceError("expected an object with a list 'spans'", raw.source,
                                 raw.record, q)
                continue
            scope = ss.get("scope") if isinstance(ss.get("scope"), dict) else {}
            scope_name = scope.get("name") if isinstance(scope.get("name"), str) else None
            for k, d in enumerate(ss.get("spans", [])):
                yield decode_span(d, scope_name, raw, f"{q}.spans[{k}]")


# --- reading text out of spans ----------------------------------------------------------------

def _str_attr(span: Span, key: str) -> str | None:
    v = span.attrs.get(key)
    if v is not None and not isinstance(v, str):
        raise span.error(f"expected a string, got {type(v).__name__}", key)
    return v


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


def span_role(span: Span) -> str | None:
    """`agent`, `llm`, `tool`, or None for spans that fold (chains, graph internals)."""
    oi = str(span.attrs.get("openinference.span.kind", "")).upper()
    op = span.attrs.get("gen_ai.operation.name")
    if oi == "TOOL" or op == "execute_tool":
        return "tool"
    if oi == "LLM" or op in LLM_OPERATIONS:
        return "llm"
    if oi == "AGENT" or op == "invoke_agent":
        return "agent"
    return None


def own_agent(span: Span) -> str | None:
    """The agent a span names itself, if any (module docstring)."""
    name = _str_attr(span, "gen_ai.agent.name")
    if name and name.strip():
        return name.strip()
    if span_role(span) == "agent":
        name = _str_attr(span, "agent.name") or span.name
        return name.strip() or None
    meta = _json(span.attrs.get("metadata"))
    if isinstance(meta, dict):
        ns, node = meta.get("langgraph_checkpoint_ns"), meta.get("langgraph_node")
        first = ns.split("|")[0].split(":")[0] if isinstance(ns, str) else ""
        for name in (first, node):
            if isinstance(name, str) and name.strip():
                return name.strip()
    return None


def render_messages(messages: list[dict[str, Any]]) -> str:
    """Text of model output messages: their text, then one `→ tool(arguments)` line per tool call
    they request."""
    lines = []
    for m in messages:
        if m.get("content"):
            lines.append(str(m["content"]))
        lines += [f"→ {c.get('name', '')}({c.get('arguments', '')})"
                  for c in m.get("tool_calls", [])]
    return "\n".join(lines)


def _indexed(attrs: dict[str, Any], prefix: str) -> dict[int, dict[str, Any]]:
    """OpenInference's flattened lists: `prefix.0.rest` → {0: {rest: value}}."""
    out: dict[int, dict[str, Any]] = defaultdict(dict)
    for k, v in attrs.items():
        if k.startswith(prefix):
            i, _, rest = k[len(prefix):].partition(".")
            if i.isdigit():
                out[int(i)][rest] = v
    return dict(sorted(out.items()))


def openinference_messages(span: Span, which: str) -> list[dict[str, Any]]:
    """`llm.{which}_messages.*` as messages {role, content, tool_calls}."""
    msgs = []
    for fields in _indexed(span.attrs, f"llm.{which}_messages.").values():
        parts = [v for k, v in sorted(fields.items())
                 if k == "message.content" or _CONTENT_TEXT.match(k)]
        calls = [{"name": c.get("tool_call.function.name", ""),
                  "arguments": c.get("tool_call.function.arguments", "")}
                 for c in _indexed(fields, "message.tool_calls.").values()]
        msgs.append({"role": fields.get("message.role"),
                     "content": "\n".join(str(p) for p in parts), "tool_calls": calls})
    return msgs


def genai_messages(value: Any) -> list[dict[str, Any]]:
    """GenAI `gen_ai.*.messages` (a JSON list of {role, parts: [{type, content | name, arguments}]})
    as messages {role, content, tool_calls}; older JSON lists of {role, content} read too."""
    value = _json(value)
    if not isinstance(value, list):
        return []
    msgs = []
    for m in value:
        if not isinstance(m, dict):
            continue
        parts = m.get("parts") if isinstance(m.get("parts"), list) else [
            {"type": "text", "content": m.get("content")}]
        text = [str(p.get("content")) for p in parts if isinstance(p, dict)
                and p.get("type") == "text" and p.get("content") is not None]
        calls = [{"name": p.get("name", ""), "arguments": p.get("arguments", "")} for p in parts
                 if isinstance(p, dict) and p.get("type") == "tool_call"]
        calls += [{"name": c["function"].get("name", ""),
                   "arguments": c["function"].get("arguments", "")}
                  for c in m.get("tool_calls") or [] if isinstance(c, dict)
                  and isinstance(c.get("function"), dict)]
        msgs.append({"role": m.get("role"), "content": "\n".join(text), "tool_calls": calls})
    return msgs


def _event_attr(span: Span, key: str) -> Any:
    return next((a[key] for _, a in span.events if key in a), None)


def _plain(text: Any) -> str | None:
    """`output.value` as text; a LangChain message's JSON (`{type, data: {content}}`) gives its
    content."""
    if text is None:
        return None
    d = _json(text)
    if isinstance(d, dict) and isinstance(d.get("data"), dict) and isinstance(
            d["data"].get("content"), str) and "type" in d:
        return d["data"]["content"]
    return text if isinstance(text, str) else json.dumps(text)


def output_text(span: Span) -> str:
    """What a span produced, from the first of: OpenInference output messages, GenAI output
    messages (attribute, or an event's attribute), the legacy `gen_ai.completion` event, the tool
    result, `output.value`."""
    msgs = openinference_messages(span, "output")
    if not any(m["content"] or m["tool_calls"] for m in msgs):
        msgs = genai_messages(span.attrs.get("gen_ai.output.messages")
                              or _event_attr(span, "gen_ai.output.messages")
                              or _event_attr(span, "gen_ai.completion"))
    if any(m["content"] or m["tool_calls"] for m in msgs):
        return render_messages(msgs)
    for value in (span.attrs.get("gen_ai.tool.call.result"), span.attrs.get("output.value")):
        text = _plain(value)
        if text is not None:
            return text
    return ""


def first_user_message(span: Span) -> str | None:
    msgs = openinference_messages(span, "input") or genai_messages(
        span.attrs.get("gen_ai.input.messages") or _event_attr(span, "gen_ai.input.messages"))
    return next((m["content"] for m in msgs if m["role"] in ("user", "human") and m["content"]),
                None)


def tool_call(span: Span) -> ToolCall:
    name = (_str_attr(span, "tool.name") or _str_attr(span, "gen_ai.tool.name") or span.name)
    args = span.attrs.get("gen_ai.tool.call.arguments", span.attrs.get("input.value"))
    parsed = _json(args)
    arguments = parsed if isinstance(parsed, dict) else ({"input": args} if args not in (None, "")
                                                          else {})
    status = span.status if span.status in ("ok", "error") else None
    return ToolCall(name=name, arguments=arguments, status=status)


# --- spans → trace ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Tree:
    spans: dict[str, Span]
    parent: dict[str, str | None]  # None for a root (or a span whose parent is missing)
    order: list[str]  # parents before children, siblings by start time
    warnings: list[str]


def span_tree(trace_id: str, spans: list[Span]) -> _Tree:
    """Index spans by id, drop exact duplicates (a re-sent batch) with a warning, refuse
    conflicting duplicates and parent cycles, and order them: start time, but never a child before
    its parent (clock skew is warned about)."""
    by_id: dict[str, Span] = {}
    warnings = []
    for s in spans:
        first = by_id.get(s.span_id)
        if first is None:
            by_id[s.span_id] = s
        elif first.raw == s.raw:
            warnings.append(f"span {s.span_id} appears twice ({_at(first)} and {_at(s)}); "
                            "read once")
        else:
            raise s.error(f"trace {trace_id}: span id {s.span_id} is used by two different spans "
                          f"({_at(first)} and {_at(s)})", None)
    parent = {}
    for sid, s in by_id.items():
        if s.parent_id is not None and s.parent_id not in by_id:
            warnings.append(f"span {sid} ({s.name!r}): its parent {s.parent_id} is not in the "
                            "trace; read as a root")
        parent[sid] = s.parent_id if s.parent_id in by_id else None
    children: dict[str | None, list[str]] = defaultdict(list)
    for sid in by_id:
        children[parent[sid]].append(sid)
    eff: dict[str, int] = {}
    stack = sorted(children[None], key=lambda i: (by_id[i].start, i), reverse=True)
    order = []
    while stack:
        sid = stack.pop()
        s, up = by_id[sid], parent[sid]
        eff[sid] = s.start if up is None else max(s.start, eff[up])
        if up is not None and s.start < by_id[up].start:
            warnings.append(f"span {sid} ({s.name!r}) starts before its parent {up} (clock "
                            "skew); ordered after its parent")
        order.append(sid)
        stack += sorted(children[sid], key=lambda i: (by_id[i].start, i), reverse=True)
    if len(order) < len(by_id):
        bad = next(s for s in by_id.values() if s.span_id not in eff)
        raise bad.error(f"trace {trace_id}: the parent links of span {bad.span_id} form a cycle")
    position = {sid: n for n, sid in enumerate(order)}
    order.sort(key=lambda i: (eff[i], position[i]))
    return _Tree(by_id, parent, order, warnings)


def _at(s: Span) -> str:
    return s.source + (f" line {s.record}" if s.record is not None else "")


def _ancestors(tree: _Tree, sid: str) -> Iterator[str]:
    up = tree.parent[sid]
    while up is not None:
        yield up
        up = tree.parent[up]


def _label_of(tree: _Tree, roots: list[Span], steps: list[Step], first_step: dict[str, int],
              trace_id: str) -> Label | None:
    """The label from the root span (`astra.label.step` or `astra.label.span_id`) or from the one
    span marked `astra.label.decisive`."""
    marked = [tree.spans[sid] for sid in tree.order
              if tree.spans[sid].attrs.get("astra.label.decisive") is True]
    on_root = [r for r in roots if any(k.startswith("astra.label.") for k in r.attrs)
               and r.attrs.get("astra.label.decisive") is not True]
    if len(marked) + len(on_root) > 1:
        where = (marked + on_root)[1]
        raise where.error(f"trace {trace_id}: more than one span carries a label")
    if not marked and not on_root:
        return None
    span = (marked + on_root)[0]
    if marked:
        step = first_step.get(span.span_id)
        if step is None:
            raise span.error(f"trace {trace_id}: the span marked decisive gives no step",
                             "astra.label.decisive")
    elif "astra.label.step" in span.attrs:
        step = span.attrs["astra.label.step"]
        if not isinstance(step, int) or isinstance(step, bool):
            raise span.error("expected an integer step index", "astra.label.step")
    elif isinstance(span.attrs.get("astra.label.span_id"), str):
        target = span.attrs["astra.label.span_id"].lower()
        if target not in first_step:
            raise span.error(f"trace {trace_id}: no step comes from span {target}",
                             "astra.label.span_id")
        step = first_step[target]
    else:
        raise span.error("a label needs astra.label.step or astra.label.span_id", "astra.label")
    agent = _str_attr(span, "astra.label.agent")
    if agent is None and 0 <= step < len(steps):
        agent = steps[step].agent
    return Label(agent=(agent or "").strip(), step=step, mode=_str_attr(span, "astra.label.mode"),
                 reason=_str_attr(span, "astra.label.reason"))


def trace_from_spans(trace_id: str, spans: list[Span], max_chars: int = MAX_CONTENT_CHARS
                     ) -> tuple[Trace, list[str]]:
    """The native trace of one OTLP trace's spans (module docstring); raises a TraceError naming
    the file, line and span at fault, returns warnings."""
    tree = span_tree(trace_id, spans)
    agent: dict[str, str | None] = {}
    for sid in tree.order:  # parents come first
        up = tree.parent[sid]
        agent[sid] = own_agent(tree.spans[sid]) or (agent[up] if up is not None else None)
    turn: dict[str, str] = {}
    for sid in tree.order:
        up = tree.parent[sid]
        turn[sid] = turn[up] if up is not None and agent[up] == agent[sid] else sid
    roles = {sid: span_role(tree.spans[sid]) for sid in tree.order}
    has_step_below = {up for sid in tree.order if roles[sid] in ("llm", "tool")
                      for up in _ancestors(tree, sid)}
    warnings = list(tree.warnings)
    steps: list[Step] = []
    first_step: dict[str, int] = {}
    last_in_turn: dict[str, int] = {}
    for sid in tree.order:
        s, role = tree.spans[sid], roles[sid]
        if role not in ("llm", "tool") and not (role == "agent" and sid not in has_step_below):
            continue
        if agent[sid] is None:
            warnings.append(f"span {sid} ({s.name!r}, {role}) belongs to no agent; left out")
            continue
        index = len(steps)
        step = _step(s, role, index, agent[sid], max_chars)
        if "astra.step.refs" not in s.attrs:
            refs = {last_in_turn[turn[sid]]} if turn[sid] in last_in_turn else set()
            for link in s.links:
                earlier = [i for i, st in enumerate(steps) if st.extra["span_id"] == link
                           or link in _ancestors(tree, st.extra["span_id"])]
                refs |= {max(earlier)} if earlier else set()
            step = dataclasses.replace(step, refs=tuple(sorted(refs)))
        steps.append(step)
        last_in_turn[turn[sid]] = index
        for up in (sid, *_ancestors(tree, sid)):
            first_step.setdefault(up, index)
    roots = [tree.spans[sid] for sid in tree.order if tree.parent[sid] is None]
    first = tree.spans[tree.order[0]]
    if not steps:
        raise first.error(f"trace {trace_id}: no agent, LLM or tool span with an agent; nothing "
                          "to attribute")
    root = roots[0]
    try:
        label = _label_of(tree, roots, steps, first_step, trace_id)
        trace = _trace(trace_id, root, tree, steps, label)
        warnings += check_trace(trace)
    except TraceError as e:
        raise (e if e.source != "<memory>" else TraceError(
            f"trace {trace_id}: {e.message}", root.source, root.record, e.field)) from None
    return trace, warnings


def _step(s: Span, role: str, index: int, agent: str, max_chars: int) -> Step:
    try:
        content = check_content(output_text(s), "", max_chars)
    except TraceError as e:
        raise s.error(e.message) from None
    extra = {"span_id": s.span_id, "span_name": s.name, "start_unix_nano": s.start,
             "end_unix_nano": s.end}
    native = _json(_str_attr(s, "astra.step.extra"))
    if isinstance(native, dict):
        extra = {**native, **extra}
    refs = s.attrs.get("astra.step.refs", [])
    if not isinstance(refs, list) or not all(isinstance(r, int) and 0 <= r < index for r in refs):
        raise s.error(f"refs must be indices of earlier steps (0..{index - 1})", "astra.step.refs")
    kind = _str_attr(s, "astra.step.kind") or ("tool_call" if role == "tool" else "message")
    if kind not in STEP_KINDS:
        raise s.error(f"{kind!r} is not one of {', '.join(STEP_KINDS)}", "astra.step.kind")
    return Step(index=index, agent=agent, content=content, kind=kind,
                to=_str_attr(s, "astra.step.to"), role=_str_attr(s, "astra.step.role"),
                tool=tool_call(s) if role == "tool" else None, refs=tuple(refs), extra=extra)


def _trace(trace_id: str, root: Span, tree: _Tree, steps: list[Step], label: Label | None) -> Trace:
    a = root.attrs
    question = _str_attr(root, "astra.task.question")
    if question is None:
        question = next((q for q in (first_user_message(tree.spans[sid]) for sid in tree.order)
                         if q), "")
    agents_json = _json(_str_attr(root, "astra.system.agents"))
    if isinstance(agents_json, list):  # written by to_otlp: the team exactly as it was
        known = [_agent_spec(x, root) for x in agents_json]
    else:
        known = [AgentSpec(name=n) for n in dict.fromkeys(s.agent for s in steps)]
    known = [a if a.kind else _span_mark(a, steps) for a in known]
    success = a.get("astra.outcome.success")
    variant = _str_attr(root, "astra.variant")
    if variant is not None and variant not in VARIANTS:
        raise root.error(f"{variant!r} is not one of {', '.join(VARIANTS)}", "astra.variant")
    extra = _json(_str_attr(root, "astra.trace.extra"))
    return Trace(
        trace_id=_str_attr(root, "astra.trace_id") or trace_id,
        task=Task(question=question, ground_truth=_str_attr(root, "astra.task.ground_truth")),
        steps=tuple(steps),
        system=System(framework=_str_attr(root, "astra.system.framework") or root.scope,
                      topology=_str_attr(root, "astra.system.topology"), agents=tuple(known)),
        outcome=Outcome(success=success if isinstance(success, bool) else None,
                        final_answer=_str_attr(root, "astra.outcome.final_answer")),
        label=label, variant=variant,
        source={"format": FORMAT, "otlp_trace_id": trace_id, "root_span_id": root.span_id},
        extra=extra if isinstance(extra, dict) else {})


def _span_mark(spec: AgentSpec, steps: list[Step]) -> AgentSpec:
    """Span kinds mark an entity (data_gen/marks.py): one with an LLM or agent span decides; one
    whose every span is a tool span only runs tools."""
    mine = [s for s in steps if s.agent == spec.name]
    if not mine:
        return spec
    if all(s.tool is not None for s in mine):
        return dataclasses.replace(spec, kind="tool", kind_reason="only tool spans")
    return dataclasses.replace(spec, kind="agent", kind_reason="has LLM or agent spans")


def _agent_spec(x: Any, root: Span) -> AgentSpec:
    text = (str, type(None))
    if not (isinstance(x, dict) and isinstance(x.get("name"), str)
            and isinstance(x.get("role"), text) and isinstance(x.get("prompt"), text)
            and isinstance(x.get("tools", []), list)
            and all(isinstance(t, str) for t in x.get("tools", []))
            and x.get("kind") in (None, *ENTITY_KINDS) and isinstance(x.get("kind_reason"), text)):
        raise root.error("expected a list of {name, role?, tools?, prompt?, kind?, kind_reason?}",
                         "astra.system.agents")
    return AgentSpec(name=x["name"], role=x.get("role"), tools=tuple(x.get("tools", ())),
                     prompt=x.get("prompt"), kind=x.get("kind"), kind_reason=x.get("kind_reason"))


def read_otlp(raws: Iterable[RawRecord], max_chars: int = MAX_CONTENT_CHARS
              ) -> Iterator[tuple[Trace, list[str]] | TraceError]:
    """The traces in OTLP records (the lines and files of one path): spans are grouped by trace
    id first, so a trace may span lines and files. Bad spans and bad traces come out as
    TraceErrors; a bad span refuses its whole trace, never a neighbour."""
    groups: dict[str, list[Span]] = {}
    refused: dict[str, TraceError] = {}
    for raw in raws:
        for item in spans_of(raw):
            if isinstance(item, Span):
                groups.setdefault(item.trace_id, []).append(item)
            elif isinstance(item, BadSpan) and item.trace_id is not None:
                refused.setdefault(item.trace_id, item.error)
            else:
                yield item.error if isinstance(item, BadSpan) else item
    for tid, spans in groups.items():
        if tid in refused:
            continue
        try:
            trace, warnings = trace_from_spans(tid, spans, max_chars)
        except TraceError as e:
            yield e
            continue
        first = spans[0]
        src = dict(trace.source, path=first.source)
        if first.record is not None:
            src["record"] = first.record
        yield dataclasses.replace(trace, source=src), warnings
    for tid, e in refused.items():
        yield TraceError(f"trace {tid} not read: {e.message}", e.source, e.record, e.field)


# --- native trace → OTLP ----------------------------------------------------------------------

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
