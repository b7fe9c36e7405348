"""Strict scoring of verdicts against labels (DESIGN.md), calibration and abstention.

Every labelled trace is in every denominator: a trace with no verdict, or an unusable one, counts
as wrong. Agent names are compared after normalising case and whitespace only; steps exactly.
Tolerances (±1, ±3) are reported beside the strict figures, never instead of them. A verdict is
*correct* when both its agent and its step are; calibration and risk-coverage use that event.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Callable

from data_gen.dhcg import DHCG, EDGE_TYPES, build_dhcg
from data_gen.trace import VERDICT_SCHEMA, Trace, normalise_agent as norm


def subset_of(trace: Trace) -> str:
    """The benchmark subset a trace belongs to: its source format (Who&When's two subsets,
    TracerTraj), and for other traces (native, simulated) the format and team topology."""
    fmt = trace.source.get("format", "native")
    if fmt.startswith("whowhen") or fmt == "tracertraj" or not trace.system.topology:
        return fmt
    return f"{fmt}/{trace.system.topology}"


def score_record(trace: Trace, verdict: dict | None, cands: dict | None, k: int,
                 threshold: float, subset: Callable[[Trace], str] = subset_of
                 ) -> dict[str, Any]:
    """One labelled trace's outcome: what was said, whether it is right, at what cost."""
    lab = trace.label
    assert lab is not None
    row: dict[str, Any] = {"trace_id": trace.trace_id, "subset": subset(trace),
                           "label_agent": lab.agent, "label_step": lab.step,
                           "n_steps": len(trace.steps), "agent": None, "step": None,
                           "confidence": None, "source": None, "fallback": False,
                           "prompt_tokens": 0, "latency_s": None}
    if verdict is not None:
        tok = verdict.get("tokens") or {}
        row.update(agent=verdict["agent"], step=verdict["step"],
                   confidence=verdict.get("confidence"), source=verdict.get("source"),
                   fallback=bool(verdict.get("fallback")),
                   prompt_tokens=int(tok.get("prompt") or 0), latency_s=verdict.get("latency_s"))
    agent_ok = row["agent"] is not None and norm(row["agent"]) == norm(lab.agent)
    dist = abs(row["step"] - lab.step) if row["step"] is not None else math.inf
    row.update(agent_ok=agent_ok, step_ok=dist == 0, step_pm1=dist <= 1, step_pm3=dist <= 3)
    row["correct"] = agent_ok and dist == 0
    row["answered"] = (row["confidence"] is None or row["confidence"] >= threshold) and not (
        verdict or {}).get("unsure")  # a gate that could not choose between the stages
    top = (cands or {}).get("agents", [])[:k]
    row["topk_agent"] = any(norm(a["agent"]) == norm(lab.agent) for a in top) if cands else None
    row["topk_step"] = (any(s["step"] == lab.step for a in top for s in a["steps"]) if cands
                        else None)
    return row


def expected_calibration_error(conf: list[float], correct: list[bool], bins: int = 10) -> float:
    """Weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    if not conf:
        return float("nan")
    total = 0.0
    for b in reliability(conf, correct, bins):
        total += b["n"] * abs(b["confidence"] - b["accuracy"])
    return total / len(conf)


def reliability(conf: list[float], correct: list[bool], bins: int = 10) -> list[dict[str, Any]]:
    """The reliability diagram's bins that hold at least one verdict."""
    out = []
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        idx = [j for j, c in enumerate(conf) if lo <= c < hi or (i == bins - 1 and c == 1.0)]
        if idx:
            out.append({"lo": lo, "hi": hi, "n": len(idx),
                        "confidence": sum(conf[j] for j in idx) / len(idx),
                        "accuracy": sum(correct[j] for j in idx) / len(idx)})
    return out


def risk_coverage(conf: list[float], correct: list[bool]) -> list[dict[str, float]]:
    """Accuracy among the most confident answers, for every coverage a threshold can give.
    Ties in confidence enter together (one threshold cannot split them)."""
    order = sorted(range(len(conf)), key=lambda j: -conf[j])
    points, right = [], 0
    for rank, j in enumerate(order, 1):
        right += correct[j]
        if rank == len(order) or conf[order[rank]] != conf[j]:
            points.append({"coverage": rank / len(order), "accuracy": right / rank,
                           "threshold": conf[j]})
    return points


def area_under_risk_coverage(points: list[dict[str, float]]) -> float:
    """Mean risk (1 − accuracy) over coverage, step-wise; lower is better."""
    area, prev = 0.0, 0.0
    for p in points:
        area += (p["coverage"] - prev) * (1.0 - p["accuracy"])
        prev = p["coverage"]
    return area


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, tolerance, recall, calibration, abstention and cost over scored records."""
    n = len(rows)
    d = max(n, 1)
    mean = lambda key: sum(bool(r[key]) for r in rows) / d  # noqa: E731
    # recall needs candidates; a method without them (the baselines) has none to report
    recall = lambda key: mean(key) if any(r[key] is not None for r in rows) else None  # noqa
    out: dict[str, Any] = {"n": n, "agent_acc": mean("agent_ok"), "step_acc": mean("step_ok"),
                           "step_acc_pm1": mean("step_pm1"), "step_acc_pm3": mean("step_pm3"),
                           "topk_agent_recall": recall("topk_agent"),
                           "topk_step_recall": recall("topk_step"),
                           "missing": sum(r["agent"] is None for r in rows),
                           "fallback": sum(r["fallback"] for r in rows)}
    scored = [r for r in rows if r["confidence"] is not None]
    conf = [float(r["confidence"]) for r in scored]
    right = [r["correct"] for r in scored]
    out["ece"] = expected_calibration_error(conf, right) if len(scored) == n and n else None
    rc = risk_coverage(conf, right) if len(scored) == n and n else []
    out["aurc"] = area_under_risk_coverage(rc) if rc else None
    answered = [r for r in rows if r["answered"]]
    out["coverage"] = len(answered) / d
    out["selective_acc"] = (sum(r["correct"] for r in answered) / len(answered)
                            if answered else None)
    lat = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    changed = [r for r in rows if r.get("changed")]
    compared = any(r.get("changed") is not None for r in rows)
    out["changed"] = len(changed) / d if compared else None  # verdicts unlike the reference's
    out["changed_right"] = sum(r["correct"] for r in changed) if compared else None
    out["changed_n"] = len(changed) if compared else None
    out["prompt_tokens_mean"] = sum(r["prompt_tokens"] for r in rows) / d
    out["latency_s_mean"] = sum(lat) / len(lat) if lat else None
    return out


FIRST_INVOCATION = "first tool call or code block"


def team_steps(g: DHCG) -> list[int]:
    """Positions of the steps written by team agents (not the environment: DHCG rule R6); every
    step when the log has no team agent."""
    team = [i for i in range(len(g.step_agent)) if not g.agent_is_env[g.step_agent[i]]]
    return team or list(range(len(g.step_agent)))


def team_invocations(g: DHCG) -> list[int]:
    """Positions, in order, of the team steps (`team_steps`) that call a tool or hand code to an
    executor (rule R2's invoke edge)."""
    invoking = set(g.senders[g.edge_type == EDGE_TYPES.index("invoke")].tolist())
    return [i for i in team_steps(g) if g.step_node[i] in invoking]


def first_invocation(trace: Trace, g: DHCG | None = None) -> int:
    """Position of the first team step that invokes (`team_invocations`); the team's first step
    when none does. Where agents work by running code, the first attempt is often where a run
    goes wrong: on the development logs this rule names the labelled agent as often as the
    coarse model, so every table shows it."""
    g = build_dhcg(trace) if g is None else g
    calls = team_invocations(g)
    return calls[0] if calls else team_steps(g)[0]


def baseline_verdicts(traces: list[Trace], ours: dict[str, dict], seed: int = 0,
                      graphs: dict[str, DHCG] | None = None) -> dict[str, dict[str, dict]]:
    """The trivial baselines, as verdicts: the agent with most steps and its first step; our
    predicted agent and its first step; the first tool call or code block
    (`first_invocation`, on the trace's graph in `graphs` when given); a random agent and one
    of its steps (seeded)."""
    rng = random.Random(seed)
    out: dict[str, dict[str, dict]] = {"most frequent agent, its first step": {},
                                       "predicted agent, its first step": {},
                                       FIRST_INVOCATION: {}, "random": {}}

    def verdict(t: Trace, agent: str, step: int) -> dict:
        return {"schema": VERDICT_SCHEMA, "trace_id": t.trace_id, "agent": agent, "step": step,
                "confidence": None, "source": "baseline", "fallback": False}

    for t in traces:
        counts = Counter(s.agent for s in t.steps)
        top = max(t.agents, key=lambda a: counts[a])  # ties: the first to speak
        first = {a: next(s.index for s in t.steps if s.agent == a) for a in t.agents}
        out["most frequent agent, its first step"][t.trace_id] = verdict(t, top, first[top])
        v = ours.get(t.trace_id)
        mine = next((a for a in t.agents if v and norm(a) == norm(v["agent"])), None)
        if mine is not None:
            out["predicted agent, its first step"][t.trace_id] = verdict(t, mine, first[mine])
        s = t.steps[first_invocation(t, (graphs or {}).get(t.trace_id))]
        out[FIRST_INVOCATION][t.trace_id] = verdict(t, s.agent, s.index)
        pick = rng.choice(t.agents)
        steps = [s.index for s in t.steps if s.agent == pick]
        out["random"][t.trace_id] = verdict(t, pick, rng.choice(steps))
    return out


def confusion(rows: list[dict[str, Any]], top: int = 8) -> dict[str, Any]:
    """Labelled agent × predicted agent counts over the most frequent labelled names; the rest
    are pooled as "other", a missing verdict as "none"."""
    labels = [n for n, _ in Counter(norm(r["label_agent"]) for r in rows).most_common(top)]
    keep = set(labels)
    name = lambda a: "none" if a is None else (norm(a) if norm(a) in keep else "other")  # noqa
    cols = labels + ["other", "none"]
    counts = Counter((name(r["label_agent"]), name(r["agent"])) for r in rows)
    rows_out = [[counts[(lab, c)] for c in cols] for lab in labels + ["other"]]
    return {"labels": labels + ["other"], "predicted": cols, "counts": rows_out}


def mark_changes(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> None:
    """Set each row's `changed`: whether its (agent, step) differs from the reference row's
    (the same traces, in the same order)."""
    for r, ref in zip(rows, reference):
        r["changed"] = (r["agent"] is not None and (norm(r["agent"]), r["step"]) !=
                        (norm(ref["agent"] or ""), ref["step"]))


def evaluate(traces: list[Trace], methods: dict[str, dict[str, dict]],
             candidates: dict[str, dict], k: int = 3, threshold: float = 0.0,
             seed: int = 0, subset: Callable[[Trace], str] | None = None,
             changed_from: str | None = None, graphs: dict[str, DHCG] | None = None
             ) -> dict[str, Any]:
    """The whole evaluation (`astra.eval/v1`): each of our methods (name → verdicts by trace id;
    the first is the primary one) and the baselines, overall and per subset; the primary
    method's per-record outcomes and the curves the report draws. Unlabelled traces are
    skipped. Our methods share the coarse candidates for top-K recall. `subset` names each
    trace's subset (default: `subset_of`, its source format and topology). `changed_from`: one
    of `methods` (the coarse stage alone) against which the others' changed verdicts are
    counted, and how many of those changes are right. `graphs`: the traces' DHCGs by trace id,
    when the caller has them already."""
    labelled = [t for t in traces if t.label is not None]
    primary = next(iter(methods))
    baselines = baseline_verdicts(labelled, methods[primary], seed, graphs)
    scored = {m: [score_record(t, vs.get(t.trace_id),
                               candidates.get(t.trace_id) if m in methods else None, k, threshold,
                               subset or subset_of)
                  for t in labelled] for m, vs in {**methods, **baselines}.items()}
    if changed_from is not None:
        for m in methods:
            if m != changed_from:
                mark_changes(scored[m], scored[changed_from])
    ours = scored[primary]
    subsets = sorted({r["subset"] for r in ours})
    conf = [float(r["confidence"]) for r in ours if r["confidence"] is not None]
    right = [r["correct"] for r in ours if r["confidence"] is not None]
    return {
        "schema": "astra.eval/v1", "method": primary, "k": k, "threshold": threshold,
        "n_traces": len(traces), "n_labelled": len(labelled),
        "overall": {m: summarise(rs) for m, rs in scored.items()},
        "subsets": {s: {m: summarise([r for r in rs if r["subset"] == s])
                        for m, rs in scored.items()} for s in subsets},
        "risk_coverage": risk_coverage(conf, right),
        "reliability": reliability(conf, right),
        "confusion": confusion(ours),
        "records": ours,
    }
