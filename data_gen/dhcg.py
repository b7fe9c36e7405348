"""The Dynamic Heterogeneous Causal Graph (DHCG) of a trace. Pure numpy: the coarse stage learns
over it and the report draws it, so it lives beside the trace format.

Nodes are *states*: one per (entity, step) in which the entity takes part. Entities are typed:
agent, tool, artifact (URLs, files, code, named values) and environment (the task/world). Each
step is one snapshot; its author's state is the *step node*, the only node a fault is attributed
to. Edges run cause → effect and carry a type and the step they belong to:

- communicate: author → addressee (the step's `to`, or an agent the text addresses by name);
- invoke: author → tool (a tool call, or a code block handed to the executor);
- return: tool → the agent that receives the output (tool results, `exitcode:` blocks, errors);
- reference: the step that produced a value → the step that reuses it (exact `refs` for simulated
  traces; inferred from reused URLs, file names and numbers for real logs), and artifact → author;
- affect: author → artifact it introduces, and author → environment for the final answer;
- temporal: each of an entity's last `TEMPORAL_WINDOW` states → its next state (the causal
  temporal attention runs over these).

Inference rules for real logs (each is tested on development logs):
R1 addressed: `to` set, else the first agent named in the first line of the text.
R2 code: a fenced code block makes an invoke edge to tool `python` and an artifact `code`.
R3 tool output: a tool_result step, or a turn of an entity marked tool/environment/human
   (data_gen/marks.py) that answers an invocation (the step before it, by another entity, calls
   a tool or holds a fenced code block), is a return edge; such an entity's other turns (an
   executor's "no code to execute" notice) return nothing.
R4 reuse: a URL, file name or number of 3+ digits seen in an earlier step links the earlier step
   node to this one (reference), through an artifact node.
R5 error: exit code ≠ 0, `Error`/`Exception`/`Traceback` or tool status error set error signals.
R6 not an agent: an entity marked tool, environment or human (data_gen/marks.py: from the
   format's structure, else the run's, or a user's override) reports or asks; it does not decide,
   so it is never a candidate (unless every entity is so marked: a log always has a suspect).
R7 empty step: a step whose text is empty or only an end-of-chat keyword (AutoGen's bare
   "TERMINATE") asserts nothing, so it is never a candidate step (unless every step is one).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from data_gen.marks import answers_call, entity_marks
from data_gen.trace import Step, Trace

NODE_TYPES = ("agent", "tool", "artifact", "environment")
EDGE_TYPES = ("communicate", "invoke", "return", "reference", "affect", "temporal")
TEMPORAL = EDGE_TYPES.index("temporal")  # the kind the temporal attention reads; the rest spatial
TEMPORAL_WINDOW = 8  # how many past states of an entity each state attends over
_URL = re.compile(r"https?://[^\s)\]\"'>]+")
_EXTENSIONS = r"\.(?:csv|xlsx|json|txt|pdf|py|md|html|png|jpg|mp3|docx)\b"
_FILE = re.compile(r"\b[\w./-]+" + _EXTENSIONS)
_EXTENSION = re.compile(_EXTENSIONS)  # in every file name: a text without one has none
_NUM = re.compile(r"(?=\d)(?<![\w.])\d[\d,]*(?:\.\d+)?(?![\w])")  # lookahead: evidence.py
_CODE = re.compile(r"```")
_ERR = re.compile(r"Traceback|Error\b|Exception|exitcode: [1-9]|execution failed|failed\)")
_EXIT = re.compile(r"exitcode: (\d+)")
_EMPTY = re.compile(r"[\W_]*(?:TERMINATE[\W_]*)?", re.IGNORECASE)


def has_error(step: Step) -> bool:
    """R5: the step reports an error (a traceback, an exception, a non-zero exit code, a failed
    execution, or a tool call whose status is error)."""
    return bool(_ERR.search(step.content)) or (step.tool is not None and step.tool.status == "error")


def values_in(text: str) -> set[str]:
    """The reusable values a step shows: URLs, file names, numbers of 3+ digits (R4)."""
    vals = set(_URL.findall(text))
    if _EXTENSION.search(text):
        vals |= set(_FILE.findall(text))
    vals |= {n.replace(",", "") for n in _NUM.findall(text) if len(n.replace(",", "")) >= 3}
    return vals


@dataclass(frozen=True)
class DHCG:
    """Arrays of one trace's graph. N nodes, E edges, S steps, A agents."""
    node_type: np.ndarray  # [N] int, index into NODE_TYPES
    node_step: np.ndarray  # [N] int, the snapshot
    node_entity: np.ndarray  # [N] int, entity index within the trace
    step_node: np.ndarray  # [S] int, node index of each step's author state
    step_agent: np.ndarray  # [S] int, agent index of each step's author
    senders: np.ndarray  # [E]
    receivers: np.ndarray  # [E]
    edge_type: np.ndarray  # [E] int, index into EDGE_TYPES
    agents: tuple[str, ...]
    signals: np.ndarray  # [S, K] float, per-step inferred signals (see STEP_SIGNALS)
    entities: tuple[tuple[str, str], ...]  # (node type, name) of each entity index
    agent_is_env: np.ndarray  # [A] bool, R6: the entity is marked tool, environment or human
    step_is_empty: np.ndarray  # [S] bool, R7: the step asserts nothing


STEP_SIGNALS = ("has_code", "has_error", "exit_nonzero", "tool_error", "n_values_log",
                "n_reused_log", "n_new_log", "prev_error", "addressed", "is_tool_result",
                "no_values", "new_value_after_error")


def build_dhcg(trace: Trace) -> DHCG:
    agents = tuple(trace.agents)
    agent_ix = {a: i for i, a in enumerate(agents)}
    entity_ix: dict[tuple[str, str], int] = {("agent", a): i for i, a in enumerate(agents)}
    n_type, n_step, n_ent = [], [], []
    senders, receivers, etypes = [], [], []
    history: dict[int, list[int]] = {}  # entity -> its states so far
    step_node, step_agent, signals = [], [], []
    seen_values: dict[str, int] = {}  # value -> step node that first showed it
    prev_error = 0.0
    marks = entity_marks(trace)
    reports = [marks[a].kind != "agent" for a in agents]  # R6

    def state(kind: str, name: str, step: int) -> int:
        key = (kind, name)
        ent = entity_ix.setdefault(key, len(entity_ix))
        node = len(n_type)
        n_type.append(NODE_TYPES.index(kind))
        n_step.append(step)
        n_ent.append(ent)
        past = history.setdefault(ent, [])
        for prev in past[-TEMPORAL_WINDOW:]:
            edge(prev, node, "temporal")
        past.append(node)
        return node

    def edge(s: int, r: int, kind: str) -> None:
        senders.append(s)
        receivers.append(r)
        etypes.append(EDGE_TYPES.index(kind))

    for s in trace.steps:
        me = state("agent", s.agent, s.index)
        step_node.append(me)
        step_agent.append(agent_ix[s.agent])
        text = s.content
        to = s.to
        if to is None:  # R1
            first = text.split("\n", 1)[0]
            to = next((a for a in agents if a != s.agent and a in first), None)
        if to is not None and to != s.agent:
            edge(me, state("agent", to, s.index), "communicate")
        has_code = bool(_CODE.search(text))
        tool_name = s.tool.name if s.tool else ("python" if has_code else None)
        if tool_name and s.kind != "tool_result":  # R2
            t = state("tool", tool_name, s.index)
            edge(me, t, "invoke")
        is_result = s.kind == "tool_result" or (reports[agent_ix[s.agent]]
                                                 and answers_call(trace, s.index))
        if is_result:  # R3
            t = state("tool", tool_name or "python", s.index)
            edge(t, me, "return")
        vals = values_in(text)
        reused = [v for v in vals if v in seen_values]
        refs = set(s.refs)
        if not refs:  # R4 for logs without exact structure
            refs = {n_step[seen_values[v]] for v in reused}
        for r in sorted(refs):
            edge(step_node[r], me, "reference")
        for v in sorted(vals)[:8]:
            a = state("artifact", v, s.index)
            edge(a, me, "reference") if v in seen_values else edge(me, a, "affect")
        for v in vals:
            seen_values.setdefault(v, me)
        if s.index == len(trace.steps) - 1:
            edge(me, state("environment", "task", s.index), "affect")
        exit_m = _EXIT.search(text)
        error = has_error(s)
        new = len(vals) - len(reused)
        signals.append([
            float(has_code), float(error), float(bool(exit_m and exit_m.group(1) != "0")),
            float(s.tool is not None and s.tool.status == "error"), np.log1p(len(vals)),
            np.log1p(len(reused)), np.log1p(new), prev_error, float(to is not None),
            float(is_result), float(not vals), float(prev_error > 0 and new > 0)])
        prev_error = float(error)

    empty = np.array([bool(_EMPTY.fullmatch(s.content)) for s in trace.steps], bool)  # R7
    as_int = lambda x: np.asarray(x, dtype=np.int32)  # noqa: E731
    return DHCG(as_int(n_type), as_int(n_step), as_int(n_ent), as_int(step_node),
                as_int(step_agent), as_int(senders), as_int(receivers), as_int(etypes), agents,
                np.asarray(signals, dtype=np.float32).reshape(len(trace.steps), len(STEP_SIGNALS)),
                tuple(entity_ix), np.asarray(reports, bool) & (not all(reports)),
                empty & (not empty.all()))
