"""Dataset statistics: what a set of traces holds, per group, as table rows.

Where labels sit is reported beside counts, so that simulated data can be checked against real
failure logs: the share of labels at step 0 (the opening plan), the share on the labelled
agent's first step, the mean relative position step / (steps - 1) and its spread (10th to 90th
percentile). Team shapes (topologies) and agents per log show how varied a set is; tool
entities (AgentSpec.role "tool") are not counted as agents.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, NamedTuple

from data_gen.trace import Trace

TOOL_ROLE = "tool"
STATS_HEADERS = ("group", "traces", "steps min", "steps mean", "steps max", "agents mean",
                 "agents min-max", "team shapes", "labelled", "label at step 0",
                 "label on agent's 1st step", "label rel. pos.", "rel. pos. p10-p90",
                 "top modes")


class LabelPositions(NamedTuple):
    """Where the labels of a set of traces sit; each a share or mean in [0, 1]."""
    at_step0: float
    on_first_step: float  # the labelled step is the first step of the labelled agent
    mean_relative: float  # mean of step / (steps - 1)


def relative_position(t: Trace) -> float:
    return t.label.step / max(len(t.steps) - 1, 1)


def label_positions(traces: Iterable[Trace]) -> LabelPositions | None:
    """Positions of the labels of the labelled traces; None when none is labelled."""
    at0 = first = rel = 0.0
    n = 0
    for t in traces:
        if t.label is None:
            continue
        n += 1
        step = t.label.step
        at0 += step == 0
        first += all(s.agent != t.label.agent for s in t.steps[:step])
        rel += relative_position(t)
    return LabelPositions(at0 / n, first / n, rel / n) if n else None


def n_agents(t: Trace) -> int:
    """Entities of the log that decide: all of them but those the system marks as tools."""
    tools = {a.name for a in t.system.agents if a.role == TOOL_ROLE}
    return sum(a not in tools for a in t.agents)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def group_of(t: Trace) -> str:
    topo = t.system.topology or t.source.get("format", "unknown")
    return f"{topo}/{t.variant}" if t.variant else topo


def stats_rows(traces: Iterable[Trace]) -> list[tuple]:
    """One row per topology/variant, one per variant over all topologies (`all/fatal`: what
    compares with real failure logs), and `all`."""
    groups: dict[str, list[Trace]] = defaultdict(list)
    for t in traces:
        groups[group_of(t)].append(t)
        if t.variant:
            groups[f"all/{t.variant}"].append(t)
        groups["all"].append(t)
    rows = []
    for name in sorted(groups, key=lambda g: (g == "all", g.startswith("all/"), g)):
        ts = groups[name]
        lens = [len(t.steps) for t in ts]
        agents = [n_agents(t) for t in ts]
        shapes = len({t.system.topology or t.source.get("format", "unknown") for t in ts})
        labelled = [t for t in ts if t.label]
        modes = Counter(t.label.mode or "unknown" for t in labelled).most_common(3)
        pos = label_positions(labelled)
        rel = [relative_position(t) for t in labelled]
        spread = f"{_percentile(rel, 0.1):.2f}-{_percentile(rel, 0.9):.2f}" if rel else "-"
        rows.append((name, len(ts), min(lens), sum(lens) / len(lens), max(lens),
                     sum(agents) / len(ts), f"{min(agents)}-{max(agents)}", shapes,
                     len(labelled), *(pos if pos else ("-", "-", "-")), spread,
                     ", ".join(f"{m} {c}" for m, c in modes) or "-"))
    return rows
