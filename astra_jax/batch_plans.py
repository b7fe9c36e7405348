"""Which traces go into which batch: every epoch's global batches planned before a run starts (one
size for the whole run, so one compiled train program), real logs repeated to their share of
an epoch, the order a function of (seed, epoch) only, and evaluation's batches in order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from astra_jax.batching import (Batch, Sizes, is_real, pack_batch, plan_batches, run_bucket,
                                trace_sizes)
from astra_jax.configs import TrainConfig
from astra_jax.features import Featurised
from data_gen.trace import Trace


@dataclass(frozen=True)
class BatchPlan:
    """Every epoch's global batches, each a list of `shards` sub-batches of trace indices (the
    last may have fewer), all of one size: a run compiles one train program, and the learning
    rate schedule knows the run's length before it starts."""
    sizes: Sizes
    per_shard: int
    epochs: list[list[list[list[int]]]]

    @property
    def total_steps(self) -> int:
        return sum(len(e) for e in self.epochs)


def plan_run(items: list[Featurised], traces: list[Trace], cfg: TrainConfig, shards: int
             ) -> BatchPlan:
    """Each epoch's order (`epoch_order`) cut into sub-batches of at most batch_size / shards
    traces that fit the run's one size, `shards` of them to a global batch."""
    if cfg.batch_size % shards:
        raise ValueError(f"batch size {cfg.batch_size} is not divisible by {shards} shards")
    per = cfg.batch_size // shards
    each = trace_sizes(items)
    sizes = run_bucket(each, per)
    epochs = []
    for epoch in range(cfg.epochs):
        parts = plan_batches(each, epoch_order(traces, cfg, epoch), per, sizes)
        epochs.append([parts[i:i + shards] for i in range(0, len(parts), shards)])
    return BatchPlan(sizes, per, epochs)


def real_repeats(traces: list[Trace], real_weight: float) -> int:
    """How many times each real log appears in an epoch so that real logs make up about
    `real_weight` of the epoch's traces (each at least once; 1 when only one kind is given)."""
    n_real = sum(is_real(t) for t in traces)
    n_sim = len(traces) - n_real
    if not n_real or not n_sim:
        return 1
    return max(1, round(real_weight / (1 - real_weight) * n_sim / n_real))


def epoch_order(traces: list[Trace], cfg: TrainConfig, epoch: int) -> np.ndarray:
    """The epoch's trace indices, real logs repeated (`real_repeats`), shuffled by (seed, epoch)
    only, so a resumed run continues the same curve."""
    r = real_repeats(traces, cfg.real_weight)
    ix = [i for i, t in enumerate(traces) for _ in range(r if is_real(t) else 1)]
    return np.random.default_rng([cfg.seed, epoch]).permutation(np.array(ix, dtype=np.int64))


def eval_batches(items: list[Featurised], labels: list, batch_size: int
                 ) -> Iterator[tuple[Batch, list[int]]]:
    """`items` in order, in batches of one size (`run_bucket`): evaluation runs the same set
    every epoch, so one compiled program serves the run."""
    each = trace_sizes(items)
    sizes = run_bucket(each, batch_size)
    for ix in plan_batches(each, np.arange(len(items)), batch_size, sizes):
        yield pack_batch([items[j] for j in ix], [labels[j] for j in ix], batch_size, sizes), ix
