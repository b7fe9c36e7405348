"""The JSONL files that pass between stages: candidates (coarse → fine) and verdicts (fine →
evaluation). One home for reading them, so every consumer reports a bad line the same way (file,
line, field) and keeps the good ones.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from data_gen.trace import CANDIDATES_SCHEMA, VERDICT_SCHEMA

MAX_LINE_BYTES = 64 * 1024 * 1024  # one record per line; a longer line is not a record


def _check_candidates(row: dict[str, Any]) -> None:
    agents = row.get("agents")
    if not isinstance(agents, list) or not agents:
        raise ValueError("field 'agents' must be a non-empty list")
    for i, a in enumerate(agents):
        if not isinstance(a, dict) or not isinstance(a.get("agent"), str):
            raise ValueError(f"field 'agents[{i}].agent' must be a string")
        if not isinstance(a.get("steps"), list):
            raise ValueError(f"field 'agents[{i}].steps' must be a list")
        for s in a["steps"]:
            if not isinstance(s, dict) or not isinstance(s.get("step"), int):
                raise ValueError(f"field 'agents[{i}].steps[].step' must be an integer")


def _check_verdict(row: dict[str, Any]) -> None:
    if not isinstance(row.get("agent"), str):
        raise ValueError("field 'agent' must be a string")
    if not isinstance(row.get("step"), int) or isinstance(row.get("step"), bool):
        raise ValueError("field 'step' must be an integer")
    conf = row.get("confidence")
    if conf is not None and not (isinstance(conf, (int, float)) and 0.0 <= conf <= 1.0):
        raise ValueError("field 'confidence' must be a number in [0, 1]")


_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    CANDIDATES_SCHEMA: _check_candidates, VERDICT_SCHEMA: _check_verdict}


def read_stage_file(path: str | Path, schema: str) -> tuple[dict[str, dict], list[str]]:
    """Rows by trace id, and the bad lines, each named by file and line and saying why."""
    out: dict[str, dict] = {}
    bad: list[str] = []
    try:
        f = open(path, "rb")
    except OSError as e:
        return {}, [f"{path}: cannot read ({e.strerror})"]
    with f:
        for n, raw in enumerate(f, 1):
            if len(raw) > MAX_LINE_BYTES:
                bad.append(f"{path}:{n}: line of {len(raw):,} bytes is over the "
                           f"{MAX_LINE_BYTES:,}-byte limit")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                bad.append(f"{path}:{n}: not UTF-8 ({e.reason} at byte {e.start})")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError("a line must hold a JSON object")
                if row.get("schema") != schema:
                    raise ValueError(f"field 'schema' is {row.get('schema')!r}, not {schema!r}")
                if not isinstance(row.get("trace_id"), (str, int)):
                    raise ValueError("field 'trace_id' is missing")
                _CHECKS[schema](row)
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                bad.append(f"{path}:{n}: {e}")
                continue
            tid = str(row["trace_id"])
            if tid in out:
                bad.append(f"{path}:{n}: trace_id {tid!r} repeats an earlier line; "
                           "the later line is kept")
            out[tid] = row
    return out, bad


def read_stage_rows(path: str | Path, schema: str) -> dict[str, dict]:
    """For batch commands: the good rows by trace id; each bad line is reported on stderr."""
    rows, bad = read_stage_file(path, schema)
    for b in bad:
        print(f"skipped: {b}", file=sys.stderr)
    return rows


# The back-off of the step choice to the agent's first step: taken when the model gives that
# step at least this share of its likeliest step's score. Chosen by leave-one-framework-out on
# the development logs (docs/coarse_stage.md, "Choosing agent and step"): out of its training
# frameworks the model's step evidence is weak, and the first step is the position that carries.
FIRST_STEP_RATIO = 0.25


def coarse_choice(candidates: dict, first_step_ratio: float = FIRST_STEP_RATIO
                  ) -> tuple[str, int, float]:
    """The likeliest agent (the first listed among equals), and among its steps the likeliest,
    or its first step when that scores at least `first_step_ratio` of the likeliest; the
    confidence is the agent's score times the chosen step's. Choosing the agent by the product
    of agent and step scores instead lets a sharply peaked step of a less likely agent win,
    which loses agents out of the training frameworks (docs/coarse_stage.md)."""
    agents = [a for a in candidates.get("agents", []) if a.get("steps")]
    if not agents:
        raise ValueError(f"candidates of {candidates.get('trace_id')!r} name no step")
    best = max(agents, key=lambda a: float(a["score"]))  # max keeps the first of equals
    top = max(best["steps"], key=lambda s: float(s["score"]))
    first = min(best["steps"], key=lambda s: int(s["step"]))
    chosen = first if float(first["score"]) >= first_step_ratio * float(top["score"]) else top
    return best["agent"], int(chosen["step"]), float(best["score"]) * float(chosen["score"])


SINGLE_AGENT = "single agent: only the step is in question"


def coarse_verdict(candidates: dict) -> dict[str, Any]:
    """A verdict from the coarse stage alone (the pipeline's `--fine none`)."""
    agent, step, conf = coarse_choice(candidates)
    return {"schema": VERDICT_SCHEMA, "trace_id": candidates["trace_id"], "agent": agent,
            "step": step, "mode": None,
            "reason": (SINGLE_AGENT + "; coarse stage's likeliest step"
                       if candidates.get("single_agent") else
                       "coarse stage's likeliest agent and step"),
            "confidence": round(conf, 6), "source": "gnn", "fallback": False,
            "tokens": {"prompt": 0, "completion": 0, "calls": 0},
            **({"latency_s": candidates["latency_s"]} if "latency_s" in candidates else {})}


def write_stage_file(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write rows as JSONL (parents created); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n
