"""What a decoded span says, under the GenAI semantic conventions (`gen_ai.operation.name` =
`invoke_agent`, `chat`, `execute_tool`; `gen_ai.agent.name`; messages in
`gen_ai.input.messages`/`gen_ai.output.messages` or in events) or OpenInference's
(`openinference.span.kind` = AGENT, LLM, TOOL, CHAIN; `input.value`, `output.value`,
`llm.output_messages.*`): its role, its own agent, its messages, its output text and its tool
call. Span text is untrusted: it is only ever read as text.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from typing import Any

from data_gen.otlp_spans import Span
from data_gen.trace import ToolCall

LLM_OPERATIONS = ("chat", "text_completion", "generate_content")
_CONTENT_TEXT = re.compile(r"^message\.contents\.\d+\.message_content\.text$")


def str_attr(span: Span, key: str) -> str | None:
    v = span.attrs.get(key)
    if v is not None and not isinstance(v, str):
        raise span.error(f"expected a string, got {type(v).__name__}", key)
    return v


def json_value(text: Any) -> Any:
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
    name = str_attr(span, "gen_ai.agent.name")
    if name and name.strip():
        return name.strip()
    if span_role(span) == "agent":
        name = str_attr(span, "agent.name") or span.name
        return name.strip() or None
    meta = json_value(span.attrs.get("metadata"))
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
    value = json_value(value)
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
    d = json_value(text)
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
    name = (str_attr(span, "tool.name") or str_attr(span, "gen_ai.tool.name") or span.name)
    args = span.attrs.get("gen_ai.tool.call.arguments", span.attrs.get("input.value"))
    parsed = json_value(args)
    arguments = parsed if isinstance(parsed, dict) else ({"input": args} if args not in (None, "")
                                                          else {})
    status = span.status if span.status in ("ok", "error") else None
    return ToolCall(name=name, arguments=arguments, status=status)
