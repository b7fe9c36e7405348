"""How the coarse verdict is read off the candidates: which agent (the likeliest, or the pair
with the highest product of agent and step scores) and which of its steps (the likeliest, or
the agent's first step when the model gives it at least a share `ratio` of the likeliest's
score). Scored strictly on the out-of-fold candidates of `astra cv` runs, per held-out
subset, mean over the runs given that scored it (one per seed); nothing is trained, so the
rule chosen here can be checked against any cross-validation run.

    .venv/bin/python bench/step_choice.py CV_DIR [CV_DIR ...] [--logs data/who_and_when]

CV_DIR: an `astra cv --out` directory, or one with `seed-N/` directories inside (`--seeds`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from astra_cli.table import format_table
from astra_eval.folds import framework_of
from astra_eval.scoring import norm
from data_gen.readers import load_traces
from data_gen.stage_files import FIRST_STEP_RATIO, coarse_choice, read_stage_rows
from data_gen.trace import CANDIDATES_SCHEMA

RATIOS = (0.0, 0.1, 0.25, 0.4, 0.6, 1.0, float("inf"))  # 0: always the first step; inf: never


def choose(cands: dict, agent_rule: str, ratio: float) -> tuple[str, int]:
    """The shipped choice (`coarse_choice`) at another ratio, or its product-rule rival."""
    if agent_rule == "likeliest agent":
        agent, step, _ = coarse_choice(cands, ratio)
        return agent, step

    def step_of(a):
        top = max(a["steps"], key=lambda s: s["score"])
        first = min(a["steps"], key=lambda s: s["step"])
        return first if first["score"] >= ratio * top["score"] else top
    agents = [a for a in cands["agents"] if a["steps"]]
    a, s = max(((a, step_of(a)) for a in agents), key=lambda x: x[0]["score"] * x[1]["score"])
    return a["agent"], s["step"]


def cv_runs(dirs: list[Path]) -> list[Path]:
    out = []
    for d in dirs:
        seeds = sorted(d.glob("seed-*/candidates.jsonl"))
        out += [p.parent for p in seeds] or [d]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cv_dirs", nargs="+", type=Path)
    p.add_argument("--logs", nargs="+", type=Path, default=[Path("data/who_and_when")])
    args = p.parse_args()
    traces = {t.trace_id: t for t in load_traces(args.logs).traces if t.label is not None}
    runs = cv_runs(args.cv_dirs)
    cands = [read_stage_rows(r / "candidates.jsonl", CANDIDATES_SCHEMA) for r in runs]
    for run, c in zip(runs, cands):  # ids alone can match another folder's logs
        foreign = [t for t, cd in c.items() if t in traces and not {
            a["agent"] for a in cd["agents"]} <= set(traces[t].agents)]
        if foreign or not any(t in traces for t in c):
            what = (f"candidates of trace {foreign[0]!r} name agents its log does not have"
                    if foreign else "no candidates of a labelled log here")
            sys.exit(f"error: {run}: {what} in {' '.join(map(str, args.logs))}; pass --logs "
                     f"with the logs that run scored")
    subsets = sorted({framework_of(traces[tid]) for c in cands for tid in c if tid in traces})
    rows = []
    for rule in ("likeliest agent", "product of agent and step"):
        for ratio in RATIOS:
            row = [rule, "never" if ratio == float("inf") else f"{ratio:g}"]
            for sub in subsets:
                agent, step = [], []
                for c in cands:
                    # scored as `astra eval` scores: agent by name, step by index
                    ok = [(norm(a) == norm(traces[t].label.agent), s == traces[t].label.step)
                          for t, cd in c.items() if t in traces and
                          framework_of(traces[t]) == sub
                          for a, s in [choose(cd, rule, ratio)]]
                    if ok:  # a run that scored logs of this subset (in-framework runs: one)
                        agent.append(np.mean([x for x, _ in ok]))
                        step.append(np.mean([y for _, y in ok]))
                row += [f"{np.mean(agent):.3f}", f"{np.mean(step):.3f} ± {np.std(step):.3f}"]
            rows.append(row)
    head = ["agent by", "first-step ratio"] + [f"{s}: {w}" for s in subsets
                                               for w in ("agent", "step")]
    print(f"{len(runs)} cross-validation run(s): {', '.join(map(str, runs))}")
    print(f"the shipped rule: likeliest agent, first-step ratio {FIRST_STEP_RATIO:g}")
    print(format_table(head, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
