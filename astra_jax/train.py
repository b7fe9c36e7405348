"""The jitted train and eval steps and the training loop.

The loop is the only place with side effects: it shuffles with a seeded generator, packs batches,
calls the jitted steps, writes `metrics.jsonl` and checkpoints (latest and best) with orbax. A run
that is stopped resumes from its last checkpoint and continues the same curve, because the data
order of each epoch is a function of (seed, epoch) only.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import optax
import orbax.checkpoint as ocp
from tqdm import tqdm

from astra_jax.batch_plans import plan_run
from astra_jax.batching import Batch, labels_of, pack_batch
from astra_jax.checkpoints import checkpoint_manager, init_params, packed_state, restore_state
from astra_jax.compilation import (PROGRAM_SOURCES, CompileStats, StoredJit, compile_stats,
                                   shared_programs, source_digest, track_compiles)
from astra_jax.configs import LOSS_SETTINGS, OPTIMISER_SETTINGS, TrainConfig, program_settings
from astra_jax.evaluation import evaluate
from astra_jax.features import Featurised
from astra_jax.losses import loss_terms, losses, predictions, reduce_terms, total_loss
from astra_jax.run_dirs import best_record, is_better, keep_log_until
from astra_jax.sharding import data_mesh, replicated, resolve_shards, sharded_batches
from astra_jax.state import State, init_state, learning_rate, model_and_tx, schedule_args
from data_gen.trace import Trace


# without validation data the last epoch is the one kept, so a checkpoint only has to bound the
# work a crash loses: one every SAVE_EVERY_S seconds and one at the end, instead of one an epoch
# (a second each, as long as a short fine-tuning epoch). With validation data every epoch is
# saved, since any may be the best.
SAVE_EVERY_S = 30.0
COMPILES = {"train": 0, "eval": 0}  # traces of the steps, incremented at trace time


def make_steps(cfg: TrainConfig, total_steps: int):
    """The compiled train and eval steps. Their programs depend only on the model, the loss
    weights, clipping and weight decay: the learning-rate schedule enters the train step as an
    argument, so runs that differ in seed, starting point, length or learning rate (ensemble
    members, folds, the final model, pre-training) share them and their compiled code."""
    model, train_step, eval_step = _make_steps(program_settings(cfg))
    schedule = schedule_args(cfg, total_steps)
    return model, lambda state, b: train_step(state, b, schedule), eval_step


def _program_key(cfg: TrainConfig) -> str:
    return f"{cfg!r} {source_digest(*PROGRAM_SOURCES)}"


@shared_programs(maxsize=4)
def _make_steps(cfg: TrainConfig):
    """A train step in two programs: the gradients, compiled once per batch shape, and the
    optimiser's update, compiled once per model (its arguments are the parameters' shapes,
    whatever the batch). Fused, each batch shape compiled the update again: a third of a train
    step's compile on a CPU (docs/coarse_stage.md)."""
    model, tx = model_and_tx(cfg.model, cfg.clip_norm, cfg.weight_decay)

    def grad_step(params, rng: jax.Array, b: Batch):
        """`b` is a stack of shards (leading axis); under a data mesh each device runs its own."""
        COMPILES["train"] += 1
        n_shards = b.graph_mask.shape[0]
        _, drop, route = jax.random.split(rng, 3)
        drop, route = jax.random.split(drop, n_shards), jax.random.split(route, n_shards)

        def shard_terms(params, bs, d, r):
            out = model.apply({"params": params}, bs, deterministic=False,
                              rngs={"dropout": d, "router": r})
            return loss_terms(out, bs)

        def loss_fn(params):
            terms = jax.vmap(shard_terms, (None, 0, 0, 0))(params, b, drop, route)
            parts = reduce_terms(terms)
            return total_loss(parts, cfg), parts

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, dict(parts, loss=loss)

    def update_step(state: State, grads, schedule: jax.Array):
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        rate = learning_rate(schedule, state.step)  # the step count is the optimiser's
        updates = jax.tree.map(lambda u: u * rate, updates)
        state = State(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      opt_state=opt_state, rng=jax.random.split(state.rng, 3)[0])
        return state, optax.tree.norm(grads)

    def eval_step(params, b: Batch):
        COMPILES["eval"] += 1
        out = model.apply({"params": params}, b, deterministic=True)
        parts = losses(out, b)
        return dict(parts, loss=total_loss(parts, cfg)), predictions(out, b), out

    # the gradients and evaluation never read the optimiser's settings, nor the update the loss
    # weights: runs that differ only in those share these programs
    grads = StoredJit(grad_step, f"grad {_program_key(program_settings(cfg, OPTIMISER_SETTINGS))}")
    update = StoredJit(update_step, f"update {_program_key(program_settings(cfg, LOSS_SETTINGS))}",
                       donate_argnums=0)

    def train_step(state: State, b: Batch, schedule: jax.Array):
        g, metrics = grads(state.params, state.rng, b)
        state, norm = update(state, g, schedule)
        return state, dict(metrics, grad_norm=norm)

    return model, train_step, StoredJit(
        eval_step, f"eval {_program_key(program_settings(cfg, OPTIMISER_SETTINGS))}")


def train(cfg: TrainConfig, train_traces: list[Trace], train_feats: list[Featurised],
          val_traces: list[Trace], val_feats: list[Featurised], out_dir: Path,
          progress: bool = True, label: str = "") -> dict[str, Any]:
    """Train one model into `out_dir`, resuming from its last checkpoint. `label` prefixes its
    progress lines, so that runs trained at once (cross-validation's folds) can be told apart."""
    track_compiles()
    compiled_before = compile_stats()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    (out_dir / "data.json").write_text(json.dumps({  # what this model learnt from, by trace id
        "train": [t.trace_id for t in train_traces], "val": [t.trace_id for t in val_traces]}))
    tr_labels = [labels_of(t) for t in train_traces]
    va_labels = [labels_of(t) for t in val_traces]
    sample = pack_batch(train_feats[:cfg.batch_size], tr_labels[:cfg.batch_size], cfg.batch_size)
    mesh = data_mesh()
    shards = resolve_shards(cfg, mesh)
    plan = plan_run(train_feats, train_traces, cfg, shards)
    total_steps = plan.total_steps
    state = init_state(cfg, sample)
    if cfg.init:
        state = state.replace(params=init_params(cfg.init, cfg, sample))
    _, train_step, eval_step = make_steps(cfg, total_steps)
    mngr = checkpoint_manager(out_dir)
    start_epoch = 0
    if mngr.latest_step() is not None:
        start_epoch = int(mngr.latest_step())
        state = restore_state(mngr, start_epoch, state)
        print(f"{label}resuming from epoch {start_epoch}", file=sys.stderr)
        keep_log_until(out_dir / "metrics.jsonl", start_epoch)
    state = replicated(state, mesh)
    lead = jax.process_index() == 0  # one process of a multi-host run writes the log
    best = best_record(out_dir / "metrics.jsonl") if start_epoch else {}
    log = (out_dir / "metrics.jsonl").open("a") if lead else open(os.devnull, "w")
    last_save = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        sums: dict[str, float] = {}
        t0 = time.perf_counter()
        steps_per_epoch = len(plan.epochs[epoch])
        bar = tqdm(sharded_batches(train_feats, tr_labels, plan, epoch, mesh, shards),
                   total=steps_per_epoch, desc=f"{label}epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, file=sys.stderr)
        steps = []
        for b in bar:  # packing the next batch overlaps this step: nothing waits for it here
            state, m = train_step(state, b)
            steps.append(m)
            if len(steps) > 1:  # the previous step is done before this one starts
                bar.set_postfix(loss=f"{float(steps[-2]['loss']):.3f}")
        for m in jax.device_get(steps):
            if not math.isfinite(m["loss"]):
                log.close()
                raise FloatingPointError(
                    f"loss became {m['loss']} in epoch {epoch + 1}; the last good checkpoint "
                    f"is epoch {mngr.latest_step()} under {out_dir / 'checkpoints'}")
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        train_m = {k: v / steps_per_epoch for k, v in sums.items()}
        val_m = evaluate(state.params, eval_step, val_feats, va_labels, cfg, mesh)
        rec = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0,
               **{f"train_{k}": v for k, v in train_m.items()},
               **{f"val_{k}": v for k, v in val_m.items()}, "compiles": dict(COMPILES),
               **xla_record(compile_stats().since(compiled_before)),
               "devices": mesh.size, "shards": shards}
        log.write(json.dumps(rec) + "\n")
        log.flush()
        now = time.perf_counter()
        if val_feats or epoch + 1 == cfg.epochs or now - last_save >= SAVE_EVERY_S:
            mngr.save(epoch + 1, args=ocp.args.StandardSave(packed_state(state)),
                      metrics={"val_step_acc": val_m["step_acc"], "epoch": epoch + 1})
            mngr.wait_until_finished()
            last_save = now
        if is_better(rec, best):
            best = rec
        if progress and lead:
            print(label + epoch_line(epoch + 1, train_m, val_m if val_feats else None),
                  file=sys.stderr)
    log.close()
    mngr.close()
    return {"state": state, "best": best}


def epoch_line(epoch: int, train_m: dict[str, float], val_m: dict[str, float] | None) -> str:
    """An epoch's progress line; a run without validation data shows no validation scores."""
    line = f"epoch {epoch}: loss {train_m['loss']:.3f}"
    if val_m is None:
        return line
    return (f"{line}  val agent {val_m['agent_acc']:.3f}  step {val_m['step_acc']:.3f}  "
            f"top3 {val_m['agent_top3']:.3f}  ece {val_m['ece']:.3f}")


def xla_record(stats: CompileStats) -> dict[str, float]:
    """What a run compiled so far, for `metrics.jsonl`: XLA programs compiled and loaded from
    the persistent cache, and the seconds spent on both (tracing and lowering included)."""
    return {"xla_compiled": stats.compiled, "xla_cache_hits": stats.cache_hits,
            "compile_seconds": round(stats.seconds, 3)}
