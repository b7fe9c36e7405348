"""Labels beside the logs: the `astra.labels/v1` JSONL file and its application to traces.

A team labels its own runs without editing them: one JSON object per line names a trace (its
`trace_id`, and the `source` file it was read from where ids could repeat) and either the
decisive error (`agent`, `step`, optionally `mode` and `reason`) or `"failed": false` for a run
that did not fail. The HTML report writes such files; people and scripts can too. The field
reference is docs/trace_format.md.

Reading and applying are separate, pure steps: `read_labels` turns files into `SidecarLabel`s
and the problems of bad lines, `apply_labels` puts them on loaded traces (any format: native,
Who&When, TracerTraj, OTLP) and lists what it could not use. A problem always names the file
and the line; the other lines are used.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, Iterable

from data_gen.trace import (FAULT_MODES, Label, Trace, TraceError, check_trace,
                            normalise_agent)

LABELS_SCHEMA = "astra.labels/v1"
MAX_LINE_BYTES = 1024 * 1024  # a label is a few hundred bytes; a longer line is not a label


class LabelsError(ValueError):
    """Labels files were given and not one of their lines could be used."""


@dataclass(frozen=True)
class SidecarLabel:
    """One line of a labels file: the decisive error of a failed run, or `failed=False`."""
    trace_id: str
    failed: bool = True
    agent: str | None = None
    step: int | None = None
    mode: str | None = None
    reason: str | None = None
    source: str | None = None  # the file the trace was read from, as the labeller saw it
    labelled_by: str | None = None
    at: str | None = None  # ISO 8601 time of labelling
    file: str = "<memory>"  # where this label was read, for messages
    line: int = 0

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def to_dict(self) -> dict[str, Any]:
        """The JSONL object: every field that has a value (`failed` always)."""
        d = {"schema": LABELS_SCHEMA, "trace_id": self.trace_id, "source": self.source,
             "failed": self.failed, "agent": self.agent, "step": self.step, "mode": self.mode,
             "reason": self.reason, "labelled_by": self.labelled_by, "at": self.at}
        return {k: v for k, v in d.items() if v is not None}


def _typed(row: dict, key: str, types: tuple[type, ...], name: str) -> Any:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ValueError(f"field '{key}' must be {name}, not {type(value).__name__}")
    return value


def label_from_dict(row: Any, file: str = "<memory>", line: int = 0) -> SidecarLabel:
    """Parse and check one label object; a ValueError names the field at fault."""
    if not isinstance(row, dict):
        raise ValueError(f"a line must hold a JSON object, not {type(row).__name__}")
    if row.get("schema") != LABELS_SCHEMA:
        raise ValueError(f"field 'schema' is {row.get('schema')!r}, not {LABELS_SCHEMA!r}")
    tid = _typed(row, "trace_id", (str, int), "a string")
    if tid is None or not str(tid).strip():
        raise ValueError("field 'trace_id' is missing")
    failed = _typed(row, "failed", (bool,), "true or false")
    failed = True if failed is None else failed
    agent = _typed(row, "agent", (str,), "a string")
    step = _typed(row, "step", (int,), "a whole number")
    mode = _typed(row, "mode", (str,), "a string")
    if failed:
        if agent is None or not agent.strip():
            raise ValueError("field 'agent' is missing (give the agent and step of the decisive "
                             "error, or \"failed\": false)")
        if step is None:
            raise ValueError("field 'step' is missing (give the agent and step of the decisive "
                             "error, or \"failed\": false)")
        if step < 0:
            raise ValueError(f"field 'step' must be 0 or more, not {step}")
        if mode is not None and mode not in FAULT_MODES + ("unknown",):
            raise ValueError(f"field 'mode' is {mode!r}, not one of "
                             f"{', '.join(FAULT_MODES + ('unknown',))}")
    else:
        given = [k for k in ("agent", "step", "mode") if row.get(k) is not None]
        if given:
            raise ValueError(f"\"failed\": false with field '{given[0]}': a run that did not "
                             "fail has no decisive error")
    at = _typed(row, "at", (str,), "a string")
    if at is not None:
        try:
            datetime.fromisoformat(at)
        except ValueError:
            raise ValueError(f"field 'at' is {at!r}, not an ISO 8601 time") from None
    return SidecarLabel(trace_id=str(tid), failed=failed, agent=agent.strip() if agent else None,
                        step=step, mode=mode, reason=_typed(row, "reason", (str,), "a string"),
                        source=_typed(row, "source", (str,), "a string"),
                        labelled_by=_typed(row, "labelled_by", (str,), "a string"), at=at,
                        file=file, line=line)


def _whole_json(text: str) -> bool:
    """A file that is one JSON document spread over lines (a list, or a pretty-printed object)."""
    try:
        json.loads(text)
    except ValueError:
        return False
    return len([ln for ln in text.splitlines() if ln.strip()]) > 1


def read_labels(paths: Iterable[str | Path]) -> tuple[list[SidecarLabel], list[str]]:
    """The labels of every file in order, and each bad line or file as `FILE:LINE: why`."""
    labels: list[SidecarLabel] = []
    problems: list[str] = []
    for path in paths:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            problems.append(f"{path}: cannot read ({e.strerror})")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and _whole_json(text):
            problems.append(f"{path}: one JSON document over several lines, not JSONL; write "
                            f"one {LABELS_SCHEMA} object per line")
            continue
        found = False
        for n, line in enumerate(raw.splitlines(), 1):
            if len(line) > MAX_LINE_BYTES:
                problems.append(f"{path}:{n}: line of {len(line):,} bytes is over the "
                                f"{MAX_LINE_BYTES:,}-byte limit")
                continue
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not decoded.strip():
                continue
            found = True
            try:
                labels.append(label_from_dict(json.loads(decoded), str(path), n))
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})")
            except ValueError as e:
                problems.append(f"{path}:{n}: {e}")
        if not found:
            problems.append(f"{path}: no labels (the file is empty)")
    return labels, problems


def write_labels(labels: Iterable[SidecarLabel], path: str | Path) -> int:
    """Write labels as `astra.labels/v1` JSONL (parents created); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for lab in labels:
            f.write(json.dumps(lab.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n


def same_file(given: str, read_from: str) -> bool:
    """Whether a label's `source` names the file a trace was read from. Paths are compared
    whole (resolved) or, as they are often written from another directory, by their last
    parts: `Algorithm-Generated/12.json` matches `data/who_and_when/Algorithm-Generated/12.json`
    and `12.json` does too, `Hand-Crafted/12.json` does not."""
    if Path(given).resolve() == Path(read_from).resolve():
        return True
    a = [p for p in PurePath(given).parts if p not in (".", "..", "/")]
    b = [p for p in PurePath(read_from).parts if p not in (".", "..", "/")]
    short, long = sorted((a, b), key=len)
    return bool(short) and long[len(long) - len(short):] == short


def _path(trace: Trace) -> str:
    return str(trace.source.get("path", ""))


def _relabelled(trace: Trace, lab: SidecarLabel) -> Trace:
    """`trace` under `lab`; a ValueError says why the label does not fit the trace."""
    src = dict(trace.source, label_from=lab.where)
    if not lab.failed:
        new = dataclasses.replace(trace, label=None, source=src,
                                  outcome=dataclasses.replace(trace.outcome, success=True))
    else:
        n = len(trace.steps)
        if not lab.step < n:
            raise ValueError(f"step {lab.step} is outside trace {trace.trace_id!r} "
                             f"(steps 0..{n - 1})")
        agent = next((a for a in trace.agents
                      if normalise_agent(a) == normalise_agent(lab.agent)), None)
        if agent is None:
            raise ValueError(f"agent {lab.agent!r} never speaks in trace {trace.trace_id!r}; "
                             f"its agents are {', '.join(trace.agents)}")
        outcome = trace.outcome
        if outcome.success is True and trace.variant != "healed":  # a person says it failed
            outcome = dataclasses.replace(outcome, success=False)
        new = dataclasses.replace(trace, outcome=outcome, source=src,
                                  label=Label(agent, lab.step, lab.mode, lab.reason))
    try:
        check_trace(new)
    except TraceError as e:
        raise ValueError(f"does not fit trace {trace.trace_id!r}: {e.message}") from None
    return new


def _verdict(lab: SidecarLabel) -> tuple:
    """What two labels of one trace must agree on: failed, agent and step."""
    return lab.failed, normalise_agent(lab.agent or ""), lab.step


def apply_labels(traces: list[Trace], labels: list[SidecarLabel]
                 ) -> tuple[list[Trace], list[str]]:
    """The traces (same order, same length) with each label put in place of the record's own,
    and the labels left out, as `FILE:LINE: why`: a trace id matching no trace (or several,
    when `source` does not say which), a `source` that is not the trace's file, an agent or
    step not in the trace, and labels of one trace that disagree (none of them is used).
    Labels of one trace that agree are one label; the last one given is used."""
    ids: dict[str, list[int]] = {}
    for i, t in enumerate(traces):  # by its id, and by the record's own where that differs
        for name in {t.trace_id, t.source.get("record_id", t.trace_id)}:
            ids.setdefault(name, []).append(i)
    problems: list[tuple[int, str]] = []  # (position of the label, message)
    chosen: dict[int, list[tuple[int, SidecarLabel]]] = {}
    for k, lab in enumerate(labels):
        hits = ids.get(lab.trace_id, [])
        if not hits:
            problems.append((k, f"{lab.where}: trace_id {lab.trace_id!r} matches no log given"))
            continue
        if lab.source:
            hits = [i for i in hits if same_file(lab.source, _path(traces[i]))]
            if not hits:
                files = ", ".join(sorted({_path(traces[i]) for i in ids[lab.trace_id]}))
                problems.append((k, f"{lab.where}: trace {lab.trace_id!r} was read from {files}, "
                                    f"not from source {lab.source!r}"))
                continue
        if len(hits) > 1:
            files = ", ".join(_path(traces[i]) for i in hits)
            problems.append((k, f"{lab.where}: trace_id {lab.trace_id!r} names {len(hits)} logs "
                                f"({files}); give 'source' to say which"))
            continue
        chosen.setdefault(hits[0], []).append((k, lab))
    out = list(traces)
    for i, given in chosen.items():
        if len({_verdict(lab) for _, lab in given}) > 1:
            said = "; ".join(f"{lab.where} says " + (f"{lab.agent} at step {lab.step}"
                                                    if lab.failed else "it did not fail")
                             for _, lab in given)
            problems += [(k, f"{lab.where}: trace {lab.trace_id!r} is labelled differently "
                             f"({said}); none of these labels is used") for k, lab in given]
            continue
        k, lab = given[-1]
        try:
            out[i] = _relabelled(traces[i], lab)
        except ValueError as e:
            problems.append((k, f"{lab.where}: {e}"))
    return out, [msg for _, msg in sorted(problems, key=lambda p: p[0])]
