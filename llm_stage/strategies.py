"""Ways of asking a backend for the decisive error, all ending in a verdict.

`coarse_to_fine` is ours: one call on the focused view of the coarse candidates. The other three
are Who&When's prompting baselines over the same backends: `all_at_once` (the whole log, one
call), `step_by_step` (walk the log, ask at each step whether it is the decisive error) and
`binary_search` (ask which half of a range holds it, halve until one step is left).
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable

from data_gen.trace import Trace
from llm_stage.answer import make_verdict, parse_answer
from llm_stage.backends import Backend
from llm_stage.prompts import (approx_tokens, focused_prompt, full_prompt, one_line,
                               window_prompt)

ANSWER_TOKENS = 256  # the longest answer asked for (a yes/no or lower/upper reply: fewer)


class Tally:
    """Adds up tokens over the calls of one strategy."""

    def __init__(self, backend: Backend):
        self.backend, self.prompt, self.completion, self.calls = backend, 0, 0, 0
        self.prob: float | None = None

    def ask(self, messages: list[dict[str, str]], max_tokens: int = ANSWER_TOKENS) -> str:
        c = self.backend.complete(messages, max_tokens)
        self.prompt += c.prompt_tokens or sum(approx_tokens(m["content"]) for m in messages)
        self.completion += c.completion_tokens
        self.calls += 1
        self.prob = c.prob
        return c.text

    def tokens(self) -> dict[str, int]:
        return {"prompt": self.prompt, "completion": self.completion, "calls": self.calls}


def coarse_to_fine(trace: Trace, cands: dict, backend: Backend, budget: int,
                   answer_tokens: int = ANSWER_TOKENS) -> dict[str, Any]:
    tally = Tally(backend)
    prompt = focused_prompt(trace, cands, budget, backend.count)
    text = tally.ask(prompt.messages, answer_tokens)
    return {**make_verdict(trace, cands, text, tally.tokens(), tally.prob),
            "prompt_truncated": prompt.truncated}


def all_at_once(trace: Trace, cands: dict | None, backend: Backend, budget: int,
                answer_tokens: int = ANSWER_TOKENS) -> dict[str, Any]:
    tally = Tally(backend)
    prompt = full_prompt(trace, budget, backend.count)
    text = tally.ask(prompt.messages, answer_tokens)
    return {**make_verdict(trace, cands, text, tally.tokens(), tally.prob),
            "prompt_truncated": prompt.truncated}


def _yes(text: str) -> bool | None:
    obj = parse_answer(text, key="error")
    if obj is not None and isinstance(obj["error"], bool):
        return obj["error"]
    m = re.search(r"\b(yes|no)\b", text, re.I)
    return None if m is None else m.group(1).lower() == "yes"


def step_by_step(trace: Trace, cands: dict | None, backend: Backend, budget: int,
                 answer_tokens: int = ANSWER_TOKENS) -> dict[str, Any]:
    tally = Tally(backend)
    for i, s in enumerate(trace.steps):
        q = (f"Consider step {i} (by {one_line(s.agent)}). Is it the decisive error of the run? "
             'Answer with JSON: {"error": true or false, "reason": "<one sentence>"}.')
        reply = tally.ask(window_prompt(trace, 0, i, q, budget, backend.count).messages,
                          min(64, answer_tokens))
        if _yes(reply):
            answer = json.dumps({"agent": s.agent, "step": i, "reason": reply.strip()[:300]})
            return make_verdict(trace, cands, answer, tally.tokens())
    return make_verdict(trace, cands, None, tally.tokens())


def binary_search(trace: Trace, cands: dict | None, backend: Backend, budget: int,
                  answer_tokens: int = ANSWER_TOKENS) -> dict[str, Any]:
    tally = Tally(backend)
    lo, hi = 0, len(trace.steps) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        q = (f"The decisive error lies in steps {lo}..{hi}. Is it in the lower half (steps "
             f"{lo}..{mid}) or the upper half (steps {mid + 1}..{hi})? Answer with one word: "
             "lower or upper.")
        reply = tally.ask(window_prompt(trace, lo, hi, q, budget, backend.count).messages,
                          min(16, answer_tokens)).lower()
        upper, lower = "upper" in reply, "lower" in reply
        if upper == lower:  # neither or both: no usable answer
            return make_verdict(trace, cands, None, tally.tokens())
        lo, hi = (mid + 1, hi) if upper else (lo, mid)
    answer = json.dumps({"agent": trace.steps[lo].agent, "step": lo,
                         "reason": f"binary search narrowed the error to step {lo}"})
    return make_verdict(trace, cands, answer, tally.tokens())


STRATEGIES: dict[str, Callable[..., dict[str, Any]]] = {
    "coarse-to-fine": coarse_to_fine, "all-at-once": all_at_once,
    "step-by-step": step_by_step, "binary-search": binary_search}
