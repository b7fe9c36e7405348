"""`localize`: traces + candidates → verdicts JSONL, one per trace, with tokens and latency.

A trace that cannot be handled (no candidates for it, a backend error) is reported and skipped;
the rest go on. Verdict rows are written as they are produced, so an interrupted run keeps what
it finished.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from data_gen.chat_client import ChatError
from data_gen.trace import Trace
from llm_stage.backends import Backend
from llm_stage.strategies import STRATEGIES


def localize_one(trace: Trace, cands: dict | None, backend: Backend, strategy: str,
                 budget: int, k: int) -> dict[str, Any]:
    if strategy == "coarse-to-fine" and not cands:
        raise ValueError(f"trace {trace.trace_id}: no candidates (coarse-to-fine needs them)")
    if cands:
        cands = dict(cands, agents=cands["agents"][:k])
    t0 = time.perf_counter()
    verdict = STRATEGIES[strategy](trace, cands, backend, budget)
    verdict["latency_s"] = round(time.perf_counter() - t0, 4)
    verdict["strategy"] = strategy
    verdict["backend"] = backend.name
    return verdict


def localize(traces: Iterable[Trace], candidates: dict[str, dict], backend: Backend,
             strategy: str = "coarse-to-fine", budget: int = 4096, k: int = 3,
             progress: bool = True, total: int | None = None) -> Iterator[dict | str]:
    """Verdicts, and for traces that failed, a string saying why."""
    for t in tqdm(traces, total=total, desc=f"localize ({strategy})", disable=not progress,
                  file=sys.stderr):
        try:
            yield localize_one(t, candidates.get(t.trace_id), backend, strategy, budget, k)
        except (ValueError, ChatError) as e:
            yield f"{t.trace_id}: {e}"
