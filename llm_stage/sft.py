"""`prep`: labelled traces + candidates → chat-format SFT rows (system, user, assistant).

The held-out split is a stable function of the trace id, so re-running `prep` on more data
never moves a trace from held-out into training.
"""
from __future__ import annotations

import hashlib
from typing import Iterable

from data_gen.trace import Trace
from llm_stage.prompts import PROMPT_VERSION, TokenCounter, answer_json, approx_tokens, focused_prompt
from llm_stage.ranker import heuristic_candidates


def held_out(trace_id: str, fraction: float) -> bool:
    h = int(hashlib.sha256(trace_id.encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def sft_rows(traces: Iterable[Trace], candidates: dict[str, dict], budget: int = 4096,
             count: TokenCounter = approx_tokens, k: int = 3, held_out_fraction: float = 0.1
             ) -> tuple[list[dict], list[dict], list[str]]:
    """(train rows, held-out rows, skipped with reasons). Traces without a label are skipped;
    traces without candidates get the heuristic ranker's."""
    train, held, skipped = [], [], []
    for t in traces:
        if t.label is None:
            skipped.append(f"{t.trace_id}: no label")
            continue
        cands = candidates.get(t.trace_id) or heuristic_candidates(t, k)
        cands = dict(cands, agents=cands["agents"][:k])
        try:
            p = focused_prompt(t, cands, budget, count)
        except ValueError as e:
            skipped.append(str(e))
            continue
        answer = answer_json(t.label.agent, t.label.step, t.label.mode, t.label.reason)
        row = {"trace_id": t.trace_id, "prompt_version": PROMPT_VERSION,
               "messages": p.messages + [{"role": "assistant", "content": answer}]}
        (held if held_out(t.trace_id, held_out_fraction) else train).append(row)
    return train, held, skipped
