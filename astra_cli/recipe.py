"""The recipe of the coarse model that `astra demo` trains and the package ships: pre-train on
simulated traces, score the recipe on labelled real logs by cross-validation (each fold
fine-tunes the simulated model on the other folds' logs), then fine-tune the simulated model on
all of them. Each fine-tuned model is paired with one trained on the real logs alone. The
simulated model never sees a real log, so no fold's test log leaks into it. Fine-tuning
replays a sample of the simulated traces beside the real logs: without it the model forgets
the simulated task (docs/coarse_stage.md)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astra_cli.coarse_commands import DEFAULT_JOBS
from astra_cli.data_commands import positive_int, share
from data_gen.trace import Trace


@dataclass(frozen=True)
class Recipe:
    # ensemble members (seeds seed, seed+1, ...): one keeps `make demo` short; the shipped
    # model (`make model`) has three, steadier and better calibrated on real logs
    members: int = 1
    sim_epochs: int = 2  # pre-training on simulated traces
    real_epochs: int = 4  # fine-tuning on real logs, each fold and the final model
    folds: int = 5
    seed: int = 0
    # simulated traces replayed beside the real logs when fine-tuning, and the real logs' share
    # of each fine-tuning epoch: 300 at 0.45 keeps the simulated task where 100 at 0.5 forgot
    # part of it, and 0.45 repeats each log twice both in a fold (about 100 logs) and in the
    # final model (126), so cross-validation measures the final model's mix
    # (docs/coarse_stage.md, "Keeping the simulated task")
    replay: int = 300
    real_weight: float = 0.45
    # each member may be paired with one trained from scratch on the real logs alone for this
    # many epochs (0: none). None by default: such a model lifts cross-validation inside the
    # framework it trains on and collapses on others (0.362 / 0.069 on Magentic-One logs when
    # trained on the algorithm-generated ones), dragging the pair below its fine-tuned member
    real_only_epochs: int = 0


def add_fine_tune_args(p: argparse.ArgumentParser) -> None:
    """The fine-tuning flags `astra demo` and `astra adapt` share, defaulting to the recipe."""
    p.add_argument("--replay", type=int, default=Recipe.replay,
                   help="simulated traces replayed beside the real logs when fine-tuning, so "
                   "the model keeps the simulated task (0: none)")
    p.add_argument("--real-weight", type=share, default=Recipe.real_weight,
                   help="the real logs' share of each fine-tuning epoch (real logs are repeated "
                   "to reach it, at least once each)")
    p.add_argument("--members", type=positive_int, default=Recipe.members,
                   help="coarse models trained with different seeds, their predictions averaged")


def replay_sample(traces: list[Trace], n: int) -> list[Trace]:
    """`n` traces spread evenly over `traces` (every k-th), so every team and variant is in it."""
    if n <= 0:
        return []
    return traces[::max(1, len(traces) // n)][:n]


def build_coarse_model(recipe: Recipe, sim_train: list[Trace], sim_val: list[Trace],
                       real: list[Trace], out: Path, progress: bool = True,
                       say=print, base=None) -> dict[str, Any]:
    """Train `out/sim_coarse`, cross-validate into `out/cv`, fine-tune `out/coarse`; returns
    their paths and the cross-validation report. `base` (a TrainConfig; default: the
    defaults) gives the model and every setting the recipe does not set."""
    from astra_cli.cv_command import cross_validate, framework_folds, kfold, real_only_config
    from astra_jax.configs import TrainConfig
    from astra_jax.ensembles import train_ensemble
    from astra_jax.features import featurise, make_embedder

    cfg = dataclasses.replace(base or TrainConfig(), epochs=recipe.sim_epochs, seed=recipe.seed)
    sim_run, run = out / "sim_coarse", out / "coarse"
    emb = make_embedder(cfg.embedder)
    say(f"== pre-train {recipe.members} coarse model(s), seeds {recipe.seed} on, on "
        f"{len(sim_train)} simulated traces")
    cache = sim_run / "feature_cache"
    train_ensemble(cfg, recipe.members, sim_train, featurise(sim_train, emb, cache, progress),
                   sim_val, featurise(sim_val, emb, cache, progress), sim_run, progress,
                   jobs=DEFAULT_JOBS)
    real_cfg = dataclasses.replace(cfg, epochs=recipe.real_epochs, init=str(sim_run.resolve()),
                                   real_weight=recipe.real_weight)
    real_only = real_only_config(cfg, recipe.real_only_epochs)
    replay = replay_sample(sim_train, recipe.replay)
    paired = (f", each paired with a model trained {recipe.real_only_epochs} epochs on those "
              f"logs alone" if real_only else "")
    try:  # the figure of record: frameworks never trained on
        scored, folds = framework_folds(real)
        by_framework = True
        how = (f"leave-one-framework-out on {len(scored)} labelled logs of {len(folds)} "
               f"frameworks ({', '.join(f.name for f in folds)}): each fold")
    except ValueError:  # one framework: k random folds
        scored, folds = real, kfold(real, recipe.folds, recipe.seed)
        by_framework = False
        how = f"{recipe.folds}-fold cross-validation on {len(real)} labelled logs: each fold"
    say(f"== {how} fine-tunes the simulated model on the other folds' logs and {len(replay)} "
        f"simulated traces{paired}")
    cv = cross_validate(scored, replay, real_cfg, folds, recipe.members, out / "cv",
                        progress=progress, real_only=real_only,
                        by_framework=by_framework)
    say(f"== the coarse model: the simulated model fine-tuned on all {len(real)} logs and "
        f"{len(replay)} simulated traces{paired}")
    fine_tune(real_cfg, recipe.members, replay, real, run, real_only, progress)
    return {"sim_run": sim_run, "run": run, "cv": cv}


def fine_tune(cfg, members: int, replay: list[Trace], logs: list[Trace], run: Path,
              real_only=None, progress: bool = True, jobs: int = DEFAULT_JOBS) -> None:
    """The recipe's last step, for `astra demo` and `astra adapt` alike: `members` models
    fine-tuned from `cfg.init` on `logs` with `replay` beside them (and, with `real_only`, as
    many trained on the logs alone), into `run`."""
    from astra_cli.cv_command import member_specs
    from astra_jax.ensembles import train_members
    from astra_jax.features import featurise, make_embedder

    feats = featurise(replay + logs, make_embedder(cfg.embedder), run / "feature_cache",
                      progress, cfg.dropped)
    train_members(member_specs(cfg, real_only, members, replay, feats[:len(replay)], logs,
                               feats[len(replay):]), [], [], run, progress, jobs=jobs)
