"""Dataset statistics: what a set of traces holds, per group, as table rows."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from data_gen.trace import Trace

STATS_HEADERS = ("group", "traces", "steps min", "steps mean", "steps max", "agents mean",
                 "labelled", "label at step 0", "top modes")


def group_of(t: Trace) -> str:
    topo = t.system.topology or t.source.get("format", "unknown")
    return f"{topo}/{t.variant}" if t.variant else topo


def stats_rows(traces: Iterable[Trace]) -> list[tuple]:
    groups: dict[str, list[Trace]] = defaultdict(list)
    for t in traces:
        groups[group_of(t)].append(t)
        groups["all"].append(t)
    rows = []
    for name in sorted(groups, key=lambda g: (g == "all", g)):
        ts = groups[name]
        lens = [len(t.steps) for t in ts]
        labelled = [t for t in ts if t.label]
        modes = Counter(t.label.mode or "unknown" for t in labelled).most_common(3)
        rows.append((name, len(ts), min(lens), sum(lens) / len(lens), max(lens),
                     sum(len(t.agents) for t in ts) / len(ts), len(labelled),
                     sum(t.label.step == 0 for t in labelled),
                     ", ".join(f"{m} {c}" for m, c in modes) or "-"))
    return rows
