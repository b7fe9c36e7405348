"""Who can be blamed: each entity of a log marked as an agent, a tool, the environment or a human.

Only an agent decides, so only an agent is ever a candidate (the DHCG's `agent_is_env`, used by
the coarse stage's mask and by every verdict). A mark has a kind (`ENTITY_KINDS`) and a short
reason, and lives on the trace (`system.agents[].kind`, `.kind_reason`; docs/trace_format.md), so
a converted file keeps it and a user can change it.

Where the marks come from, first match wins:
1. a user's override (`override_marks`: the `--agents` / `--not-agents` flags, the labels sidecar);
2. the source format's own structure, set by its reader: chat roles and tool calls
   (data_gen/chat.py), OTLP span kinds (data_gen/otlp_read.py), Who&When's `system_prompt` (an LLM
   agent has a prompt, the code executor none), TracerTraj's `system` role, a native file's marks;
3. the run's structure, for everything a format leaves open (`structure_marks`):
   S1 an entity every step of which is a `tool_result` is a tool;
   S2 an entity whose one turn is step 0 and opens with the task's question, word for word, is
      the human who asked;
   S3 an entity more than half of whose turns answer an invocation (`answers_call`), that never
      opens the log, speaks only right after another entity, never invokes (no code block, no
      tool call), never addresses anyone and never speaks in the first person answers others'
      actions and starts none: a tool;
   everything else is an agent.
Names are never read: `Computer_terminal` is a tool because of what it does in the log.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping

from data_gen.trace import ENTITY_KINDS, AgentSpec, Trace, TraceError

_CODE = re.compile(r"```")
_FENCED = re.compile(r"```[^\n`]*\n[\s\S]*?```")  # a code block an executor would run
_FIRST_PERSON = re.compile(r"\b(?:I|I'm|I'll|I've|I'd|me|my|mine|we|we're|we'll|let's|us|our)\b",
                           re.IGNORECASE)


@dataclass(frozen=True)
class Mark:
    kind: str  # one of ENTITY_KINDS
    reason: str


def _ws(text: str) -> str:
    return " ".join(text.split())


def answers_call(trace: Trace, index: int) -> bool:
    """Whether step `index` directly answers an invocation: the step before it, by another
    entity, calls a tool or holds a fenced code block (what an executor runs)."""
    if index == 0:
        return False
    prev, s = trace.steps[index - 1], trace.steps[index]
    return prev.agent != s.agent and ((prev.tool is not None and prev.kind != "tool_result")
                                      or bool(_FENCED.search(prev.content)))


def _only_answers(trace: Trace, mine: list) -> bool:
    """S3: most turns answer an invocation, and none opens the log, follows the entity's own
    turn, invokes, addresses anyone, thinks aloud or speaks in the first person."""
    if 2 * sum(answers_call(trace, s.index) for s in mine) <= len(mine):
        return False
    return all(s.index > 0 and trace.steps[s.index - 1].agent != s.agent and s.to is None
               and s.kind != "thought" and s.tool is None and not _CODE.search(s.content)
               and not _FIRST_PERSON.search(s.content) for s in mine)


def structure_marks(trace: Trace) -> dict[str, Mark]:
    """Marks from the run's structure alone (rules S1-S3 above), for every entity of the log."""
    steps = trace.steps
    question = _ws(trace.task.question)
    out = {}
    for name in trace.agents:
        mine = [s for s in steps if s.agent == name]
        if all(s.kind == "tool_result" for s in mine):
            out[name] = Mark("tool", "every step is a tool result")
        elif (len(mine) == 1 and mine[0].index == 0 and len(trace.agents) > 1 and question
              and _ws(mine[0].content).startswith(question)):
            out[name] = Mark("human", "opens the log with the task and never speaks again")
        elif len(trace.agents) > 1 and _only_answers(trace, mine):
            out[name] = Mark("tool", "mostly answers others' tool calls or code; never acts, "
                                     "addresses anyone or speaks in the first person")
        else:
            out[name] = Mark("agent", "acts in the log")
    return out


def given_marks(trace: Trace) -> dict[str, Mark]:
    """The marks the trace carries (its reader's, its file's or a user's)."""
    return {a.name: Mark(a.kind, a.kind_reason or "") for a in trace.system.agents
            if a.kind is not None}


def entity_marks(trace: Trace) -> dict[str, Mark]:
    """Every entity of the log (in `trace.agents` order) with its mark: the one the trace
    carries, else the run's structure's."""
    given = given_marks(trace)
    inferred = structure_marks(trace) if any(a not in given for a in trace.agents) else {}
    return {a: given.get(a) or inferred[a] for a in trace.agents}


def with_marks(trace: Trace, marks: Mapping[str, Mark] | None = None) -> Trace:
    """The trace with every entity marked: `marks` first (a reader's format rules), then what
    the trace already carries, then the run's structure. Entities with no agent spec gain one."""
    marks = dict(marks or {})
    full = {**entity_marks(trace), **{k: v for k, v in marks.items() if k in trace.agents}}
    specs = {a.name: a for a in trace.system.agents}
    agents = [dataclasses.replace(a, kind=full[a.name].kind, kind_reason=full[a.name].reason)
              if a.name in full else a for a in trace.system.agents]
    agents += [AgentSpec(name=n, kind=m.kind, kind_reason=m.reason) for n, m in full.items()
               if n not in specs]
    return dataclasses.replace(trace, system=dataclasses.replace(trace.system,
                                                                 agents=tuple(agents)))


def override_marks(trace: Trace, overrides: Mapping[str, str]) -> Trace:
    """A user's word on who is an agent: `overrides` maps entity names to kinds
    (`ENTITY_KINDS`). A name the log does not have, or an unknown kind, is an error naming it."""
    known = set(trace.agents)
    for name, kind in overrides.items():
        if name not in known:
            raise TraceError(f"override names {name!r}, which never speaks in the log; entities "
                             f"are {', '.join(trace.agents)}", field="agents")
        if kind not in ENTITY_KINDS:
            raise TraceError(f"override kind {kind!r} for {name!r} is not one of "
                             f"{', '.join(ENTITY_KINDS)}", field="agents")
    return with_marks(trace, {n: Mark(k, "set by the user") for n, k in overrides.items()})


def parse_overrides(agents: str = "", not_agents: str = "") -> dict[str, str]:
    """The `--agents A,B` and `--not-agents C` flags as `override_marks` takes them; a name in
    both is an error."""
    yes = [n.strip() for n in agents.split(",") if n.strip()]
    no = [n.strip() for n in not_agents.split(",") if n.strip()]
    both = sorted(set(yes) & set(no))
    if both:
        raise ValueError(f"named both an agent and not an agent: {', '.join(both)}")
    return {**{n: "agent" for n in yes}, **{n: "environment" for n in no}}


def not_agents(trace: Trace) -> list[dict[str, str]]:
    """The entities read as tools, environment or humans, with why: for `astra attribute`, the
    candidates file and the report."""
    return [{"entity": a, "kind": m.kind, "reason": m.reason}
            for a, m in entity_marks(trace).items() if m.kind != "agent"]


def single_agent(trace: Trace) -> bool:
    """One agent decides everything: the only question is when."""
    return sum(m.kind == "agent" for m in entity_marks(trace).values()) == 1
