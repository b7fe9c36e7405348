"""`astra adapt`: teach the coarse model a team's own framework in one command.

Starts from the shipped simulated pre-training (no real log in it), fine-tunes it on the team's
labelled logs by the recipe (`astra_cli/recipe.py`: simulated traces replayed beside the logs so
the model keeps the simulated task), first cross-validating that same recipe on those logs to
say what accuracy to expect on the team's next runs, beside every baseline. Every stage writes
into a working directory, so a stopped run picks up where it left off.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from astra_cli.coarse_commands import DEFAULT_JOBS, usable_for_training
from astra_cli.cv_command import cross_validate, kfold, labelled_logs
from astra_cli.data_commands import add_labels_arg, load_labelled, positive_int, run_gen
from astra_cli.recipe import Recipe, add_fine_tune_args, fine_tune, replay_sample
from astra_cli.table import format_table
from data_gen.readers import load_traces
from data_gen.sim.generate import GenConfig
from data_gen.trace import Trace

# fewer labelled logs make folds of one or two logs, whose figures say nothing
MIN_LOGS = 10
# simulated traces per simulated task, about (a task gives up to three variants)
TRACES_PER_TASK = 2.5


def add_command(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("adapt", help="fine-tune the coarse model on your own labelled logs, "
                       "cross-validated, into one model file")
    a.add_argument("logs", nargs="+", type=Path, help="your labelled logs (files or directories)")
    add_labels_arg(a)
    a.add_argument("--out", type=Path, required=True, help="the model file to write, e.g. "
                   "mine.msgpack (`astra attribute/predict/run --run` take it)")
    a.add_argument("--work", type=Path, help="working directory; rerun the command to resume "
                   "(default: OUT's name with .work)")
    a.add_argument("--init", type=Path, help="a model file or run to start from (default: the "
                   "shipped simulated pre-training, which has seen no real log)")
    a.add_argument("--folds", type=positive_int, default=Recipe.folds,
                   help="cross-validation folds over your logs")
    a.add_argument("--no-cv", action="store_true",
                   help="skip the cross-validation (the model file then says nothing of how "
                   "good it is)")
    a.add_argument("--epochs", type=positive_int, default=Recipe.real_epochs)
    add_fine_tune_args(a)
    a.add_argument("--seed", type=int, default=Recipe.seed)
    a.add_argument("--jobs", type=positive_int, default=DEFAULT_JOBS,
                   help="trainings at once (threads sharing the compiled programs)")
    a.set_defaults(func=cmd_adapt, compiles=True)


def cmd_adapt(args: argparse.Namespace) -> int:
    from astra_jax import RunDirError
    from astra_jax.export import PRETRAINED_MODEL

    work = args.work or args.out.with_name(args.out.stem + ".work")
    init = args.init or PRETRAINED_MODEL
    if not init.exists():
        raise RunDirError(f"{init}: no model to start from; give --init a model file or run")
    logs = usable_for_training(labelled_logs(load_labelled(args.logs, args.labels)),
                               "your logs")
    if len(logs) < MIN_LOGS:
        print(f"error: {len(logs)} usable labelled logs; adapting needs at least {MIN_LOGS} "
              f"(label more in the report: docs/own_runs.md)", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(start_config(init), epochs=args.epochs, seed=args.seed,
                              real_weight=args.real_weight, init=str(init.resolve()))
    mismatch = claim_work_dir(work, {
        "init": cfg.init, "epochs": args.epochs, "replay": args.replay,
        "real_weight": args.real_weight, "members": args.members, "seed": args.seed,
        "folds": None if args.no_cv else args.folds,
        "logs": sorted(f"{t.trace_id}:{t.label.agent}:{t.label.step}" for t in logs)})
    if mismatch:
        print(f"error: {work} holds a run with other {', '.join(mismatch)}; rerun with the "
              f"same, or give --work a new directory", file=sys.stderr)
        return 2
    print(f"== 1. {args.replay} simulated traces to replay beside your {len(logs)} logs")
    replay = replay_traces(args.replay, work / "replay.jsonl")
    eval_json = None
    if not args.no_cv:
        folds = min(args.folds, len(logs) // 2)
        print(f"== 2. what to expect: {folds}-fold cross-validation on your logs (each fold "
              f"fine-tunes {init.name} on the other folds' logs)")
        cross_validate(logs, replay, cfg, kfold(logs, folds, args.seed), args.members,
                       work / "cv", jobs=args.jobs)
        eval_json = work / "cv" / "eval.json"
    print(f"== 3. the model: {init.name} fine-tuned on all {len(logs)} logs and {len(replay)} "
          f"simulated traces")
    run = work / "model"
    fine_tune(cfg, args.members, replay, logs, run, jobs=args.jobs)
    export(run, eval_json, args)
    return 0


def claim_work_dir(work: Path, settings: dict) -> list[str]:
    """Record `settings` in `work/adapt.json`, or name those that differ from the ones recorded
    there: a rerun resumes only the same run (the same logs, labels and recipe)."""
    path = work / "adapt.json"
    if path.exists():
        before = json.loads(path.read_text())
        return [k for k in settings if before.get(k) != settings[k]]
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=1))
    return []


def start_config(init: Path):
    """The TrainConfig the starting point was trained under: fine-tuning keeps its model,
    embedder and evidence."""
    from astra_jax.export import load_model
    from astra_jax.configs import config_from_dir
    from astra_jax.run_dirs import member_dirs

    return load_model(init)[0] if init.is_file() else config_from_dir(member_dirs(init)[0])


def replay_traces(n: int, path: Path) -> list[Trace]:
    """`n` simulated traces from the first tasks of the pre-training's simulation (seed 0),
    spread over its teams and variants; written once to `path` and read back on a rerun."""
    if n <= 0:
        return []
    meta = path.with_suffix(".json")
    want = {"replay": n, "seed": 0, "tasks": math.ceil(n / TRACES_PER_TASK)}
    if not (path.exists() and meta.exists() and json.loads(meta.read_text()) == want):
        run_gen(GenConfig(n_tasks=want["tasks"], seed=0), path)
        meta.write_text(json.dumps(want))
    return replay_sample(load_traces(path).traces, n)


def export(run: Path, eval_json: Path | None, args: argparse.Namespace) -> None:
    """Write the model file, its header holding the cross-validated table, and print that
    table and how to use the file."""
    from astra_cli.coarse_commands import export_run
    from astra_jax.export import run_provenance

    command = (f"astra adapt {' '.join(map(str, args.logs))} --out {args.out} --epochs "
               f"{args.epochs} --replay {args.replay} --real-weight {args.real_weight} "
               f"--members {args.members} --seed {args.seed}"
               + (" --no-cv" if args.no_cv else f" --folds {args.folds}")
               + "".join(f" --labels {f}" for f in args.labels)
               + (f" --init {args.init}" if args.init else ""))
    export_run(run, args.out, run_provenance(run, eval_json, command))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    if eval_json is not None:
        report = json.loads(eval_json.read_text())
        print("expected on your next runs (cross-validated, strict):")
        print(format_table(("method", "n", "agent acc", "step acc", "step ±1"), [
            (m, s["n"], s["agent_acc"], s["step_acc"], s["step_acc_pm1"])
            for m, s in report["overall"].items()]))
    print(f"use it: astra attribute LOG --run {args.out}   (or predict / run --coarse)")
