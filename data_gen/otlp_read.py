"""OpenTelemetry traces (OTLP JSON) → native traces.

Spans are decoded by `data_gen.otlp_spans` and read by `data_gen.otlp_attributes` (the GenAI
semantic conventions or OpenInference's); this module groups them into traces.

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

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from data_gen.files import COMPACT_CHARS, RawRecord, compacted, gc_paused
from data_gen.otlp_attributes import (first_user_message, json_value, output_text, own_agent,
                                      span_role, str_attr, tool_call)
from data_gen.otlp_spans import BadSpan, Span, spans_of
from data_gen.trace import (ENTITY_KINDS, MAX_CONTENT_CHARS, STEP_KINDS, VARIANTS, AgentSpec,
                            Label, Outcome, Step, System, Task, Trace, TraceError, check_content,
                            check_trace)

FORMAT = "otlp"


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
    agent = str_attr(span, "astra.label.agent")
    if agent is None and 0 <= step < len(steps):
        agent = steps[step].agent
    return Label(agent=(agent or "").strip(), step=step, mode=str_attr(span, "astra.label.mode"),
                 reason=str_attr(span, "astra.label.reason"))


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
    native = json_value(str_attr(s, "astra.step.extra"))
    if isinstance(native, dict):
        extra = {**native, **extra}
    refs = s.attrs.get("astra.step.refs", [])
    if not isinstance(refs, list) or not all(isinstance(r, int) and 0 <= r < index for r in refs):
        raise s.error(f"refs must be indices of earlier steps (0..{index - 1})", "astra.step.refs")
    kind = str_attr(s, "astra.step.kind") or ("tool_call" if role == "tool" else "message")
    if kind not in STEP_KINDS:
        raise s.error(f"{kind!r} is not one of {', '.join(STEP_KINDS)}", "astra.step.kind")
    return Step(index=index, agent=agent, content=content, kind=kind,
                to=str_attr(s, "astra.step.to"), role=str_attr(s, "astra.step.role"),
                tool=tool_call(s) if role == "tool" else None, refs=tuple(refs), extra=extra)


def _trace(trace_id: str, root: Span, tree: _Tree, steps: list[Step], label: Label | None) -> Trace:
    a = root.attrs
    question = str_attr(root, "astra.task.question")
    if question is None:
        question = next((q for q in (first_user_message(tree.spans[sid]) for sid in tree.order)
                         if q), "")
    agents_json = json_value(str_attr(root, "astra.system.agents"))
    if isinstance(agents_json, list):  # written by to_otlp: the team exactly as it was
        known = [_agent_spec(x, root) for x in agents_json]
    else:
        known = [AgentSpec(name=n) for n in dict.fromkeys(s.agent for s in steps)]
    known = [a if a.kind else _span_mark(a, steps) for a in known]
    success = a.get("astra.outcome.success")
    variant = str_attr(root, "astra.variant")
    if variant is not None and variant not in VARIANTS:
        raise root.error(f"{variant!r} is not one of {', '.join(VARIANTS)}", "astra.variant")
    extra = json_value(str_attr(root, "astra.trace.extra"))
    return Trace(
        trace_id=str_attr(root, "astra.trace_id") or trace_id,
        task=Task(question=question, ground_truth=str_attr(root, "astra.task.ground_truth")),
        steps=tuple(steps),
        system=System(framework=str_attr(root, "astra.system.framework") or root.scope,
                      topology=str_attr(root, "astra.system.topology"), agents=tuple(known)),
        outcome=Outcome(success=success if isinstance(success, bool) else None,
                        final_answer=str_attr(root, "astra.outcome.final_answer")),
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
    errors: list[TraceError] = []
    with gc_paused():  # a span and a step are many small containers (files.gc_paused)
        for raw in raws:
            for item in spans_of(raw):
                if isinstance(item, Span):
                    groups.setdefault(item.trace_id, []).append(item)
                elif isinstance(item, BadSpan) and item.trace_id is not None:
                    refused.setdefault(item.trace_id, item.error)
                else:
                    errors.append(item.error if isinstance(item, BadSpan) else item)
    yield from errors
    for tid, spans in groups.items():
        if tid in refused:
            continue
        try:
            with gc_paused():
                trace, warnings = _trace_of(tid, spans, max_chars)
        except TraceError as e:
            yield e
            continue
        yield trace, warnings
    for tid, e in refused.items():
        yield TraceError(f"trace {tid} not read: {e.message}", e.source, e.record, e.field)


def _trace_of(tid: str, spans: list[Span], max_chars: int) -> tuple[Trace, list[str]]:
    """The trace of one trace id's spans, its source the file of its first span; a large one
    copied out of the decoded file (files.compacted)."""
    trace, warnings = trace_from_spans(tid, spans, max_chars)
    first = spans[0]
    src = dict(trace.source, path=first.source)
    if first.record is not None:
        src["record"] = first.record
    trace = dataclasses.replace(trace, source=src)
    if sum(len(st.content) for st in trace.steps) > COMPACT_CHARS:
        trace = compacted(trace)
    return trace, warnings
