"""`localize`: traces + candidates → verdicts JSONL, one per trace, with tokens and latency.

A trace that cannot be handled (no candidates for it, a backend error) is reported and skipped;
the rest go on. Verdict rows are written as they are produced, so an interrupted run keeps what
it finished. Traces are worked on `backend.parallel` at a time (a local model generates their
calls as one batch, an endpoint gets them concurrently); verdicts come back in input order.
"""
from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from data_gen.chat_client import ChatError
from data_gen.trace import Trace
from llm_stage.backends import Backend
from llm_stage.prompts import PROMPT_VERSION
from llm_stage.strategies import ANSWER_TOKENS, STRATEGIES


def localize_one(trace: Trace, cands: dict | None, backend: Backend, strategy: str,
                 budget: int, k: int, answer_tokens: int = ANSWER_TOKENS) -> dict[str, Any]:
    if strategy == "coarse-to-fine" and not cands:
        raise ValueError(f"trace {trace.trace_id}: no candidates (coarse-to-fine needs them)")
    if cands:
        cands = dict(cands, agents=cands["agents"][:k])
    t0 = time.perf_counter()
    verdict = STRATEGIES[strategy](trace, cands, backend, budget, answer_tokens)
    verdict["latency_s"] = round(time.perf_counter() - t0, 4)
    verdict["strategy"] = strategy
    verdict["backend"] = backend.name
    verdict["prompt_version"] = PROMPT_VERSION  # what a gate fitted on these verdicts is for
    return verdict


def localize(traces: Iterable[Trace], candidates: dict[str, dict], backend: Backend,
             strategy: str = "coarse-to-fine", budget: int = 4096, k: int = 3,
             progress: bool = True, total: int | None = None,
             answer_tokens: int = ANSWER_TOKENS) -> Iterator[dict | str]:
    """Verdicts, and for traces that failed, a string saying why, in the order of `traces`."""
    def one(t: Trace) -> dict | str:
        try:
            return localize_one(t, candidates.get(t.trace_id), backend, strategy, budget, k,
                                answer_tokens)
        except (ValueError, ChatError) as e:
            return f"{t.trace_id}: {e}"

    workers = max(1, getattr(backend, "parallel", 1))  # a backend that does not say: one
    pool = ThreadPoolExecutor(workers)
    try:
        yield from tqdm(pool.map(one, traces), total=total, desc=f"localize ({strategy})",
                        disable=not progress, file=sys.stderr)
    finally:  # stopped early (an interrupt): the traces not yet started never start
        pool.shutdown(cancel_futures=True)
