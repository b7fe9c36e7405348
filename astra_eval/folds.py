"""Splits of labelled logs for cross-validation: k folds by trace, seeded, stratified by the
labelled agent, so every fold sees each kind of culprit about as often as the whole set; or
one fold per framework, by `framework_of`."""
from __future__ import annotations

import random
from collections import defaultdict

from data_gen.trace import Trace, normalise_agent


def stratified_folds(traces: list[Trace], k: int, seed: int = 0) -> list[list[int]]:
    """Indices of `traces` (all labelled) in `k` folds. Traces of one labelled agent are
    shuffled, then dealt round-robin, the deal carrying on from group to group, so fold sizes
    differ by at most one."""
    if k < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, not {k}")
    if len(traces) < k:
        raise ValueError(f"{len(traces)} labelled logs cannot make {k} folds; give at least {k} "
                         f"or use --folds {max(len(traces), 2)}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(traces):
        if t.label is None:
            raise ValueError(f"{t.source.get('path', t.trace_id)}: no label; cross-validation "
                             f"needs labelled logs")
        groups[normalise_agent(t.label.agent)].append(i)
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    deal = 0
    for name in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        members = groups[name]
        rng.shuffle(members)
        for i in members:
            folds[deal % k].append(i)
            deal += 1
    return [sorted(f) for f in folds]


def framework_of(trace: Trace) -> str | None:
    """The framework a log comes from: `system.framework`, else its reader's format; None for
    a native trace that says neither."""
    fmt = trace.source.get("format")
    return trace.system.framework or (fmt if fmt not in (None, "native") else None)
