"""`astra demo`: the README's main job on embedded defaults, end to end."""
from __future__ import annotations

import argparse
from pathlib import Path

from astra_cli.data_commands import DEV_LOGS, run_gen, validate_paths
from astra_cli.table import format_table
from data_gen.readers import load_traces
from data_gen.sim.generate import GenConfig
from data_gen.stats import STATS_HEADERS, stats_rows


def add_command(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="generate, validate, describe, read the development logs")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--tasks", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--dev-logs", type=Path, default=DEV_LOGS)
    d.add_argument("--epochs", type=int, default=4)
    d.add_argument("--held-out-topology", default="crewai-hierarchical",
                   help="never seen in training; appears in the held-out test split")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    sim_path = args.out / "sim.jsonl"
    print(f"== 1. simulate {args.tasks} tasks with ASTRA-Gen (seed {args.seed})")
    n, rejected, secs = run_gen(GenConfig(n_tasks=args.tasks, seed=args.seed), sim_path)
    print(f"wrote {n:,} traces to {sim_path} in {secs:.1f}s; rejected tasks: "
          f"{sum(rejected.values())}")
    print("== 2. validate")
    ok, errors, _ = validate_paths([sim_path], quiet=True)
    print(format_table(("file", "valid", "invalid"), [(str(sim_path), ok, len(errors))]))
    print("== 3. statistics")
    print(format_table(STATS_HEADERS, stats_rows(load_traces(sim_path).traces)))
    print(f"== 4. read the development logs ({args.dev_logs})")
    dev = load_traces(args.dev_logs)
    for e in dev.errors:
        print(f"ERROR {e}")
    for w in dev.warnings:
        print(f"warning {w}")
    if dev.traces:
        print(format_table(STATS_HEADERS, stats_rows(dev.traces)))
    if errors or dev.errors:
        return 1
    return _coarse(args, sim_path, dev.traces)


def _coarse(args: argparse.Namespace, sim_path: Path, dev_traces) -> int:
    from astra_cli.coarse_commands import predict_traces
    from astra_jax.features import featurise, make_embedder
    from astra_jax.metrics import baseline_candidates, score_candidates
    from astra_jax.predict import write_jsonl
    from astra_jax.train import TrainConfig, train
    from data_gen.sim.teams import TEAMS

    seen = tuple(t for t in TEAMS if t != args.held_out_topology)
    train_traces = [t for t in load_traces(sim_path).traces if t.system.topology in seen]
    print(f"== 5. train the coarse model on {len(train_traces)} simulated traces "
          f"({', '.join(seen)})")
    splits = {}
    for name, seed in (("val", args.seed + 1000), ("test", args.seed + 2000)):
        path = args.out / f"sim_{name}.jsonl"
        run_gen(GenConfig(n_tasks=max(args.tasks // 4, 50), seed=seed, variants=("fatal",)),
                path, quiet=True)
        splits[name] = load_traces(path).traces
    cfg = TrainConfig(epochs=args.epochs)
    run = args.out / "coarse"
    emb = make_embedder(cfg.embedder)
    cache = run / "feature_cache"
    train(cfg, train_traces, featurise(train_traces, emb, cache, True), splits["val"],
          featurise(splits["val"], emb, cache, True), run)
    print("== 6. attribute the held-out simulated test split and the development logs")
    rows = []
    for name, traces in ((f"sim test (unseen seeds; incl. {args.held_out_topology})",
                          splits["test"]), ("Who&When dev logs (never trained on)", dev_traces)):
        cands = predict_traces(run, traces, 3)
        write_jsonl(cands, args.out / f"candidates_{'sim' if 'sim' in name else 'dev'}.jsonl")
        methods = {"ASTRA-JAX coarse": cands, **baseline_candidates(traces, args.seed)}
        for i, (method, cs) in enumerate(methods.items()):
            s = score_candidates(traces, cs)
            rows.append((name if i == 0 else "", method, s["n"], s["agent_acc"], s["step_acc"],
                         s["step_acc_pm1"], s["agent_top3"]))
    print(format_table(("set", "method", "n", "agent acc", "step acc", "step ±1",
                        "agent top-3"), rows))
    print(f"candidates written under {args.out}; model under {run}")
    return 0
