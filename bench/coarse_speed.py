"""Coarse-stage throughput: training traces/s batched vs one trace at a time, prediction
traces/s, compile count, peak memory, the fixed cost of one train step (what batching can save
once shapes have compiled), and the latency of attributing one 100-step trace.

    python bench/coarse_speed.py [--tasks 120] [--batch-size 16]

Model: the default ModelConfig (d_model 128, 4 heads, 2 spatial + 2 temporal layers, 4 experts).
Every figure is taken after a warm-up pass that compiles each batch size, so it measures steady
state; compile counts are reported separately.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from astra_cli.table import format_table  # noqa: E402
from astra_jax.batching import (exact_sizes, feature_dims, labels_of, pack_batch,  # noqa: E402
                                pack_shards, plan_batches, run_bucket, trace_sizes)
from astra_jax.configs import TrainConfig  # noqa: E402
from astra_jax.features import HashingEmbedder, featurise  # noqa: E402
from astra_jax.state import init_state  # noqa: E402
from astra_jax.train import COMPILES, make_steps  # noqa: E402
from data_gen.sim.generate import GenConfig, generate  # noqa: E402
from data_gen.trace import Step, Task, Trace  # noqa: E402


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_rate(feats, labels, batch_size: int, exact: bool = False
               ) -> tuple[float, float, int]:
    """Training traces/s over the first pass (compilation included) and over a second pass
    (steady state), and the compilations it took. Batches are planned as training plans them
    (`plan_batches` at the run's one size); `exact` packs each batch of `batch_size` to its own
    exact size instead: what a loop without a planned size compiles."""
    cfg = TrainConfig(batch_size=batch_size)
    before = COMPILES["train"]
    _, train_step, _ = make_steps(cfg, 100)
    dims = feature_dims(feats[0])
    if exact:
        chunks = [list(range(i, min(i + batch_size, len(feats))))
                  for i in range(0, len(feats), batch_size)]
    else:
        each = trace_sizes(feats)
        sizes = run_bucket(each, batch_size)
        chunks = plan_batches(each, np.arange(len(feats)), batch_size, sizes)
    packed = []
    for ix in chunks:
        f, lab = [feats[j] for j in ix], [labels[j] for j in ix]
        packed.append(pack_shards([f], [lab], batch_size, 1, exact_sizes(f) if exact else sizes,
                                  dims))
    state = jax.device_put(init_state(cfg, pack_batch(feats[:batch_size], labels[:batch_size],
                                                      batch_size)))
    rates = []
    for _ in range(2):
        t0 = time.perf_counter()
        for b in packed:
            state, m = train_step(state, b)
        jax.block_until_ready(m)
        rates.append(len(feats) / (time.perf_counter() - t0))
    return rates[0], rates[1], COMPILES["train"] - before


def step_floor_ms(dims: tuple[int, int], repeats: int = 20) -> float:
    """Median time of one train step on a batch of 8 padding nodes and edges: the fixed cost of
    a step (dispatch, the optimizer update), which is all that packing traces into one step can
    save once every shape has compiled; compute per node and edge is the same either way."""
    cfg = TrainConfig(batch_size=1)
    _, train_step, _ = make_steps(cfg, 100)
    empty = pack_batch([], [], 1, (8, 8, 8), dims)
    state = jax.device_put(init_state(cfg, empty))
    b = jax.tree_util.tree_map(lambda x: x[None], empty)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        state, m = train_step(state, b)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times[1:])


def long_trace(n_steps: int, source: list[Trace]) -> Trace:
    pool = [s for t in source for s in t.steps]
    agents = sorted({s.agent for s in pool})[:4]
    steps = tuple(Step(i, agents[i % len(agents)], pool[i % len(pool)].content)
                  for i in range(n_steps))
    return Trace(f"long-{n_steps}", Task("a long run"), steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--exact-traces", type=int, default=24,
                    help="traces for the exact-shape variant (it compiles once per trace)")
    args = ap.parse_args()
    traces = [t for r in generate(GenConfig(n_tasks=args.tasks, seed=0, workers=1))
              for t in r.traces]
    emb = HashingEmbedder()
    feats = featurise(traces, emb)
    labels = [labels_of(t) for t in traces]
    steps = [len(t.steps) for t in traces]
    print(f"{len(traces)} simulated traces, {np.mean(steps):.1f} steps on average "
          f"(max {max(steps)}); devices: {jax.devices()}", file=sys.stderr)

    rows = []
    first_batched, batched, c = train_rate(feats, labels, args.batch_size)
    rows.append((f"train, batches of {args.batch_size}, one size per run", len(feats),
                 first_batched, batched, c, peak_mib()))
    first_single, single, c = train_rate(feats, labels, 1)
    rows.append(("train, one trace at a time, one size per run", len(feats), first_single,
                 single, c, peak_mib()))
    few = feats[:args.exact_traces]
    first_exact, single_exact, c = train_rate(few, labels[:len(few)], 1, exact=True)
    rows.append(("train, one trace at a time, exact shapes", len(few), first_exact, single_exact,
                 c, peak_mib()))
    cfg = TrainConfig(batch_size=args.batch_size)
    sample = pack_batch(feats[:args.batch_size], labels[:args.batch_size], args.batch_size)
    params = init_state(cfg, sample).params
    _, _, eval_step = make_steps(cfg, 2)
    before = COMPILES["eval"]
    packed = [pack_batch(feats[i:i + args.batch_size], labels[i:i + args.batch_size],
                         args.batch_size) for i in range(0, len(feats), args.batch_size)]
    for b in packed:
        jax.block_until_ready(eval_step(params, b)[1])
    t0 = time.perf_counter()
    for b in packed:
        jax.block_until_ready(eval_step(params, b)[1])
    rows.append((f"predict, batches of {args.batch_size}, bucketed", len(feats), "-",
                 len(feats) / (time.perf_counter() - t0), COMPILES["eval"] - before, peak_mib()))

    lt = long_trace(100, traces)
    one_cfg = TrainConfig(batch_size=1)
    _, _, one_step = make_steps(one_cfg, 2)
    lat_model, lat_full = [], []
    for i in range(25):
        t0 = time.perf_counter()
        f = featurise([lt], emb)
        b = pack_batch(f, [labels_of(lt)], 1)
        t1 = time.perf_counter()
        jax.block_until_ready(one_step(params, b)[1])
        t2 = time.perf_counter()
        if i >= 5:  # after warm-up
            lat_model.append(t2 - t1)
            lat_full.append(t2 - t0)
    print(format_table(("workload", "traces", "first pass traces/s (incl. compiling)",
                        "steady traces/s", "compiles", "peak RSS MiB"), rows))
    print(f"\nbatched training over one trace at a time: {batched / single:.1f}x steady "
          f"(one size per run), {batched / single_exact:.1f}x steady (exact shapes), "
          f"{first_batched / first_exact:.1f}x over a first pass with exact shapes")
    floor = step_floor_ms(feature_dims(feats[0]))
    per_trace = 1e3 / batched
    print(f"fixed cost of a train step (8 padding nodes): {floor:.1f} ms; batched time per "
          f"trace: {per_trace:.1f} ms; so if per-trace compute were as cheap as in the batch, one "
          f"step per trace would cost {(floor + per_trace) / per_trace:.2f}x the batched time")
    print(format_table(
        ("100-step trace, after warm-up", "median ms", "max ms"),
        [("model only (packed batch in, scores out)", 1e3 * statistics.median(lat_model),
          1e3 * max(lat_model)),
         ("end to end (features + packing + model)", 1e3 * statistics.median(lat_full),
          1e3 * max(lat_full))]))


if __name__ == "__main__":
    main()
