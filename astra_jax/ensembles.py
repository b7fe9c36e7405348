"""Several trainings: an ensemble's members (differing in seed, or in settings and data), trained
one after another or a few at once in threads."""
from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax

from astra_jax import RunDirError
from astra_jax.checkpoints import init_members
from astra_jax.configs import TrainConfig, same_parameters
from astra_jax.features import Featurised
from astra_jax.train import train
from data_gen.trace import Trace


@dataclass(frozen=True)
class MemberSpec:
    """One ensemble member: how it trains and on what."""
    cfg: TrainConfig
    traces: list[Trace]
    feats: list[Featurised]


def ensemble_specs(cfg: TrainConfig, members: int, traces: list[Trace],
                   feats: list[Featurised]) -> list[MemberSpec]:
    """`members` models that differ only in their seed (cfg.seed, cfg.seed + 1, ...). With
    `cfg.init` naming an ensemble or a model file, member i starts from its member i
    (cyclically)."""
    if members < 1:
        raise ValueError(f"members must be at least 1, not {members}")
    inits = init_members(cfg.init) if cfg.init else [""]
    return [MemberSpec(dataclasses.replace(cfg, seed=cfg.seed + i, init=inits[i % len(inits)]),
                       traces, feats) for i in range(members)]


def train_ensemble(cfg: TrainConfig, members: int, train_traces: list[Trace],
                   train_feats: list[Featurised], val_traces: list[Trace],
                   val_feats: list[Featurised], out_dir: Path, progress: bool = True,
                   jobs: int = 1) -> list[dict[str, Any]]:
    """`members` models that differ only in their seed, `jobs` of them trained at once;
    prediction averages their probabilities. On simulated data the members agree; on real logs
    each seed learns different accidents of the simulator, and their average is steadier than
    any one (docs/coarse_stage.md)."""
    specs = ensemble_specs(cfg, members, train_traces, train_feats)
    return train_members(specs, val_traces, val_feats, out_dir, progress, jobs=jobs)


def concurrent_trainings(jobs: int) -> int:
    """How many trainings may run at once in this process: `jobs` on one device; one when each
    spans several devices or processes, whose collectives must run in one order everywhere."""
    return max(1, jobs) if jax.device_count() == 1 else 1


def concurrently(fn: Callable[[int], Any], n: int, jobs: int) -> list[Any]:
    """`[fn(i) for i in range(n)]`, up to `concurrent_trainings(jobs)` calls at a time in
    threads. On an error or Ctrl-C the calls not yet started are dropped, and the ones running
    finish before it is raised."""
    workers = min(concurrent_trainings(jobs), n)
    if workers <= 1:
        return [fn(i) for i in range(n)]
    pool = ThreadPoolExecutor(workers)
    futures = [pool.submit(fn, i) for i in range(n)]
    try:
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def train_members(specs: list[MemberSpec], val_traces: list[Trace], val_feats: list[Featurised],
                  out_dir: Path, progress: bool = True, label: str = "", jobs: int = 1
                  ) -> list[dict[str, Any]]:
    """One model per spec, their probabilities averaged at prediction. Members may differ in
    training settings and data (a model fine-tuned from the simulated one beside one trained
    on real logs alone), not in architecture, embedder or evidence. One member trains in
    `out_dir` itself, several in `member-N`, `jobs` of them at once (threads sharing the
    compiled programs; each member's result does not depend on it)."""
    single, ensemble = (out_dir / "config.json").exists(), any(out_dir.glob("member-*"))
    if (len(specs) == 1 and ensemble) or (len(specs) > 1 and single):
        raise RunDirError(f"{out_dir} holds {'an ensemble' if ensemble else 'a single model'}; "
                          f"train into a new directory, or remove this one")
    if not all(same_parameters(s.cfg, specs[0].cfg) for s in specs):
        raise ValueError("ensemble members must share their model, embedder and evidence")
    if len(specs) == 1:
        s = specs[0]
        return [train(s.cfg, s.traces, s.feats, val_traces, val_feats, out_dir, progress, label)]
    jobs = concurrent_trainings(jobs)

    def member(i: int) -> dict[str, Any]:
        s = specs[i]
        if progress:
            print(f"{label}member {i + 1}/{len(specs)} (seed {s.cfg.seed}, {len(s.traces)} traces"
                  f"{', from ' + s.cfg.init if s.cfg.init else ''})", file=sys.stderr)
        return train(s.cfg, s.traces, s.feats, val_traces, val_feats, out_dir / f"member-{i + 1}",
                     progress, f"{label}member {i + 1} " if jobs > 1 else label)

    return concurrently(member, len(specs), jobs)
