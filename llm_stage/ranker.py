"""A label-free heuristic ranker that writes `astra.candidates/v1` rows without the coarse model.

For fine-tuning data and benchmarks where no coarse run exists yet (the fine stage does not
depend on the coarse stage being built). Steps score by error signals and by position; an agent
scores by its best step. It never looks at labels.
"""
from __future__ import annotations

import math
import re

from data_gen.trace import CANDIDATES_SCHEMA, Trace

_SIGNAL = re.compile(r"error|traceback|exception|failed|incorrect|not found|cannot|unable|"
                     r"exitcode: [1-9]|wrong|assum", re.I)


def heuristic_candidates(trace: Trace, k: int = 3) -> dict:
    n = len(trace.steps)
    raw = [1.0 + 2.0 * bool(_SIGNAL.search(s.content)) + (1.0 - s.index / max(n, 1))
           for s in trace.steps]
    z = sum(math.exp(r) for r in raw)
    p = [math.exp(r) / z for r in raw]
    agents = []
    for a in trace.agents:
        steps = sorted(({"step": s.index, "score": p[s.index]} for s in trace.steps
                        if s.agent == a), key=lambda x: -x["score"])
        if steps:
            agents.append({"agent": a, "score": sum(x["score"] for x in steps), "steps": steps})
    agents.sort(key=lambda a: -a["score"])
    return {"schema": CANDIDATES_SCHEMA, "trace_id": trace.trace_id, "failure_prob": 1.0,
            "uncertainty": 1.0, "agents": agents[:k],
            "model": {"checkpoint": "heuristic", "step": 0}}
