"""Strict scoring of candidates against labels, and the trivial baselines beside it."""
from __future__ import annotations

import random
from collections import Counter

from data_gen.trace import Trace, normalise_agent as norm


def score_candidates(traces: list[Trace], cands: list[dict]) -> dict[str, float]:
    """Strict accuracy of the top candidate (DESIGN.md): agent name equality after normalising
    case and whitespace, exact step; every labelled trace counts."""
    by_id = {c["trace_id"]: c for c in cands}
    n = agent = step = top3 = step1 = step3 = 0
    for t in traces:
        if t.label is None:
            continue
        n += 1
        c = by_id.get(t.trace_id)
        if not c or not c["agents"]:
            continue
        first = c["agents"][0]
        pred_step = max((s for a in c["agents"] for s in a["steps"]), key=lambda s: s["score"])
        agent += norm(first["agent"]) == norm(t.label.agent)
        step += pred_step["step"] == t.label.step
        step1 += abs(pred_step["step"] - t.label.step) <= 1
        step3 += abs(pred_step["step"] - t.label.step) <= 3
        top3 += any(norm(a["agent"]) == norm(t.label.agent) for a in c["agents"][:3])
    d = max(n, 1)
    return {"n": n, "agent_acc": agent / d, "step_acc": step / d, "step_acc_pm1": step1 / d,
            "step_acc_pm3": step3 / d, "agent_top3": top3 / d}


def baseline_candidates(traces: list[Trace], seed: int = 0) -> dict[str, list[dict]]:
    """Trivial baselines as candidates files: the agent with most steps and its first step; the
    same agent with a random one of its steps; a random agent and step."""
    rng = random.Random(seed)
    out: dict[str, list[dict]] = {"most frequent agent, its first step": [],
                                  "most frequent agent, random step": [], "random": []}
    for t in traces:
        counts = Counter(s.agent for s in t.steps)
        top = max(t.agents, key=lambda a: counts[a])  # ties: first to speak
        mine = [s.index for s in t.steps if s.agent == top]
        pick = rng.choice(t.agents)
        theirs = [s.index for s in t.steps if s.agent == pick]
        for name, agent, step in (("most frequent agent, its first step", top, mine[0]),
                                  ("most frequent agent, random step", top, rng.choice(mine)),
                                  ("random", pick, rng.choice(theirs))):
            out[name].append({"trace_id": t.trace_id, "agents": [
                {"agent": agent, "score": 1.0, "steps": [{"step": step, "score": 1.0}]}]})
    return out
