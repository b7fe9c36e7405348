"""How many labelled logs of its own framework a team must give the coarse model.

For each framework of the labelled logs, its logs are split into k folds; each fold's model
starts from the simulated pre-training, trains on every log of the other frameworks, the
simulated replay and the first N of the framework's own logs outside the fold (a seeded order,
so 10 of them are among the 25), and is scored strictly on the fold. N = 0 is
leave-one-framework-out (one model scores all of the framework's logs); the largest N is all of
them. Repeated over seeds (each draws its folds, order and models anew), beside the rules of
`astra eval` on the same logs. Prints a table, writes `OUT/learning_curve.json` and a plot
`OUT/learning_curve.svg`; resumes (a finished point is read back).

    .venv/bin/python bench/learning_curve.py [--logs data/who_and_when] [--init MODEL_OR_RUN]
        [--sim REPLAY.jsonl] [--sizes 0 10 25 50 all] [--seeds 3] [--folds 3] [--out DIR]

`--init` defaults to the shipped simulated pre-training and `--sim` to 300 simulated traces
generated as `astra adapt` generates them, so it runs right after install.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path

import numpy as np

from astra_cli.adapt_command import replay_traces
from astra_cli.cv_command import Fold, cross_validate, kfold, labelled_logs
from astra_cli.recipe import Recipe
from astra_cli.table import format_table
from astra_eval.folds import framework_of
from astra_eval.scoring import FIRST_INVOCATION
from astra_jax.configs import TrainConfig
from astra_jax.export import PRETRAINED_MODEL
from data_gen.readers import load_traces
from data_gen.trace import Trace

RULES = ("predicted agent, its first step", FIRST_INVOCATION,
         "most frequent agent, its first step", "random")


def curve_folds(logs: list[Trace], framework: str, n: int | None, k: int, seed: int
                ) -> list[Fold]:
    """The folds of one point: N = 0 one fold of all the framework's logs; else k folds, each
    training on the other frameworks' logs and the first `n` (None: all) of its own others."""
    own = [i for i, t in enumerate(logs) if framework_of(t) == framework]
    others = tuple(i for i, t in enumerate(logs) if framework_of(t) != framework)
    if n == 0:
        return [Fold(f"{framework} held out", tuple(own), others)]
    sub = [logs[i] for i in own]
    folds = []
    for f in kfold(sub, k, seed):
        test = tuple(own[j] for j in f.test)
        rest = [i for i in own if i not in set(test)]
        random.Random(seed * 1009 + len(folds)).shuffle(rest)
        folds.append(Fold(f.name, test, others + tuple(rest[:n] if n is not None else rest)))
    return folds


def point(logs, sim, cfg, framework, n, k, seed, out: Path) -> dict:
    """One (framework, N, seed) point's overall scores, read back if already run."""
    done = out / "eval.json"
    if not done.is_file():
        folds = curve_folds(logs, framework, n, k, seed)
        cross_validate(logs, sim, dataclasses.replace(cfg, seed=seed), folds, 1, out,
                       progress=False)
    overall = json.loads(done.read_text())["overall"]
    return {m: (s["agent_acc"], s["step_acc"]) for m, s in overall.items()}


def svg_plot(rows: list[dict], path: Path) -> None:
    """Agent and step accuracy against labelled logs, one line per framework (mean, with the
    seeds' spread as bars), each framework's best rule dashed."""
    w, h, pad = 360, 260, 44
    frameworks = sorted({r["framework"] for r in rows})
    xs = sorted({r["labelled"] for r in rows})
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]

    def x_of(v):
        return pad + (w - 2 * pad) * (xs.index(v) / max(1, len(xs) - 1))

    def y_of(v):
        return h - pad - (h - 2 * pad) * v

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * w}" height="{h}" '
             f'font-family="sans-serif" font-size="11">']
    for p, key in enumerate(("agent", "step")):
        g = [f'<g transform="translate({p * w},0)">',
             f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{key} accuracy '
             f'(strict)</text>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#333"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#333"/>']
        for v in (0, 0.25, 0.5, 0.75, 1.0):
            g.append(f'<text x="{pad - 6}" y="{y_of(v) + 4}" text-anchor="end">{v:g}</text>')
        for v in xs:
            g.append(f'<text x="{x_of(v)}" y="{h - pad + 14}" text-anchor="middle">{v}</text>')
        g.append(f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">labelled logs of the '
                 f'framework</text>')
        for c, fw in enumerate(frameworks):
            col = colours[c % len(colours)]
            mine = sorted((r for r in rows if r["framework"] == fw), key=lambda r: r["labelled"])
            pts = " ".join(f"{x_of(r['labelled'])},{y_of(r[key][0])}" for r in mine)
            g.append(f'<polyline points="{pts}" fill="none" stroke="{col}" stroke-width="2"/>')
            for r in mine:
                m, s = r[key]
                g.append(f'<line x1="{x_of(r["labelled"])}" y1="{y_of(m - s)}" '
                         f'x2="{x_of(r["labelled"])}" y2="{y_of(m + s)}" stroke="{col}"/>')
            best = max(r["best_rule"][key] for r in mine)
            g.append(f'<line x1="{pad}" y1="{y_of(best)}" x2="{w - pad}" y2="{y_of(best)}" '
                     f'stroke="{col}" stroke-dasharray="4 3"/>')
            g.append(f'<text x="{w - pad + 2}" y="{pad + 14 * c}" fill="{col}">{fw}</text>')
        parts += g + ["</g>"]
    parts.append("</svg>")
    path.write_text("\n".join(parts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logs", nargs="+", type=Path, default=[Path("data/who_and_when")])
    p.add_argument("--init", type=Path, default=PRETRAINED_MODEL,
                   help="the starting point (default: the shipped simulated pre-training)")
    p.add_argument("--sim", type=Path, help="simulated traces to replay (default: 300 generated "
                   "as `astra adapt` does, in OUT/replay.jsonl)")
    p.add_argument("--sizes", nargs="+", default=["0", "10", "25", "50", "all"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("runs/learning_curve"))
    args = p.parse_args()
    for path in (args.init, args.sim):
        if path is not None and not path.exists():
            sys.exit(f"error: {path} is missing")
    recipe = Recipe()
    args.out.mkdir(parents=True, exist_ok=True)
    sim = (load_traces(args.sim).traces if args.sim
           else replay_traces(recipe.replay, args.out / "replay.jsonl"))
    logs = labelled_logs(load_traces(args.logs).traces)
    cfg = TrainConfig(epochs=recipe.real_epochs, real_weight=recipe.real_weight,
                      init=str(args.init.resolve()))
    rows = []
    for fw in sorted({framework_of(t) for t in logs}):
        n_own = sum(framework_of(t) == fw for t in logs)
        most = n_own - -(-n_own // args.folds)  # a fold's other logs of its framework
        sizes = sorted({most if s == "all" else min(int(s), most) for s in args.sizes})
        for n in sizes:
            per_seed = [point(logs, sim, cfg, fw, None if n == most else n, args.folds, s,
                              args.out / fw / f"n-{n}" / f"seed-{s}")
                        for s in range(args.seeds)]
            method = next(m for m in per_seed[0] if m.startswith("ASTRA-JAX"))
            a = [r[method][0] for r in per_seed]
            st = [r[method][1] for r in per_seed]
            rules = {m: tuple(np.mean([r[m][i] for r in per_seed]) for i in (0, 1))
                     for m in RULES}
            rows.append({"framework": fw, "labelled": n, "logs": n_own,
                         "agent": (float(np.mean(a)), float(np.std(a))),
                         "step": (float(np.mean(st)), float(np.std(st))),
                         "rules": rules,
                         "best_rule": {"agent": max(v[0] for v in rules.values()),
                                       "step": max(v[1] for v in rules.values())}})
            print(f"{fw}: {n} labelled: agent {rows[-1]['agent'][0]:.3f}, "
                  f"step {rows[-1]['step'][0]:.3f}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning_curve.json").write_text(json.dumps(rows, indent=1))
    svg_plot(rows, args.out / "learning_curve.svg")
    head = ["framework", "labelled logs", "agent", "step", "best rule: agent", "best rule: step"]
    print(f"{args.seeds} seed(s), {args.folds} folds; mean ± std over seeds")
    print(format_table(head, [[r["framework"], r["labelled"],
                               f"{r['agent'][0]:.3f} ± {r['agent'][1]:.3f}",
                               f"{r['step'][0]:.3f} ± {r['step'][1]:.3f}",
                               f"{r['best_rule']['agent']:.3f}",
                               f"{r['best_rule']['step']:.3f}"] for r in rows]))
    print(f"plot: {args.out / 'learning_curve.svg'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
