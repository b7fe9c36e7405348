"""`astra cv`: k-fold cross-validated strict scores of the coarse stage on labelled real logs.

Each fold's model trains on the other folds' logs (plus simulated traces, when given) and is
scored on its own fold only; no log is ever in its fold's training data (`fold-N/data.json`
lists what each fold trained on). The out-of-fold verdicts of all folds are then scored as one
set, in the form of `astra eval` (baselines included), with the spread over folds beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from astra_cli.coarse_commands import (DEFAULT_JOBS, predict_traces, train_config,
                                       usable_for_training)
from astra_cli.data_commands import add_labels_arg, load_labelled, positive_int, share
from data_gen.readers import load_valid_traces
from data_gen.stage_files import coarse_verdict, write_stage_file
from data_gen.trace import Trace

def add_command(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cv", help="k-fold cross-validated strict scores on labelled real logs")
    c.add_argument("logs", nargs="+", type=Path, help="labelled logs (files or directories)")
    add_labels_arg(c)
    c.add_argument("--folds", type=positive_int, default=5)
    c.add_argument("--out", type=Path, required=True, help="directory (resumes if present)")
    c.add_argument("--sim", nargs="+", type=Path, default=[],
                   help="simulated traces every fold also trains on")
    c.add_argument("--init", type=Path, help="a trained run or ensemble each fold starts from "
                   "(it must never have seen these logs)")
    c.add_argument("--members", type=positive_int, default=1)
    c.add_argument("--epochs", type=positive_int, default=8)
    c.add_argument("--real-only-epochs", type=int, default=0, metavar="E",
                   help="pair each member with one trained from scratch on the fold's logs "
                   "alone for E epochs, their probabilities averaged (0: none)")
    c.add_argument("--seed", type=int, default=0, help="seeds the folds and the models")
    c.add_argument("--real-weight", type=share, default=0.5)
    c.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    c.add_argument("--drop-evidence", default="", help="evidence groups to leave out")
    c.add_argument("--top-k", type=int, default=3)
    c.add_argument("--jobs", type=positive_int, default=DEFAULT_JOBS,
                   help="folds trained at once (threads sharing the compiled programs; the "
                        "scores do not depend on it)")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field, as for astra train")
    c.set_defaults(func=cmd_cv, compiles=True)


def cmd_cv(args: argparse.Namespace) -> int:
    try:
        cfg = train_config(args)
        real_only = real_only_config(cfg, args.real_only_epochs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logs = labelled_logs(load_labelled(args.logs, args.labels))
    sim = usable_for_training(load_valid_traces(args.sim), "simulated") if args.sim else []
    try:
        cross_validate(logs, sim, cfg, args.folds, args.members, args.out, args.top_k,
                       real_only=real_only, jobs=args.jobs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def labelled_logs(traces: list[Trace]) -> list[Trace]:
    """The logs cross-validation can score: each unlabelled one is named on stderr and left out."""
    for t in traces:
        if t.label is None:
            print(f"skipped (no label, cannot be scored): {t.source.get('path', t.trace_id)}",
                  file=sys.stderr)
    return [t for t in traces if t.label is not None]


def real_only_config(cfg, epochs: int):
    """The setting of members trained from scratch on real logs alone (None for `epochs` 0):
    `cfg` with no starting point."""
    if epochs < 0:
        raise ValueError(f"real-only epochs must be 0 or more, not {epochs}")
    return dataclasses.replace(cfg, epochs=epochs, init="") if epochs else None


def member_specs(cfg, real_only, members: int, sim: list[Trace], sim_feats: list,
                 logs: list[Trace], log_feats: list) -> list:
    """The members trained on `logs`: `members` under `cfg` with the simulated traces beside
    the logs and, with `real_only`, as many under it on the logs alone."""
    from astra_jax.train import ensemble_specs
    specs = ensemble_specs(cfg, members, sim + logs, sim_feats + log_feats)
    if real_only is not None:
        specs += ensemble_specs(real_only, members, logs, log_feats)
    return specs


def cross_validate(logs: list[Trace], sim: list[Trace], cfg, k: int, members: int, out: Path,
                   top_k: int = 3, progress: bool = True, real_only=None,
                   jobs: int = DEFAULT_JOBS) -> dict[str, Any]:
    """Train and score `k` folds, `jobs` of them at once; writes `out/{folds.json,
    candidates.jsonl, eval.json, eval.md}` and one run directory per fold; returns the
    evaluation with `folds` and `cv`. With `real_only` (a TrainConfig), each fold's ensemble
    also has `members` models trained under it on the fold's logs alone (no simulated traces).
    The folds' results do not depend on `jobs`: each fold trains from its own seeds and data."""
    from astra_eval.folds import stratified_folds
    from astra_eval.markdown import cv_markdown
    from astra_eval.scoring import evaluate
    from astra_jax.features import featurise, make_embedder
    from astra_jax.train import concurrent_trainings, concurrently, train_members

    folds = stratified_folds(logs, k, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    ids = [t.trace_id for t in logs]
    split = [{"fold": i + 1, "test": [ids[j] for j in f],
              "train": [ids[j] for j in range(len(logs)) if j not in set(f)]}
             for i, f in enumerate(folds)]
    (out / "folds.json").write_text(json.dumps(split, indent=1))
    emb, cache = make_embedder(cfg.embedder), out / "feature_cache"
    log_feats = featurise(logs, emb, cache, progress, cfg.dropped)
    sim_feats = featurise(sim, emb, cache, progress, cfg.dropped)

    def run_fold(i: int) -> tuple[dict[str, dict], dict[str, Any]]:
        test = set(folds[i])
        train_ix = [j for j in range(len(logs)) if j not in test]
        print(f"== fold {i + 1}/{k}: train on {len(train_ix)} logs + {len(sim)} simulated "
              f"traces, test on {len(test)} logs", file=sys.stderr)
        run = out / f"fold-{i + 1}"
        train_members(member_specs(cfg, real_only, members, sim, sim_feats,
                                   [logs[j] for j in train_ix], [log_feats[j] for j in train_ix]),
                      [], [], run, progress, label=f"fold {i + 1} " if jobs > 1 else "")
        fold = predict_traces(run, [logs[j] for j in folds[i]], top_k, cache)
        fold_cands = {c["trace_id"]: c for c in fold}
        verdicts = {tid: coarse_verdict(c) for tid, c in fold_cands.items()}
        return fold_cands, evaluate([logs[j] for j in folds[i]], {"ours": verdicts},
                                    fold_cands, top_k)["overall"]

    jobs = concurrent_trainings(jobs)
    results = concurrently(run_fold, k, jobs)
    cands = {tid: c for fold_cands, _ in results for tid, c in fold_cands.items()}
    fold_rows = [row for _, row in results]
    write_stage_file((cands[t] for t in ids), out / "candidates.jsonl")
    method = f"ASTRA-JAX coarse, {k}-fold CV"
    report = evaluate(logs, {method: {t: coarse_verdict(c) for t, c in cands.items()}}, cands,
                      top_k)
    report["folds"] = [{m: {key: s[key] for key in ("n", "agent_acc", "step_acc")}
                        for m, s in row.items()} for row in fold_rows]
    report["cv"] = {"folds": k, "seed": cfg.seed, "members": members, "simulated": len(sim),
                    "real_only_members": members if real_only is not None else 0,
                    "methods": spread(fold_rows, method)}
    md = cv_markdown(report)
    (out / "eval.json").write_text(json.dumps(report, indent=1), "utf-8")
    (out / "eval.md").write_text(md, "utf-8")
    print(md)
    return report


def spread(fold_rows: list[dict[str, dict]], method: str) -> dict[str, dict[str, float]]:
    """Mean and standard deviation over folds of agent and step accuracy, per method (ours is
    renamed `method`)."""
    out = {}
    for m in fold_rows[0]:
        stats = {}
        for key in ("agent_acc", "step_acc"):
            xs = [row[m][key] for row in fold_rows]
            stats[key] = {"mean": statistics.fmean(xs),
                          "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}
        out[method if m == "ours" else m] = stats
    return out
