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
    return 1 if errors or dev.errors else 0
