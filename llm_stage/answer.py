"""Reading a model's answer and turning it into a verdict (`astra.verdict/v1`, DESIGN.md).

Models wrap JSON in code fences, think aloud first (`<think>...</think>`), or add a sentence
after it. The parser takes the first JSON object that has an "agent" key; the validator checks it
against the trace. Anything unusable falls back to the coarse stage's top choice, marked
`fallback: true`, so a verdict is never silently an invention of the parser.
"""
from __future__ import annotations

import json
import re
from typing import Any

from data_gen.stage_files import coarse_choice
from data_gen.trace import FAULT_MODES, VERDICT_SCHEMA, Trace, normalise_agent as norm
_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)


_AGENT = re.compile(r'"agent"\s*:\s*"([^"\n]{1,200})"')
_STEP = re.compile(r'"step"\s*:\s*"?(\d{1,6})')


def parse_answer(text: str, key: str = "agent") -> dict[str, Any] | None:
    """The first JSON object in `text` with `key`; failing that, for answers, the first
    `"agent": "..."` and `"step": N` pairs of a malformed object (marked `salvaged`); or None.
    The validator still checks whatever comes out against the trace."""
    text = _THINK.sub("", text)
    dec = json.JSONDecoder()
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and key in obj:
            return obj
    agent, step = _AGENT.search(text), _STEP.search(text)
    if key == "agent" and agent and step:
        return {"agent": agent.group(1), "step": int(step.group(1)), "salvaged": True}
    return None


def validate_answer(obj: dict[str, Any] | None, trace: Trace) -> tuple[dict[str, Any] | None, str]:
    """(answer with the trace's own agent spelling and an int step, "") or (None, why not)."""
    if obj is None:
        return None, "no JSON object with an \"agent\" key"
    agents = {norm(a): a for a in trace.agents}
    agent = agents.get(norm(obj.get("agent", "")))
    if agent is None:
        return None, f"agent {obj.get('agent')!r} is not in the run"
    step = obj.get("step")
    if isinstance(step, str) and step.strip().lstrip("-").isdigit():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < len(trace.steps):
        return None, f"step {obj.get('step')!r} is not a step index of the run"
    if trace.steps[step].agent != agent:
        return None, f"step {step} was written by {trace.steps[step].agent}, not {agent}"
    mode = obj.get("mode") if obj.get("mode") in FAULT_MODES else None
    return {"agent": agent, "step": step, "mode": mode,
            "reason": str(obj.get("reason") or "")[:1000]}, ""


def coarse_confidence(candidates: dict | None, agent: str, step: int) -> float:
    """The coarse stage's probability for (agent, step): agent score times step score."""
    for a in (candidates or {}).get("agents", []):
        if norm(a["agent"]) == norm(agent):
            for s in a["steps"]:
                if int(s["step"]) == step:
                    return float(a["score"]) * float(s["score"])
    return 0.0


def make_verdict(trace: Trace, candidates: dict | None, text: str | None,
                 tokens: dict[str, int], answer_prob: float | None = None) -> dict[str, Any]:
    """A verdict from the model's text; falls back to the coarse top choice when the text is
    missing or invalid. Confidence: the answer's token probability when the backend gives one,
    otherwise the coarse stage's probability for the chosen (agent, step)."""
    ans, why = validate_answer(parse_answer(text or ""), trace)
    base = {"schema": VERDICT_SCHEMA, "trace_id": trace.trace_id, "tokens": tokens}
    if ans is not None:
        conf = answer_prob if answer_prob is not None else coarse_confidence(
            candidates, ans["agent"], ans["step"])
        return {**base, **ans, "confidence": round(conf, 6), "source": "llm", "fallback": False}
    if not candidates or not candidates.get("agents"):
        raise ValueError(f"trace {trace.trace_id}: the answer is unusable ({why}) and there are "
                         "no coarse candidates to fall back on")
    agent, step, conf = coarse_choice(candidates)
    return {**base, "agent": agent, "step": step, "mode": None,
            "reason": f"coarse stage's top choice (model answer unusable: {why})",
            "confidence": round(conf, 6), "source": "gnn", "fallback": True}
