"""The native trace format, `astra.trace/v1`, and its validation.

A trace is the log of one multi-agent run: the task, the team, the ordered steps, the outcome and,
for failed runs, the label (who made the decisive error, at which step, in which fault mode). It is
a superset of the Who&When record, so benchmark files and our own read the same way; fields a
source format carries that the native format has no place for are kept in `extra` so that writers
can give the original record back unchanged. The field reference is docs/trace_format.md.

Validation is strict about what would silently mislabel a record (types, step ranges, labels that
point outside the log) and lenient about what real logs legitimately do (a label agent who is not
the author of the labelled step is a warning, not an error).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "astra.trace/v1"
CANDIDATES_SCHEMA = "astra.candidates/v1"  # the coarse → fine contract (DESIGN.md)
VERDICT_SCHEMA = "astra.verdict/v1"  # the fine stage's output (DESIGN.md)
STEP_KINDS = ("message", "thought", "tool_call", "tool_result")
FAULT_MODES = (
    "role_violation",
    "parameter_error",
    "logic_error",
    "information_withholding",
    "context_loss",
    "environment_failure",
)
VARIANTS = ("golden", "fatal", "healed")
TOOL_STATUSES = ("ok", "error")
# what an entity of the log is (docs/trace_format.md § Entity marks): only agents are blamed
ENTITY_KINDS = ("agent", "tool", "environment", "human")
MAX_CONTENT_CHARS = 2_000_000


def normalise_agent(name: str) -> str:
    """Agent names compare equal after normalising case and whitespace only (DESIGN.md)."""
    return " ".join(str(name).split()).lower()


class TraceError(ValueError):
    """A record that cannot be read; names the file, the record in it and the field at fault."""

    def __init__(self, message: str, source: str = "<memory>", record: str | int | None = None,
                 field: str | None = None):
        self.message, self.source, self.record, self.field = message, source, record, field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.source]
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field:
            where.append(f"field '{self.field}'")
        return ": ".join(where) + f": {self.message}"

    def located(self, source: str, record: str | int | None) -> "TraceError":
        return TraceError(self.message, source, record if self.record is None else self.record,
                          self.field)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    status: str | None = None  # "ok" | "error" | None when unknown


@dataclass(frozen=True)
class Step:
    index: int
    agent: str
    content: str
    kind: str | None = None
    to: str | None = None
    role: str | None = None  # the source's role string, kept verbatim
    tool: ToolCall | None = None
    refs: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentSpec:
    name: str
    role: str | None = None
    tools: tuple[str, ...] = ()
    prompt: str | None = None
    kind: str | None = None  # one of ENTITY_KINDS; None: not marked (data_gen.marks infers it)
    kind_reason: str | None = None  # why it was marked so, in a few words


@dataclass(frozen=True)
class Task:
    question: str
    ground_truth: str | None = None


@dataclass(frozen=True)
class System:
    framework: str | None = None
    topology: str | None = None
    agents: tuple[AgentSpec, ...] = ()


@dataclass(frozen=True)
class Outcome:
    success: bool | None = None
    final_answer: str | None = None


@dataclass(frozen=True)
class Label:
    agent: str
    step: int
    mode: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Trace:
    trace_id: str
    task: Task
    steps: tuple[Step, ...]
    system: System = System()
    outcome: Outcome = Outcome()
    label: Label | None = None
    variant: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # format, path, key spellings
    extra: dict[str, Any] = field(default_factory=dict)  # source fields with no native place
    schema: str = SCHEMA

    @property
    def failed(self) -> bool:
        """Whether the run failed: its outcome says so, it is a fatal simulated run, or it carries
        a fault label and does not say it succeeded. Real formats often lack an outcome field
        (TracerTraj) or spell it differently, and a labelled record is a failure report."""
        if self.outcome.success is not None:
            return not self.outcome.success
        return self.variant == "fatal" or (self.label is not None and self.variant != "healed")

    @property
    def agents(self) -> list[str]:
        """Agents in order of first appearance in the log."""
        return list(dict.fromkeys(s.agent for s in self.steps))

    def to_dict(self) -> dict[str, Any]:
        return _drop_empty(dataclasses.asdict(self))


def _drop_empty(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_empty(v) for k, v in obj.items() if v is not None and v != {} and v != ()
                and v != []}
    if isinstance(obj, (list, tuple)):
        return [_drop_empty(v) for v in obj]
    return obj


# --- validation -------------------------------------------------------------------------------

def _need(d: dict, key: str, types: type | tuple, path: str, optional: bool = False) -> Any:
    if key not in d or d[key] is None:
        if optional:
            return None
        raise TraceError("missing required field", field=f"{path}{key}")
    value = d[key]
    # bool is an int subclass; never accept it where a number or string is meant.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        names = "/".join(t.__name__ for t in _as_tuple(types))
        raise TraceError(f"expected {names}, got {type(value).__name__}", field=f"{path}{key}")
    return value


def _as_tuple(types: type | tuple) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _choice(value: Any, allowed: tuple, fld: str) -> Any:
    if value is not None and value not in allowed:
        raise TraceError(f"{value!r} is not one of {', '.join(allowed)}", field=fld)
    return value


def check_content(content: str, fld: str, max_chars: int = MAX_CONTENT_CHARS) -> str:
    if len(content) > max_chars:
        raise TraceError(f"content of {len(content):,} characters exceeds the limit of "
                         f"{max_chars:,} (raise max_content_chars to accept it)", field=fld)
    return content


def step_from_dict(d: Any, position: int, max_chars: int = MAX_CONTENT_CHARS) -> Step:
    p = f"steps[{position}]."
    if not isinstance(d, dict):
        raise TraceError(f"expected an object, got {type(d).__name__}", field=f"steps[{position}]")
    index = _need(d, "index", int, p)
    if index != position:
        raise TraceError(f"step index {index} at position {position}: indices must be 0, 1, 2, ...",
                         field=p + "index")
    agent = _need(d, "agent", str, p)
    if not agent.strip():
        raise TraceError("empty agent name", field=p + "agent")
    content = check_content(_need(d, "content", str, p), p + "content", max_chars)
    refs = _need(d, "refs", list, p, optional=True) or []
    for r in refs:
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < index:
            raise TraceError(f"ref {r!r} must be the index of an earlier step (0..{index - 1})",
                             field=p + "refs")
    tool = None
    if d.get("tool") is not None:
        t = _need(d, "tool", dict, p)
        tool = ToolCall(name=_need(t, "name", str, p + "tool."),
                        arguments=_need(t, "arguments", dict, p + "tool.", optional=True) or {},
                        status=_choice(_need(t, "status", str, p + "tool.", optional=True),
                                       TOOL_STATUSES, p + "tool.status"))
    return Step(index=index, agent=agent, content=content,
                kind=_choice(_need(d, "kind", str, p, optional=True), STEP_KINDS, p + "kind"),
                to=_need(d, "to", str, p, optional=True),
                role=_need(d, "role", str, p, optional=True),
                tool=tool, refs=tuple(refs),
                extra=_need(d, "extra", dict, p, optional=True) or {})


def trace_from_dict(d: Any, max_chars: int = MAX_CONTENT_CHARS) -> Trace:
    """Parse and validate a native record; raises TraceError naming the field at fault."""
    if not isinstance(d, dict):
        raise TraceError(f"expected a JSON object, got {type(d).__name__}")
    schema = _need(d, "schema", str, "")
    if schema != SCHEMA:
        raise TraceError(f"unsupported schema {schema!r}; this version reads {SCHEMA!r}",
                         field="schema")
    trace_id = _need(d, "trace_id", str, "")
    task_d = _need(d, "task", dict, "")
    task = Task(question=_need(task_d, "question", str, "task."),
                ground_truth=_need(task_d, "ground_truth", str, "task.", optional=True))
    sys_d = _need(d, "system", dict, "", optional=True) or {}
    agents = []
    for i, a in enumerate(_need(sys_d, "agents", list, "system.", optional=True) or []):
        p = f"system.agents[{i}]."
        if not isinstance(a, dict):
            raise TraceError("expected an object", field=p[:-1])
        agents.append(AgentSpec(name=_need(a, "name", str, p), role=_need(a, "role", str, p, True),
                                tools=tuple(_need(a, "tools", list, p, True) or ()),
                                prompt=_need(a, "prompt", str, p, True),
                                kind=_choice(_need(a, "kind", str, p, True), ENTITY_KINDS,
                                             p + "kind"),
                                kind_reason=_need(a, "kind_reason", str, p, True)))
    system = System(framework=_need(sys_d, "framework", str, "system.", True),
                    topology=_need(sys_d, "topology", str, "system.", True), agents=tuple(agents))
    raw_steps = _need(d, "steps", list, "")
    steps = tuple(step_from_dict(s, i, max_chars) for i, s in enumerate(raw_steps))
    out_d = _need(d, "outcome", dict, "", optional=True) or {}
    outcome = Outcome(success=_need(out_d, "success", bool, "outcome.", True),
                      final_answer=_need(out_d, "final_answer", str, "outcome.", True))
    label = None
    if d.get("label") is not None:
        ld = _need(d, "label", dict, "")
        label = Label(agent=_need(ld, "agent", str, "label."), step=_need(ld, "step", int, "label."),
                      mode=_need(ld, "mode", str, "label.", True),
                      reason=_need(ld, "reason", str, "label.", True))
    trace = Trace(trace_id=trace_id, task=task, steps=steps, system=system, outcome=outcome,
                  label=label, variant=_choice(_need(d, "variant", str, "", True), VARIANTS,
                                               "variant"),
                  source=_need(d, "source", dict, "", True) or {},
                  extra=_need(d, "extra", dict, "", True) or {})
    check_trace(trace)
    return trace


def check_trace(t: Trace) -> list[str]:
    """Check cross-field consistency; raise on errors, return warnings."""
    if not t.trace_id.strip():
        raise TraceError("empty trace_id", field="trace_id")
    if not t.steps:
        raise TraceError("the log has no steps", field="steps")
    warnings = []
    if t.label is not None:
        lab = t.label
        if not 0 <= lab.step < len(t.steps):
            raise TraceError(f"label step {lab.step} is outside the log (0..{len(t.steps) - 1})",
                             field="label.step")
        if lab.agent not in set(t.agents):
            raise TraceError(f"label agent {lab.agent!r} never speaks in the log; agents are "
                             f"{', '.join(t.agents)}", field="label.agent")
        _choice(lab.mode, FAULT_MODES + ("unknown",), "label.mode")
        if t.steps[lab.step].agent != lab.agent:
            warnings.append(f"label agent {lab.agent!r} is not the author of step {lab.step} "
                            f"({t.steps[lab.step].agent!r})")
    if t.variant == "golden" and t.label is not None:
        raise TraceError("a golden trace carries no fault label", field="label")
    if t.variant in ("fatal", "healed") and t.label is None:
        raise TraceError(f"a {t.variant} trace needs a label", field="label")
    if t.variant == "fatal" and t.outcome.success:
        raise TraceError("a fatal trace cannot have a successful outcome", field="outcome.success")
    if t.variant in ("golden", "healed") and t.outcome.success is False:
        raise TraceError(f"a {t.variant} trace must end in success", field="outcome.success")
    return warnings
