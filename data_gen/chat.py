"""Chat-message logs ⇄ native traces: the commonest form of a single agent's run.

A run is a list of messages `{"role", "content", ...}`, bare (a JSON list), under `"messages"` in
an object (its other keys are kept in `Trace.extra`), or one run per JSONL line. Two dialects,
freely mixed:
- OpenAI chat completions: roles `system`, `developer`, `user`, `assistant`, `tool` and the
  older `function`; an assistant's `tool_calls` (`[{id, type: "function", function: {name,
  arguments}}]`, `arguments` a JSON string) or older `function_call` (`{name, arguments}`); a
  tool message's `tool_call_id` and `name`; `content` a string, null or a list of parts
  (`{"type": "text", "text"}`, images, audio, refusals).
- Anthropic Messages: `content` a list of blocks, `text`, `thinking`, `tool_use` (`{id, name,
  input}`) and `tool_result` (`{tool_use_id, content, is_error}`, in a `user` message).

Every message is one step at its 0-based position in the file, so a step a user finds in the
file is the step the tool names. Its agent is the message's `name` where present, else its role;
a tool result (a `tool`/`function` message, or a user message of `tool_result` blocks) is a step
of the tool it answers, named after the tool. Entity marks (data_gen/marks.py) come from roles:
an assistant is an agent, a tool result's author a tool, an unnamed user and the system/developer
messages are the human and the harness; a named user (other agents in a multi-agent chat are
often written so) is left to the run's structure. Bad messages are warnings naming their
position; the rest of the run is read (docs/readers.md).
"""
from __future__ import annotations

import json
from typing import Any

from data_gen.marks import Mark
from data_gen.trace import (MAX_CONTENT_CHARS, AgentSpec, Step, System, Task, ToolCall, Trace,
                            TraceError, check_content)

FORMAT = "chat"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_HARNESS = ("system", "developer")


def is_message(d: Any) -> bool:
    return isinstance(d, dict) and isinstance(d.get("role"), str) and not (
        {"history", "schema", "resourceSpans", "messages"} & set(d))


def is_chat(d: Any) -> bool:
    """A bare list of messages, or an object holding them under `messages`."""
    if isinstance(d, list):
        return bool(d) and any(is_message(m) for m in d) and all(isinstance(m, dict) for m in d)
    return isinstance(d, dict) and isinstance(d.get("messages"), list) and "history" not in d


def _parts_text(parts: list, where: str, warnings: list[str]) -> tuple[str, list[dict], list[dict]]:
    """(text, tool uses, tool results) of a list of content parts or blocks."""
    texts, uses, results = [], [], []
    for j, p in enumerate(parts):
        kind = p.get("type") if isinstance(p, dict) else None
        if isinstance(p, str):
            texts.append(p)
        elif kind == "text" and isinstance(p.get("text"), str):
            texts.append(p["text"])
        elif kind == "refusal" and isinstance(p.get("refusal"), str):
            texts.append(p["refusal"])
        elif kind == "thinking" and isinstance(p.get("thinking"), str):
            texts.append(p["thinking"])
        elif kind == "tool_use" and isinstance(p.get("name"), str):
            uses.append(p)
        elif kind == "tool_result":
            results.append(p)
            inner = p.get("content")
            if isinstance(inner, str):
                texts.append(inner)
            elif isinstance(inner, list):
                texts.append(_parts_text(inner, f"{where}[{j}].content", warnings)[0])
        else:
            warnings.append(f"{where}[{j}]: {kind or type(p).__name__} part has no text; "
                            f"shown as [{kind or 'part'}]")
            texts.append(f"[{kind or 'part'}]")
    return "\n".join(t for t in texts if t), uses, results


def _arguments(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            return {"raw": raw}
        return value if isinstance(value, dict) else {"raw": value}
    return {} if raw is None else {"raw": raw}


def _call_text(name: str, args: dict[str, Any]) -> str:
    return f"{name}({json.dumps(args, ensure_ascii=False)})"


def from_chat(d: Any, max_chars: int = MAX_CONTENT_CHARS) -> tuple[Trace, list[str]]:
    """The native trace of one chat run (module docstring) and its warnings; raises a
    TraceError naming the field at fault when the run cannot be read at all."""
    messages = d if isinstance(d, list) else d["messages"]
    meta = {} if isinstance(d, list) else {k: v for k, v in d.items() if k != "messages"}
    prefix = "" if isinstance(d, list) else "messages"
    if not messages:
        raise TraceError("the run has no messages", field=prefix or "[0]")
    warnings: list[str] = []
    calls: dict[str, tuple[int, str]] = {}  # call id -> (step, tool name), until answered
    legacy: list[tuple[int, str]] = []  # function_call steps waiting for a `function` message
    steps: list[Step] = []
    marks: dict[str, Mark] = {}
    question = ""
    for i, m in enumerate(messages):
        where = f"{prefix}[{i}]"
        if not isinstance(m, dict):
            raise TraceError(f"expected a message object, got {type(m).__name__}", field=where)
        role = m.get("role")
        if not isinstance(role, str):
            raise TraceError("missing 'role'", field=where + ".role")
        name = m.get("name") if isinstance(m.get("name"), str) and m["name"].strip() else None
        content = m.get("content")
        if isinstance(content, str) or content is None:
            text, uses, results = content or "", [], []
        elif isinstance(content, list):
            text, uses, results = _parts_text(content, where + ".content", warnings)
        else:
            warnings.append(f"{where}.content: expected a string or a list of parts, got "
                            f"{type(content).__name__}; read as JSON text")
            text, uses, results = json.dumps(content, ensure_ascii=False), [], []
        text = check_content(text, where + ".content", max_chars)
        extra = {k: v for k, v in m.items() if k != "role"}  # `content` only where it differs
        kind, tool, agent = "message", None, name or role
        if role not in ROLES:
            warnings.append(f"{where}.role: unknown role {role!r}; read as a message of "
                            f"{agent!r}, left to the run's structure to mark")
        for c in m.get("tool_calls") or []:  # OpenAI
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                warnings.append(f"{where}.tool_calls: a call without function.name; ignored")
                continue
            uses.append({"id": c.get("id"), "name": fn["name"],
                         "input": _arguments(fn.get("arguments"))})
        fc = m.get("function_call")
        if isinstance(fc, dict) and isinstance(fc.get("name"), str):
            uses.append({"id": None, "name": fc["name"], "input": _arguments(fc.get("arguments"))})
            legacy.append((i, fc["name"]))
        answered = [r.get("tool_use_id") for r in results]
        if role == "tool" or (role == "function") or results:
            kind = "tool_result"
            ids = answered if results else [m.get("tool_call_id")]
            tool_name = name if role in ("tool", "function") else None
            for cid in ids:
                if isinstance(cid, str) and cid in calls:
                    answered_name = calls.pop(cid)[1]
                    tool_name = tool_name or answered_name
                elif role == "function" and legacy and (name is None or legacy[-1][1] == name):
                    answered_name = legacy.pop()[1]
                    tool_name = tool_name or answered_name
                else:
                    warnings.append(f"{where}: tool result {cid!r} answers no call before it")
            agent = tool_name or "tool"
            error = any(r.get("is_error") is True for r in results)
            tool = ToolCall(name=agent, status="error" if error else None)
            marks.setdefault(agent, Mark("tool", "answers tool calls"))
        elif uses:
            kind = "tool_call"
            first = uses[0]
            tool = ToolCall(name=first["name"], arguments=first.get("input") or {})
            text = "\n".join([text] * bool(text) + [_call_text(u["name"], u.get("input") or {})
                                                    for u in uses])
            for u in uses:
                if isinstance(u.get("id"), str):
                    calls[u["id"]] = (i, u["name"])
        if role == "assistant":
            marks[agent] = Mark("agent", "writes assistant messages")
        elif role in _HARNESS and agent not in marks:
            marks[agent] = Mark("human", f"{role} messages (the harness)")
        elif role == "user" and name is None and kind != "tool_result" and agent not in marks:
            marks[agent] = Mark("human", "user messages")
        if role == "user" and kind != "tool_result" and not question:
            question = text
        if not text.strip() and kind != "tool_call":
            warnings.append(f"{where}.content: empty; the step is kept and asserts nothing")
        if isinstance(content, str) and content == text:
            del extra["content"]
        steps.append(Step(index=i, agent=agent, content=text, kind=kind, role=role, tool=tool,
                          extra=extra))
    for cid, (i, tname) in calls.items():
        warnings.append(f"{prefix}[{i}]: tool call {cid!r} ({tname}) is never answered")
    if len(steps) == 1:
        warnings.append("a run of one message: there is little to attribute")
    names = list(dict.fromkeys(s.agent for s in steps))
    agents = tuple(AgentSpec(name=n, kind=marks[n].kind, kind_reason=marks[n].reason)
                   if n in marks else AgentSpec(name=n) for n in names)
    trace = Trace(trace_id="unnamed", task=Task(question=question),  # read_record names it
                  steps=tuple(steps), system=System(framework=FORMAT, agents=agents),
                  source={"format": FORMAT, "layout": "list" if isinstance(d, list)
                          else "messages"}, extra=meta)
    return trace, warnings


def to_chat(trace: Trace) -> Any:
    """The chat run a trace was read from (`Step.extra` and `Trace.extra` give it back)."""
    messages = []
    for s in trace.steps:
        messages.append({"role": s.role or "assistant", "content": s.content, **s.extra})
    return messages if trace.source.get("layout") == "list" else {**trace.extra,
                                                                   "messages": messages}
