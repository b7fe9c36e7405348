"""How the coarse model does on a framework it never trained on: leave-one-framework-out on
ASTRA-Gen traces.

For every framework the simulator models (Magentic-One, AutoGen CaptainAgent in both of its
openings, MetaGPT, CrewAI), a coarse model trains on simulated traces of the other frameworks
only and is scored, strictly, on fatal traces of the one left out (other seeds), beside every
trivial baseline of `astra eval`. This approximates users' logs of frameworks absent from the
training data; the real-log figures are in docs/coarse_stage.md.

    .venv/bin/python bench/leave_one_framework_out.py [--tasks 300] [--test-tasks 400] [--epochs 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from astra_cli.coarse_commands import predict_traces
from astra_cli.data_commands import run_gen
from astra_cli.table import format_table
from astra_eval.scoring import FIRST_INVOCATION, evaluate
from astra_jax.configs import TrainConfig
from astra_jax.ensembles import train_ensemble
from astra_jax.features import featurise, make_embedder
from data_gen.readers import load_traces
from data_gen.sim.generate import VARIANTS, GenConfig
from data_gen.sim.teams import TEAMS
from data_gen.stage_files import coarse_verdict

BASELINES = ("predicted agent, its first step", "most frequent agent, its first step",
             FIRST_INVOCATION, "random")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=300, help="simulated tasks to train on")
    p.add_argument("--test-tasks", type=int, default=400)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/leave_one_framework_out"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pools = {}
    for name, tasks, seed, variants in (("train", args.tasks, args.seed, VARIANTS),
                                        ("test", args.test_tasks, args.seed + 2000, ("fatal",))):
        path = args.out / f"{name}.jsonl"
        if not path.exists():
            run_gen(GenConfig(n_tasks=tasks, seed=seed, variants=variants), path, quiet=True)
        pools[name] = load_traces(path).traces
    emb = make_embedder("hashing")
    cache = args.out / "feature_cache"
    frameworks = sorted({t.framework for t in TEAMS.values()})
    rows = []
    for fw in frameworks:
        train = [t for t in pools["train"] if t.system.framework != fw]
        test = [t for t in pools["test"] if t.system.framework == fw]
        print(f"== without {fw}: train on {len(train)} traces, test on {len(test)}",
              file=sys.stderr)
        run = args.out / fw
        cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
        train_ensemble(cfg, 1, train, featurise(train, emb, cache, False), [], [], run, False)
        cands = {c["trace_id"]: c for c in predict_traces(run, test, 3, cache)}
        overall = evaluate(test, {"ours": {k: coarse_verdict(c) for k, c in cands.items()}},
                           cands)["overall"]
        for j, m in enumerate(("ours",) + BASELINES):
            rows.append((fw if j == 0 else "", m if m != "ours" else "ASTRA-JAX coarse",
                         overall[m]["n"], overall[m]["agent_acc"], overall[m]["step_acc"]))
        print(format_table(("held-out framework", "method", "n", "agent", "step"), rows),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
