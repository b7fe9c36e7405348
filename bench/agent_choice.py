"""Can anything the logs show beyond the coarse model's agent score pick the faulty agent better?

Reads out-of-fold candidates (`astra cv` or `make model` writes them to `DIR/candidates.jsonl`:
each log's scores come from a model that never saw it) and fits, by a second cross-validation
over the logs, a conditional logit that chooses among each log's agents from the model's
log-score plus one agent-level fact at a time, then all of them. A row that does not beat the
model's own choice says the fact adds nothing the model has not already used.

    .venv/bin/python bench/agent_choice.py runs/model/cv/candidates.jsonl [--logs DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from astra_cli.data_commands import DEV_LOGS  # noqa: E402
from astra_cli.table import format_table  # noqa: E402
from astra_eval.scoring import first_invocation, team_invocations, team_steps  # noqa: E402
from data_gen.dhcg import build_dhcg  # noqa: E402
from data_gen.evidence import EVIDENCE_COLUMNS, step_evidence  # noqa: E402
from data_gen.readers import load_traces  # noqa: E402
from data_gen.stage_files import coarse_choice, read_stage_rows  # noqa: E402
from data_gen.trace import CANDIDATES_SCHEMA, Trace  # noqa: E402

FACTS = ("model log-score", "wrote the first tool call or code", "first to speak", "last to speak",
         "share of the log's steps", "first states the final answer's value",
         "claim without evidence", "a value a later step contradicts",
         "a value another agent corrects", "name says it verifies", "step 0 is its",
         "wrote the last tool call or code", "wrote the code run just before the final answer's "
         "value first appears")


def agent_facts(trace: Trace, candidates: dict) -> tuple[list[str], np.ndarray]:
    """The candidate agents and, per agent, the facts of `FACTS` (in order)."""
    ev = step_evidence(trace)
    col = {c: ev[:, i] for i, c in enumerate(EVIDENCE_COLUMNS)}
    g = build_dhcg(trace)
    team = [trace.steps[i].agent for i in team_steps(g)]
    invoker = trace.steps[first_invocation(trace, g)].agent
    calls = team_invocations(g)
    last_caller = trace.steps[calls[-1]].agent if calls else None
    answer = np.flatnonzero(col["answer_first"])
    before = [i for i in calls if answer.size and i <= answer[0]]
    answer_caller = (trace.steps[before[-1]].agent if before
                     else trace.steps[answer[0]].agent if answer.size else None)
    names, rows = [], []
    for a in candidates["agents"]:
        mine = [s.index for s in trace.steps if s.agent == a["agent"]]

        def has(column: str) -> float:
            return float(col[column][mine].max()) if mine else 0.0

        names.append(a["agent"])
        rows.append([np.log(max(a["score"], 1e-6)), float(a["agent"] == invoker),
                     float(team[0] == a["agent"]), float(team[-1] == a["agent"]),
                     len(mine) / len(trace.steps), has("answer_first"), has("unsupported"),
                     has("contradicted"), has("corrected_later"),
                     float(any(w in a["agent"].lower() for w in ("verif", "check", "review"))),
                     float(0 in mine), float(a["agent"] == last_caller),
                     float(a["agent"] == answer_caller)])
    return names, np.array(rows)


def fit(xs: list[np.ndarray], ys: list[int], l2: float, iters: int = 300) -> np.ndarray:
    """Conditional logit (a softmax over each log's agents) by gradient descent, from the
    model's own choice (weight 1 on its log-score)."""
    w = np.zeros(xs[0].shape[1])
    w[0] = 1.0
    for _ in range(iters):
        g = l2 * w
        for x, y in zip(xs, ys):
            z = x @ w
            p = np.exp(z - z.max())
            g += (x.T @ (p / p.sum()) - x[y]) / len(xs)
        w -= 0.5 * g
    return w


def cv_accuracy(xs: list[np.ndarray], ys: list[int], cols: list[int], l2: float, folds: int,
                seeds: int) -> tuple[float, float]:
    """Agent accuracy of the fitted choice, out of fold, mean and spread over fold seeds."""
    accs = []
    for seed in range(seeds):
        order = np.random.RandomState(seed).permutation(len(xs))
        right = 0
        for f in range(folds):
            test = order[f::folds]
            train = np.setdiff1d(order, test)
            w = fit([xs[i][:, cols] for i in train], [ys[i] for i in train], l2)
            right += sum(int(np.argmax(xs[i][:, cols] @ w) == ys[i]) for i in test)
        accs.append(right / len(xs))
    return float(np.mean(accs)), float(np.std(accs))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("candidates", type=Path, help="out-of-fold candidates.jsonl of `astra cv`")
    p.add_argument("--logs", type=Path, default=DEV_LOGS, help="the labelled logs they score")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3, help="fold seeds averaged")
    p.add_argument("--l2", type=float, default=0.05)
    args = p.parse_args()
    cands = read_stage_rows(args.candidates, CANDIDATES_SCHEMA)
    xs, ys, model_right = [], [], 0
    for t in load_traces(args.logs).traces:
        if t.label is None or t.trace_id not in cands:
            continue
        names, x = agent_facts(t, cands[t.trace_id])
        if t.label.agent not in names:
            continue
        xs.append(x)
        ys.append(names.index(t.label.agent))
        model_right += coarse_choice(cands[t.trace_id])[0] == t.label.agent
    if not xs:
        print(f"no labelled log of {args.logs} has candidates in {args.candidates}",
              file=sys.stderr)
        return 2
    rows = [["the model's choice (no fitting)", f"{model_right / len(xs):.3f}", "-"]]
    for j in range(len(FACTS)):
        cols = [0] if j == 0 else [0, j]
        name = "model log-score alone, refitted" if j == 0 else f"model + {FACTS[j]}"
        mean, std = cv_accuracy(xs, ys, cols, args.l2, args.folds, args.seeds)
        rows.append([name, f"{mean:.3f}", f"{std:.3f}"])
    mean, std = cv_accuracy(xs, ys, list(range(len(FACTS))), args.l2, args.folds, args.seeds)
    rows.append(["model + all of them", f"{mean:.3f}", f"{std:.3f}"])
    print(f"{len(xs)} labelled logs; agent accuracy, {args.folds}-fold cross-validation over "
          f"the logs, mean and spread over {args.seeds} fold seeds")
    print(format_table(["agent choice", "agent", "spread"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
