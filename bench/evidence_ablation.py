"""What each group of step evidence adds on the development logs, by cross-validation.

For every group of data_gen/evidence.py, the coarse model is trained with that group left out
(`--drop-evidence GROUP`), fold by fold, exactly as `astra cv` does, and its out-of-fold strict
scores are printed beside the model with all evidence and without any. Real logs only, no
simulated traces, so a row takes minutes on a 2-core CPU.

    .venv/bin/python bench/evidence_ablation.py [--folds 5] [--epochs 20] [--out runs/ablation]
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from astra_cli.cv_command import cross_validate, kfold
from astra_cli.data_commands import DEV_LOGS
from astra_cli.table import format_table
from astra_jax.configs import TrainConfig
from data_gen.evidence import EVIDENCE_GROUPS
from data_gen.readers import load_traces


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = p.parse_args()
    logs = load_traces(DEV_LOGS).traces
    base = TrainConfig(epochs=args.epochs, seed=args.seed)
    variants = [("all evidence", "")] + [(f"without {g}", g) for g in EVIDENCE_GROUPS] + [
        ("no evidence", ",".join(EVIDENCE_GROUPS))]
    rows = []
    for name, drop in variants:
        print(f"== {name}", file=sys.stderr)
        rep = cross_validate(logs, [], dataclasses.replace(base, drop_evidence=drop),
                             kfold(logs, args.folds, args.seed), 1,
                             args.out / (drop.replace(",", "+") or "all"), progress=False)
        ours = next(iter(rep["overall"].values()))
        spread = next(iter(rep["cv"]["methods"].values()))
        first = rep["overall"]["predicted agent, its first step"]
        rows.append((name, ours["agent_acc"], ours["step_acc"], spread["step_acc"]["std"],
                     ours["step_acc_pm1"], first["step_acc"]))
        print(format_table(("evidence", "agent", "step", "step std over folds", "step ±1",
                            "predicted agent, its first step"), rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
