"""Readers of the formats seen in the field, converting losslessly into the native trace, and
writers back to the Who&When format.

Formats (docs/readers.md has the details and the inference rules):
- `native`: `astra.trace/v1` records.
- `whowhen-algorithm`: Who&When algorithm-generated; `history` items `{content, role, name}`.
- `whowhen-handcrafted`: Who&When hand-crafted (Magentic-One); items carry only `role`, such as
  `Orchestrator (-> WebSurfer)`; the agent is the part before ` (`.
- `tracertraj`: TracerTraj (MetaGPT teams); items `{content, name, role, step}`.
- `chat`: chat-message logs (OpenAI chat completions, Anthropic Messages), a list of messages or
  `{"messages": [...]}` (`data_gen/chat.py`).
- `otlp`: OpenTelemetry traces as OTLP JSON (`{"resourceSpans": [...]}`), GenAI or OpenInference
  attributes; spans are grouped by trace id across the lines and files of a path
  (`data_gen/otlp_read.py`; written by `data_gen/otlp_write.py`).

Who&When labels: `mistake_agent`, `mistake_step` (a 0-based index into `history`, stored as a
string), `mistake_reason`. Everything a reader does not map stays in `Trace.extra`/`Step.extra`, so
`to_whowhen(read(record)) == record`.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from data_gen import chat
from data_gen.marks import Mark, with_marks
from data_gen.files import MAX_FILE_BYTES, RawRecord, iter_records, release_free_memory
from data_gen.otlp_read import read_otlp
from data_gen.otlp_spans import is_otlp
from data_gen.otlp_write import to_otlp
from data_gen.trace import (MAX_CONTENT_CHARS, AgentSpec, Label, Outcome, Step, System, Task, Trace,
                            TraceError, _need, check_content, check_trace, trace_from_dict)

FORMATS = ("native", "whowhen-algorithm", "whowhen-handcrafted", "tracertraj", "otlp", "chat")
_LABEL_KEYS = ("mistake_agent", "mistake_step", "mistake_reason")
_MAPPED_KEYS = {"history", "question", "ground_truth", "groundtruth", "system_prompt", *_LABEL_KEYS}
_ROLE_RE = re.compile(r"^(?P<agent>.+?) \((?P<note>.*)\)$")


def detect_format(d: Any) -> str:
    if chat.is_chat(d):
        return "chat"
    if chat.is_message(d):
        raise TraceError("a lone chat message: a chat file holds one run per record (a list of "
                         "messages, or {\"messages\": [...]}), one per line in JSONL",
                         field="role")
    if not isinstance(d, dict):
        raise TraceError(f"expected a JSON object, got {type(d).__name__}")
    if isinstance(d.get("schema"), str) and d["schema"].startswith("astra.trace/"):
        return "native"
    if is_otlp(d):
        return "otlp"
    history = d.get("history")
    if history is None:
        raise TraceError("unknown format: neither 'schema' (native), 'resourceSpans' (OTLP), "
                         "'history' (Who&When, TracerTraj) nor 'messages' (chat) is present",
                         field="history")
    if not isinstance(history, list):
        raise TraceError(f"expected list, got {type(history).__name__}", field="history")
    if not history:
        raise TraceError("the log has no steps", field="history")
    items = [h for h in history if isinstance(h, dict)]
    if items and all("name" in h and "step" in h for h in items):
        return "tracertraj"
    if items and all("name" in h for h in items):
        return "whowhen-algorithm"
    if items and all("role" in h and "name" not in h for h in items):
        return "whowhen-handcrafted"
    first_bad = next((i for i, h in enumerate(history) if not isinstance(h, dict)), None)
    if first_bad is not None:
        raise TraceError(f"expected an object, got {type(history[first_bad]).__name__}",
                         field=f"history[{first_bad}]")
    raise TraceError("history items mix styles: every item needs 'name' (algorithm-generated, "
                     "TracerTraj) or every item only 'role' (hand-crafted)", field="history")


def parse_role(role: str) -> tuple[str, str | None, str | None]:
    """`Orchestrator (-> WebSurfer)` → (Orchestrator, message, WebSurfer);
    `Orchestrator (thought)` → (Orchestrator, thought, None); `WebSurfer` → (WebSurfer, None, None)."""
    m = _ROLE_RE.match(role.strip())
    if not m:
        return role.strip(), None, None
    agent, note = m["agent"].strip(), m["note"].strip()
    if note.startswith("->"):
        return agent, "message", note[2:].strip() or None
    if note == "thought":
        return agent, "thought", None
    return agent, None, None


def _whowhen_steps(history: list, fmt: str, max_chars: int) -> list[Step]:
    steps = []
    for i, item in enumerate(history):
        p = f"history[{i}]."
        if not isinstance(item, dict):
            raise TraceError(f"expected an object, got {type(item).__name__}", field=p[:-1])
        content = check_content(_need(item, "content", str, p), p + "content", max_chars)
        rest = {k: v for k, v in item.items() if k not in ("content", "name", "role")}
        if fmt == "whowhen-handcrafted":
            role = _need(item, "role", str, p)
            agent, kind, to = parse_role(role)
        else:
            agent = _need(item, "name", str, p)
            role = _need(item, "role", str, p, optional=True)
            kind, to = None, None
        if not agent.strip():
            raise TraceError("empty agent name", field=p + ("role" if fmt.endswith("crafted")
                                                             else "name"))
        steps.append(Step(index=i, agent=agent, content=content, kind=kind, to=to, role=role,
                          extra=rest))
    return steps


def _label(d: dict) -> Label | None:
    if "mistake_agent" not in d and "mistake_step" not in d:
        return None
    agent = _need(d, "mistake_agent", str, "")
    raw = _need(d, "mistake_step", (str, int), "")
    try:
        step = int(raw)
    except ValueError:
        raise TraceError(f"{raw!r} is not a step index", field="mistake_step") from None
    return Label(agent=agent.strip(), step=step, mode=None,
                 reason=_need(d, "mistake_reason", str, "", optional=True))


def from_whowhen(d: dict, fmt: str, max_chars: int = MAX_CONTENT_CHARS) -> Trace:
    steps = _whowhen_steps(_need(d, "history", list, ""), fmt, max_chars)
    gt_key = "groundtruth" if "groundtruth" in d and "ground_truth" not in d else "ground_truth"
    prompts = _need(d, "system_prompt", dict, "", optional=True)
    agents = [AgentSpec(name=k, prompt=v if isinstance(v, str) else json.dumps(v))
              for k, v in (prompts or {}).items()]
    known = {a.name for a in agents}
    agents += [AgentSpec(name=a) for a in dict.fromkeys(s.agent for s in steps) if a not in known]
    agents = [dataclasses.replace(a, kind=m.kind, kind_reason=m.reason) if m else a
              for a, m in ((a, _whowhen_mark(a, steps, prompts, fmt)) for a in agents)]
    label = _label(d)
    extra = {k: v for k, v in d.items() if k not in _MAPPED_KEYS}
    # the success flag: `is_correct`; Who&When's hand-crafted records spell it `is_corrected`
    is_correct = extra.get("is_correct", extra.get("is_corrected"))
    trace = Trace(
        trace_id="unnamed",  # read_record names it after its file
        task=Task(question=_need(d, "question", str, "", optional=True) or "",
                  ground_truth=_gt(d.get(gt_key))),
        steps=tuple(steps),
        system=System(framework={"whowhen-handcrafted": "magentic-one",
                                 "tracertraj": "metagpt"}.get(fmt, "autogen-captainagent"),
                      agents=tuple(agents)),
        outcome=Outcome(success=is_correct if isinstance(is_correct, bool) else None),
        label=label,
        source={k: v for k, v in {
            "format": fmt, "ground_truth_key": gt_key if gt_key in d else None,
            "step_type": type(d["mistake_step"]).__name__ if label else None,
            "system_prompt": prompts is not None,
            "ground_truth_raw": d.get(gt_key) if not isinstance(d.get(gt_key), str) else None,
        }.items() if v is not None},
        extra=extra,
    )
    return trace


def _whowhen_mark(spec: AgentSpec, steps: list[Step], prompts: dict | None, fmt: str
                  ) -> Mark | None:
    """The format's word on an entity (data_gen/marks.py), None where it has none: Who&When's
    `system_prompt` holds the prompt of every LLM agent, so a speaker without one is not an LLM
    (AutoGen's code executor); TracerTraj's `system` role is the harness."""
    mine = [s for s in steps if s.agent == spec.name]
    if fmt == "whowhen-algorithm" and prompts and mine:
        if spec.name in prompts:
            return Mark("agent", "has a system prompt")
        return Mark("tool", "no system prompt, while the log gives its teammates': not an LLM")
    if fmt == "tracertraj" and mine and all(s.role == "system" for s in mine):
        return Mark("human", "speaks only in the system role (the harness)")
    return None


def _gt(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def read_record(raw: RawRecord, max_chars: int = MAX_CONTENT_CHARS) -> tuple[Trace, list[str]]:
    """Convert one raw record; returns the trace and its warnings, raises a located TraceError.
    An OTLP record must hold exactly one whole trace here; files go through `iter_traces`, which
    gathers a trace's spans across lines."""
    try:
        fmt = detect_format(raw.data)
        if fmt == "otlp":
            return _one_otlp_trace(raw, max_chars)
        chat_warnings: list[str] = []
        if fmt == "native":
            trace = trace_from_dict(raw.data, max_chars)
        else:
            if fmt == "chat":
                trace, chat_warnings = chat.from_chat(raw.data, max_chars)
            else:
                trace = from_whowhen(raw.data, fmt, max_chars)
            stem = Path(raw.source).stem
            tid = stem if raw.record is None else f"{stem}:{raw.record}"
            trace = dataclasses.replace(trace, trace_id=tid)
        trace = with_marks(trace)
        warnings = chat_warnings + check_trace(trace)
    except TraceError as e:
        raise e.located(raw.source, raw.record) from None
    src = dict(trace.source, path=raw.source)
    if raw.record is not None:
        src["record"] = raw.record
    return dataclasses.replace(trace, source=src), warnings


def _one_otlp_trace(raw: RawRecord, max_chars: int) -> tuple[Trace, list[str]]:
    results = list(read_otlp([raw], max_chars))
    errors = [r for r in results if isinstance(r, TraceError)]
    if errors:
        raise errors[0]
    if len(results) != 1:
        raise TraceError(f"expected one trace, found {len(results)}", raw.source, raw.record,
                         "resourceSpans")
    return results[0]


@dataclass
class LoadReport:
    traces: list[Trace] = field(default_factory=list)
    errors: list[TraceError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def iter_traces(path: str | Path, max_chars: int = MAX_CONTENT_CHARS,
                max_file_bytes: int = MAX_FILE_BYTES
                ) -> Iterator[tuple[Trace, list[str]] | TraceError]:
    """Every record under `path`, read; bad records come out as TraceError and reading goes on.
    OTLP records are gathered and read last, so that a trace whose spans lie on several lines
    or files is read whole."""
    spans: list[RawRecord] = []
    for raw in iter_records(path, max_file_bytes):
        if isinstance(raw, TraceError):
            yield raw
        elif is_otlp(raw.data):
            spans.append(raw)
        else:
            try:
                yield read_record(raw, max_chars)
            except TraceError as e:
                yield e
    yield from read_otlp(spans, max_chars)
    if spans:
        del spans
        release_free_memory()  # the decoded OTLP files (see files.compacted)


def load_traces(paths: str | Path | Iterable[str | Path], **kw) -> LoadReport:
    report = LoadReport()
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        for item in iter_traces(path, **kw):
            if isinstance(item, TraceError):
                report.errors.append(item)
            else:
                trace, warnings = item
                report.traces.append(trace)
                where = trace.source.get("path", trace.trace_id)
                report.warnings += [f"{where}: {w}" for w in warnings]
    report.traces, renamed = unique_ids(report.traces)
    report.warnings += renamed
    return report


def unique_ids(traces: list[Trace]) -> tuple[list[Trace], list[str]]:
    """Traces whose ids collide get their file's folder name in front (`Hand-Crafted/1` beside
    `Algorithm-Generated/1`: Who&When names a log after its file, and both of its subsets have
    a `1.json`), so that every stage can key a trace by its id. The same paths always give the
    same ids; the record's own id stays in `source["record_id"]` (a label may name it); each
    renaming is returned as a warning."""
    count: dict[str, int] = {}
    for t in traces:
        count[t.trace_id] = count.get(t.trace_id, 0) + 1
    out, renamed = [], []
    for t in traces:
        if count[t.trace_id] > 1 and "path" in t.source:
            new = f"{Path(t.source['path']).parent.name}/{t.trace_id}"
            renamed.append(f"{t.trace_id!r} → {new!r}")
            t = dataclasses.replace(t, trace_id=new, source={**t.source, "record_id": t.trace_id})
        out.append(t)
    notes = [f"{len(renamed)} records share a trace id with a record of another folder and are "
             f"named FOLDER/ID ({', '.join(renamed[:2])}, ...)"] if renamed else []
    left = [tid for tid, n in Counter(t.trace_id for t in out).items() if n > 1]
    notes += [f"trace id {tid!r} is still shared by several records of one folder" for tid in left]
    return out, notes


def load_valid_traces(paths: Iterable[str | Path]) -> list[Trace]:
    """For batch commands: the valid traces; each invalid record is reported on stderr, named
    by file and field, and the rest carry on."""
    report = load_traces(paths)
    for e in report.errors:
        print(f"skipped (invalid): {e}", file=sys.stderr)
    return report.traces


# --- writers --------------------------------------------------------------------------------

def to_whowhen(trace: Trace, style: str | None = None) -> dict[str, Any]:
    """The Who&When record of a trace. `style` is `algorithm` (items with `name`) or
    `handcrafted` (items with a `role` string only); by default the style it was read in."""
    fmt = trace.source.get("format")
    ours = fmt in (None, "native", "astra-gen")  # not read from an external record: no extras
    style = style or ("handcrafted" if fmt == "whowhen-handcrafted" else "algorithm")
    history = []
    for s in trace.steps:
        item: dict[str, Any] = {"content": s.content}
        if style == "handcrafted":
            item["role"] = s.role if fmt == "whowhen-handcrafted" and s.role else _role_of(s)
        else:
            item["name"] = s.agent
            if s.role is not None or ours:
                item["role"] = s.role or "assistant"
        item.update(s.extra)
        history.append(item)
    out: dict[str, Any] = dict(trace.extra) if not ours else {
        "is_correct": trace.outcome.success if trace.outcome.success is not None else False,
        "question_ID": trace.trace_id}
    out["question"] = trace.task.question
    gt_key = trace.source.get("ground_truth_key")
    if gt_key is None and ours and trace.task.ground_truth is not None:
        gt_key = "ground_truth"
    if gt_key:
        gt_raw = trace.source.get("ground_truth_raw")
        out[gt_key] = gt_raw if gt_raw is not None else trace.task.ground_truth
    out["history"] = history
    if trace.label is not None:
        step_type = trace.source.get("step_type", "str")
        out["mistake_agent"] = trace.label.agent
        out["mistake_step"] = trace.label.step if step_type == "int" else str(trace.label.step)
        if trace.label.reason is not None:
            out["mistake_reason"] = trace.label.reason
    if trace.source.get("system_prompt", ours):
        prompts = {a.name: a.prompt for a in trace.system.agents if a.prompt is not None}
        if prompts or trace.source.get("system_prompt"):
            out["system_prompt"] = prompts
    return out


def _role_of(s: Step) -> str:
    if s.kind == "thought":
        return f"{s.agent} (thought)"
    if s.to:
        return f"{s.agent} (-> {s.to})"
    return s.agent


def encode_native(trace: Trace) -> str:
    return json.dumps(trace.to_dict(), ensure_ascii=False)


def encode_whowhen(trace: Trace) -> str:
    return json.dumps(to_whowhen(trace), ensure_ascii=False)


def encode_otlp(trace: Trace) -> str:
    return json.dumps(to_otlp(trace), ensure_ascii=False)


ENCODERS = {"native": encode_native, "whowhen": encode_whowhen, "otlp": encode_otlp}


def write_traces(traces: Iterable[Trace | str], out: str | Path, fmt: str = "native",
                 layout: str = "jsonl") -> int:
    """Write traces as one JSONL file (`layout=jsonl`) or one JSON file per trace (`files`).
    Items may be traces or strings already encoded with `ENCODERS[fmt]`."""
    out = Path(out)
    encode = ENCODERS[fmt]
    n = 0
    if layout == "jsonl":
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", encoding="utf-8") as f:
            for t in traces:
                f.write((t if isinstance(t, str) else encode(t)) + "\n")
                n += 1
        return n
    out.mkdir(parents=True, exist_ok=True)
    for t in traces:
        text = t if isinstance(t, str) else encode(t)
        rec = json.loads(text) if isinstance(t, str) else {"trace_id": t.trace_id}
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(rec.get("trace_id", rec.get("question_ID"))))
        (out / f"{name}.json").write_text(text, encoding="utf-8")
        n += 1
    return n
