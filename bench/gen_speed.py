"""ASTRA-Gen throughput: traces per second for 10,000+ traces, serial vs all cores.

    python bench/gen_speed.py [--tasks 3600]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from astra_cli.data_commands import run_gen  # noqa: E402
from astra_cli.table import format_table  # noqa: E402
from data_gen.sim.generate import GenConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=3600, help="~2.8 traces per task")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for workers in (1, mp.cpu_count()):
            out = Path(d) / f"w{workers}.jsonl"
            n, _, secs = run_gen(GenConfig(n_tasks=args.tasks, seed=0, workers=workers), out,
                                 quiet=True)
            rows.append((workers, args.tasks, n, secs, n / secs, os.path.getsize(out) / 2**20))
    print(format_table(("workers", "tasks", "traces", "seconds", "traces/s", "MiB written"), rows))


if __name__ == "__main__":
    main()
