"""`astra cv`: cross-validated strict scores of the coarse stage on labelled real logs.

Each fold's model trains on the other folds' logs (plus simulated traces, when given) and is
scored on its own fold only; no log is ever in its fold's training data (`folds.json` lists
what each fold trained on). The out-of-fold verdicts of all folds are then scored as one set,
in the form of `astra eval` (baselines included), with the spread over folds beside it.

Folds are k random stratified parts of the logs, or, with `--by-framework`, one per framework
(leave-one-framework-out): the models that score a framework never saw any log of it, which is
what a user whose framework the model never saw meets. That figure is taken over several seeds
(`--seeds`), because one seed's figure on an unseen framework swings by several points.
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
from astra_eval.folds import framework_of
from data_gen.readers import load_valid_traces
from data_gen.stage_files import coarse_verdict, write_stage_file
from data_gen.trace import Trace

# a framework needs at least this many labelled logs to be held out as a fold of its own: fewer
# make a figure that one log moves by more than 10 points
MIN_FRAMEWORK_LOGS = 10

def add_command(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cv", help="cross-validated strict scores on labelled real logs (k-fold, "
                       "or leave-one-framework-out with --by-framework)")
    c.add_argument("logs", nargs="+", type=Path, help="labelled logs (files or directories)")
    add_labels_arg(c)
    c.add_argument("--folds", type=positive_int, default=5)
    c.add_argument("--by-framework", action="store_true",
                   help="leave-one-framework-out: one fold per framework of the logs (their "
                   "reader's format or system.framework) instead of --folds random folds")
    c.add_argument("--seeds", type=positive_int, default=None,
                   help="repeat with seeds SEED, SEED+1, ... and report the spread (default: 3 "
                   "with --by-framework, else 1)")
    c.add_argument("--out", type=Path, required=True, help="directory (resumes if present)")
    c.add_argument("--sim", nargs="+", type=Path, default=[],
                   help="simulated traces every fold also trains on")
    c.add_argument("--init", type=Path, help="a trained run, ensemble or model file each fold "
                   "starts from (it must never have seen these logs)")
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
    seeds = args.seeds or (3 if args.by_framework else 1)
    try:
        if args.by_framework:
            logs, folds = framework_folds(logs)
        else:
            folds = kfold(logs, args.folds, cfg.seed)
        repeat_over_seeds(logs, sim, cfg, folds, seeds, args.members, args.out, args.top_k,
                          real_only=real_only, jobs=args.jobs,
                          kfold_k=None if args.by_framework else args.folds)
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


@dataclasses.dataclass(frozen=True)
class Fold:
    name: str
    test: tuple[int, ...]  # indices of the logs it scores
    train: tuple[int, ...] | None = None  # the logs it trains on; None: every other log

    def train_indices(self, n_logs: int) -> list[int]:
        """The logs this fold trains on; never one it scores."""
        test = set(self.test)
        if self.train is None:
            return [j for j in range(n_logs) if j not in test]
        if test & set(self.train):
            raise ValueError(f"{self.name}: trains on logs it scores: "
                             f"{sorted(test & set(self.train))}")
        return list(self.train)


def kfold(logs: list[Trace], k: int, seed: int) -> list[Fold]:
    """`k` random folds, stratified by the labelled agent."""
    from astra_eval.folds import stratified_folds  # noqa: PLC0415
    return [Fold(f"fold {i + 1}", tuple(f)) for i, f in enumerate(stratified_folds(logs, k, seed))]


def framework_folds(logs: list[Trace], min_logs: int = MIN_FRAMEWORK_LOGS
                    ) -> tuple[list[Trace], list[Fold]]:
    """One fold per framework with at least `min_logs` logs. A log whose framework cannot be
    told is named and left out (it might belong to the held-out framework); a framework with
    fewer logs is named and only trained on. Refuses logs of a single framework."""
    named = []
    for t in logs:
        if framework_of(t) is None:
            print(f"skipped (framework unknown: set system.framework): "
                  f"{t.source.get('path', t.trace_id)}", file=sys.stderr)
        else:
            named.append(t)
    by_fw: dict[str, list[int]] = {}
    for i, t in enumerate(named):
        by_fw.setdefault(framework_of(t), []).append(i)
    if len(by_fw) < 2:
        raise ValueError(f"leave-one-framework-out needs logs of at least two frameworks; these "
                         f"{len(named)} logs are all of {next(iter(by_fw), 'no known framework')}")
    folds = []
    for fw, ix in sorted(by_fw.items()):
        if len(ix) < min_logs:
            print(f"not held out (only {len(ix)} logs of {fw}, a fold needs {min_logs}); "
                  f"trained on by the other folds: "
                  f"{', '.join(str(named[i].source.get('path', named[i].trace_id)) for i in ix)}",
                  file=sys.stderr)
        else:
            folds.append(Fold(fw, tuple(ix)))
    if not folds:
        raise ValueError(f"no framework has the {min_logs} labelled logs a held-out fold needs")
    return named, folds


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
    from astra_jax.ensembles import ensemble_specs
    specs = ensemble_specs(cfg, members, sim + logs, sim_feats + log_feats)
    if real_only is not None:
        specs += ensemble_specs(real_only, members, logs, log_feats)
    return specs


def cross_validate(logs: list[Trace], sim: list[Trace], cfg, folds: list[Fold], members: int,
                   out: Path, top_k: int = 3, progress: bool = True, real_only=None,
                   jobs: int = DEFAULT_JOBS, by_framework: bool = False) -> dict[str, Any]:
    """Train and score every fold, `jobs` of them at once; writes `out/{folds.json,
    candidates.jsonl, eval.json, eval.md}` and one run directory per fold; returns the
    evaluation with `folds` and `cv`. With `real_only` (a TrainConfig), each fold's ensemble
    also has `members` models trained under it on the fold's logs alone (no simulated traces).
    With `by_framework` the evaluation's subsets are the logs' frameworks. The folds' results
    do not depend on `jobs`: each fold trains from its own seeds and data."""
    from astra_eval.markdown import cv_markdown
    from astra_eval.scoring import evaluate
    from astra_jax.ensembles import concurrent_trainings, concurrently, train_members
    from astra_jax.features import featurise, make_embedder

    out.mkdir(parents=True, exist_ok=True)
    ids = [t.trace_id for t in logs]
    split = [{"fold": i + 1, "name": f.name, "test": [ids[j] for j in f.test],
              "train": [ids[j] for j in f.train_indices(len(logs))]}
             for i, f in enumerate(folds)]
    (out / "folds.json").write_text(json.dumps(split, indent=1))
    emb, cache = make_embedder(cfg.embedder), out / "feature_cache"
    log_feats = featurise(logs, emb, cache, progress, cfg.dropped)
    sim_feats = featurise(sim, emb, cache, progress, cfg.dropped)
    subset = framework_of if by_framework else None

    def run_fold(i: int) -> tuple[dict[str, dict], dict[str, Any]]:
        train_ix = folds[i].train_indices(len(logs))
        print(f"== {folds[i].name} ({i + 1}/{len(folds)}): train on {len(train_ix)} logs + "
              f"{len(sim)} simulated traces, test on {len(folds[i].test)} logs", file=sys.stderr)
        run = out / f"fold-{i + 1}"
        train_members(member_specs(cfg, real_only, members, sim, sim_feats,
                                   [logs[j] for j in train_ix], [log_feats[j] for j in train_ix]),
                      [], [], run, progress, label=f"fold {i + 1} " if jobs > 1 else "")
        test_logs = [logs[j] for j in folds[i].test]
        fold = predict_traces(run, test_logs, top_k, cache)
        fold_cands = {c["trace_id"]: c for c in fold}
        verdicts = {tid: coarse_verdict(c) for tid, c in fold_cands.items()}
        return fold_cands, evaluate(test_logs, {"ours": verdicts}, fold_cands, top_k)["overall"]

    jobs = concurrent_trainings(jobs)
    results = concurrently(run_fold, len(folds), jobs)
    cands = {tid: c for fold_cands, _ in results for tid, c in fold_cands.items()}
    fold_rows = [row for _, row in results]
    scored = [logs[j] for f in folds for j in f.test]
    write_stage_file((cands[t.trace_id] for t in scored), out / "candidates.jsonl")
    method = ("ASTRA-JAX coarse, leave-one-framework-out" if by_framework
              else f"ASTRA-JAX coarse, {len(folds)}-fold CV")
    report = evaluate(scored, {method: {t: coarse_verdict(c) for t, c in cands.items()}}, cands,
                      top_k, subset=subset)
    report["folds"] = [{"name": f.name, **{m: {key: s[key] for key in ("n", "agent_acc",
                                                                        "step_acc")}
                                           for m, s in row.items()}}
                       for f, row in zip(folds, fold_rows)]
    report["cv"] = {"folds": len(folds), "by_framework": by_framework, "seed": cfg.seed,
                    "members": members, "simulated": len(sim),
                    "real_only_members": members if real_only is not None else 0,
                    "methods": spread(fold_rows, method)}
    md = cv_markdown(report)
    (out / "eval.json").write_text(json.dumps(report, indent=1), "utf-8")
    (out / "eval.md").write_text(md, "utf-8")
    if progress:
        print(md)
    return report


def repeat_over_seeds(logs: list[Trace], sim: list[Trace], cfg, folds: list[Fold], seeds: int,
                      members: int, out: Path, top_k: int = 3, progress: bool = True,
                      real_only=None, jobs: int = DEFAULT_JOBS, kfold_k: int | None = None
                      ) -> dict[str, Any]:
    """`cross_validate` under seeds `cfg.seed`, +1, ... (each in `out/seed-N` when more than
    one; with `kfold_k` the k-fold split is redrawn per seed); `out/eval.json` is the first
    seed's evaluation with `seeds`: every subset's mean, spread and per-seed figures."""
    from astra_eval.markdown import seeds_markdown
    if seeds == 1:
        return cross_validate(logs, sim, cfg, folds, members, out, top_k, progress, real_only,
                              jobs, by_framework=kfold_k is None)
    reports = []
    for s in range(cfg.seed, cfg.seed + seeds):
        c = dataclasses.replace(cfg, seed=s)
        r = real_only and dataclasses.replace(real_only, seed=s)
        fs = kfold(logs, kfold_k, s) if kfold_k else folds
        if progress:
            print(f"== seed {s} ({s - cfg.seed + 1}/{seeds})", file=sys.stderr)
        reports.append(cross_validate(logs, sim, c, fs, members, out / f"seed-{s}", top_k,
                                      False, r, jobs, by_framework=kfold_k is None))
    report = dict(reports[0])
    report["seeds"] = seed_spread(reports)
    md = seeds_markdown(report)
    (out / "eval.json").write_text(json.dumps(report, indent=1), "utf-8")
    (out / "eval.md").write_text(md, "utf-8")
    if progress:
        print(md)
    return report


def seed_spread(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per set (all, then each subset) and method: agent and step accuracy of each seed, their
    mean and standard deviation."""
    def sets(r):
        return {"all": r["overall"], **r["subsets"]}
    out: dict[str, Any] = {"seeds": [r["cv"]["seed"] for r in reports], "sets": {}}
    for name, by_method in sets(reports[0]).items():
        rows = {}
        for m in by_method:
            per = [sets(r)[name][m] for r in reports]
            rows[m] = {key: {"per_seed": [p[key] for p in per], "mean": statistics.fmean(
                p[key] for p in per), "std": statistics.stdev(p[key] for p in per)}
                for key in ("agent_acc", "step_acc")}
            rows[m]["n"] = per[0]["n"]
        out["sets"][name] = rows
    return out


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
