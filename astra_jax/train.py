"""Losses, jitted train/eval steps, and the training loop with orbax checkpoints.

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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import serialization, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from astra_jax import RunDirError
from astra_jax.batching import (SMALLEST_BUCKET, Batch, Sizes, feature_dims, is_real, labels_of,
                                pack_batch, pack_shards, plan_batches, run_bucket,
                                trace_sizes)
from astra_jax.compilation import (CompileStats, StoredJit, compile_stats, shared_programs,
                                   source_digest, track_compiles)
from astra_jax.features import Featurised
from astra_jax.initialise import host_params
from astra_jax.model import (AstraMoE, ModelConfig, Outputs, architecture,
                             segment_log_softmax)
from data_gen.trace import Trace


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = ModelConfig()
    epochs: int = 8
    batch_size: int = 16
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    seed: int = 0
    w_step: float = 1.0
    w_agent: float = 1.0
    w_mode: float = 0.3
    w_fail: float = 0.3
    w_balance: float = 0.01
    w_evidence: float = 0.01
    embedder: str = "hashing"
    shards: int = 0  # data-parallel sub-batches per global batch; 0: one per device
    real_weight: float = 0.5  # share of each epoch's traces that are real logs, when mixed
    drop_evidence: str = ""  # comma-separated evidence groups left out (ablations)
    init: str = ""  # a trained run to start from (fine-tuning); its model config must match

    def __post_init__(self) -> None:
        # a share of 0 or 1 would silently mean "no mixing": say so at the boundary instead
        if not 0 < self.real_weight < 1:
            raise ValueError(f"real_weight is the real logs' share of an epoch, strictly between "
                             f"0 and 1, not {self.real_weight}")

    @property
    def dropped(self) -> tuple[str, ...]:
        return tuple(g.strip() for g in self.drop_evidence.split(",") if g.strip())


@struct.dataclass
class State:
    """What training carries from step to step. The optimiser itself is not in it (the steps
    close over it), so the state's structure pickles and its compiled steps can be stored."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


# without validation data the last epoch is the one kept, so a checkpoint only has to bound the
# work a crash loses: one every SAVE_EVERY_S seconds and one at the end, instead of one an epoch
# (a second each, as long as a short fine-tuning epoch). With validation data every epoch is
# saved, since any may be the best.
SAVE_EVERY_S = 30.0
COMPILES = {"train": 0, "eval": 0}  # traces of the steps, incremented at trace time


def loss_terms(out: Outputs, b: Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Each loss as (sum, count), so that shards of a data-parallel batch add up to exactly the
    loss of the whole batch."""
    G = b.graph_mask.shape[0]
    lm = b.label_mask
    step_lp = segment_log_softmax(out.step_logit, b.node_graph, G)
    agent_lp = segment_log_softmax(out.agent_logit, b.agent_graph, G)
    mode_ce = optax.softmax_cross_entropy_with_integer_labels(out.mode_logit, b.mode)
    fail_bce = optax.sigmoid_binary_cross_entropy(out.fail_logit, b.failed)
    labelled_node = lm[b.node_graph] * b.step_mask
    wrong = labelled_node.at[b.target_node].multiply(1.0 - lm)
    return {"step_ce": (-(step_lp[b.target_node] * lm).sum(), lm.sum()),
            "agent_ce": (-(agent_lp[b.target_agent] * lm).sum(), lm.sum()),
            "mode_ce": ((mode_ce * b.mode_mask).sum(), b.mode_mask.sum()),
            "fail_bce": ((fail_bce * b.graph_mask).sum(), b.graph_mask.sum()),
            "balance": (out.balance_loss, jnp.ones(())),
            "evidence": ((out.evidence * wrong).sum(), wrong.sum())}


def reduce_terms(terms: dict[str, tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
    return {k: num.sum() / jnp.maximum(den.sum(), 1.0) for k, (num, den) in terms.items()}


def losses(out: Outputs, b: Batch) -> dict[str, jax.Array]:
    return reduce_terms(loss_terms(out, b))


def total_loss(parts: dict[str, jax.Array], cfg: TrainConfig) -> jax.Array:
    return (cfg.w_step * parts["step_ce"] + cfg.w_agent * parts["agent_ce"]
            + cfg.w_mode * parts["mode_ce"] + cfg.w_fail * parts["fail_bce"]
            + cfg.w_balance * parts["balance"] + cfg.w_evidence * parts["evidence"])


def predictions(out: Outputs, b: Batch) -> dict[str, jax.Array]:
    """Per graph: predicted step node, agent, their probabilities, uncertainty."""
    G = b.graph_mask.shape[0]
    step_p = jnp.exp(segment_log_softmax(out.step_logit, b.node_graph, G))
    agent_p = jnp.exp(segment_log_softmax(out.agent_logit, b.agent_graph, G))
    idx_n = jnp.arange(step_p.shape[0])
    best_node = jax.ops.segment_max(jnp.where(b.step_mask > 0, out.step_logit, -1e9), b.node_graph,
                                    G)
    is_best = (out.step_logit == best_node[b.node_graph]) & (b.step_mask > 0)
    pred_node = jax.ops.segment_min(jnp.where(is_best, idx_n, 1 << 30), b.node_graph, G)
    best_agent = jax.ops.segment_max(out.agent_logit, b.agent_graph, G)
    idx_a = jnp.arange(agent_p.shape[0])
    pred_agent = jax.ops.segment_min(
        jnp.where(out.agent_logit == best_agent[b.agent_graph], idx_a, 1 << 30), b.agent_graph, G)
    alpha_sum = jax.ops.segment_sum(out.evidence + b.step_mask, b.node_graph, G)
    n_steps = jax.ops.segment_sum(b.step_mask, b.node_graph, G)
    return {"pred_node": pred_node, "pred_agent": pred_agent, "step_p": step_p,
            "agent_p": agent_p, "fail_p": jax.nn.sigmoid(out.fail_logit),
            "uncertainty": n_steps / jnp.maximum(alpha_sum, 1.0)}


# the code a stored train or eval program runs: a change to any of it compiles afresh
PROGRAM_SOURCES = ("astra_jax.train", "astra_jax.model", "astra_jax.batching", "data_gen.dhcg",
                   "data_gen.trace")


def make_steps(cfg: TrainConfig, total_steps: int):
    """The compiled train and eval steps. Their programs depend only on the model, the loss
    weights, clipping and weight decay: the learning-rate schedule enters the train step as an
    argument, so runs that differ in seed, starting point, length or learning rate (ensemble
    members, folds, the final model, pre-training) share them and their compiled code."""
    model, train_step, eval_step = _make_steps(program_settings(cfg))
    schedule = schedule_args(cfg, total_steps)
    return model, lambda state, b: train_step(state, b, schedule), eval_step


# settings that never enter the compiled steps: they act on the host, through the shapes, or
# through the schedule's arguments
HOST_SETTINGS = ("seed", "init", "epochs", "real_weight", "embedder", "drop_evidence",
                 "batch_size", "shards", "lr", "warmup_steps")
OPTIMISER_SETTINGS = ("weight_decay", "clip_norm")  # the update only
LOSS_SETTINGS = ("w_step", "w_agent", "w_mode", "w_fail", "w_balance", "w_evidence")


def program_settings(cfg: TrainConfig, ignored: tuple[str, ...] = HOST_SETTINGS) -> TrainConfig:
    """`cfg` with the `ignored` settings at their defaults, so that runs differing only in
    them share their programs."""
    d = TrainConfig()
    return dataclasses.replace(cfg, **{f: getattr(d, f) for f in ignored})


def schedule_args(cfg: TrainConfig, total_steps: int) -> np.ndarray:
    """The learning-rate schedule of a run of `total_steps` as the train step's argument: peak
    rate, warm-up steps (at most half the run), cosine decay steps after it, and the decay's
    floor as a fraction of the peak (one twentieth) and one minus it."""
    warmup = min(cfg.warmup_steps, total_steps // 2)
    # end over peak and one minus that in double precision, as optax computes them: not
    # exactly 0.05 and 0.95 once rounded to float32, and the rate must be optax's to the bit
    alpha = cfg.lr * 0.05 / cfg.lr if cfg.lr else 0.0
    return np.array([cfg.lr, warmup, max(total_steps, 2) - warmup, alpha, 1 - alpha], np.float32)


def learning_rate(schedule: jax.Array, count: jax.Array) -> jax.Array:
    """`optax.warmup_cosine_decay_schedule(0, lr, warmup, total, end_value=lr / 20)` at `count`,
    its settings read from `schedule` (`schedule_args`) rather than compiled into the program.
    The same operations in the same order, divisions written as XLA compiles optax's divisions
    by constants (times the reciprocal), so the same rate to the bit and the same training."""
    lr, warmup, decay, alpha, rest = (schedule[i] for i in range(5))
    steps = warmup.astype(jnp.int32)
    frac = 1 - jnp.clip(count, 0, steps) * (1 / jnp.maximum(warmup, 1.0))
    warm = -lr * frac + lr
    t = jnp.minimum(count - steps, decay)
    cosine = lr * (rest * (0.5 * (1 + jnp.cos(jnp.pi * t * (1 / decay)))) ** 1.0 + alpha)
    return jnp.where(count < steps, warm, cosine)


def _program_key(cfg: TrainConfig) -> str:
    return f"{cfg!r} {source_digest(*PROGRAM_SOURCES)}"


@shared_programs(maxsize=4)
def _make_steps(cfg: TrainConfig):
    """A train step in two programs: the gradients, compiled once per batch shape, and the
    optimiser's update, compiled once per model (its arguments are the parameters' shapes,
    whatever the batch). Fused, each batch shape compiled the update again: a third of a train
    step's compile on a CPU (docs/coarse_stage.md)."""
    model, tx = _model_and_tx(cfg.model, cfg.clip_norm, cfg.weight_decay)

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


@lru_cache(maxsize=8)
def _model_and_tx(model_cfg: ModelConfig, clip_norm: float, weight_decay: float):
    """One model and optimiser object per setting. The optimiser is AdamW at a unit rate (a
    schedule of ones, so its state counts steps as a scheduled one does); the train step scales
    its updates by `learning_rate`."""
    tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(lambda count: 1.0, weight_decay=weight_decay))
    return AstraMoE(model_cfg), tx


def _abstract_init(cfg: TrainConfig, sample: Batch):
    """The initial state's function and its arguments. Parameters depend on the feature widths
    only, so it gets the smallest bucket."""
    model, tx = _model_and_tx(cfg.model, 1.0, 1.0)  # nominal: the initial state ignores them
    dims = sample.graph.nodes["text"].shape[-1], sample.graph.nodes["meta"].shape[-1]

    def init(seed: jax.Array, sample: Batch) -> State:
        rng = jax.random.PRNGKey(seed)
        params = model.init({"params": rng, "dropout": rng, "router": rng}, sample)["params"]
        return State(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     rng=jax.random.PRNGKey(seed + 1))

    return init, np.int32(cfg.seed), pack_batch([], [], 1, SMALLEST_BUCKET, dims)


def abstract_state(cfg: TrainConfig, sample: Batch) -> State:
    """The train state's structure, shapes and dtypes, computing nothing: a restore target."""
    init, seed, empty = _abstract_init(cfg, sample)
    return jax.eval_shape(init, seed, empty)


def init_state(cfg: TrainConfig, sample: Batch) -> State:
    """The train state at step 0, built on the host: parameters drawn by Flax's initialisers'
    rules with NumPy (`astra_jax.initialise`), the optimiser's moments and counts at zero.
    Compiling `model.init` instead would cost seconds of XLA per model (docs/coarse_stage.md)."""
    shapes = abstract_state(cfg, sample)
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes.opt_state)
    return State(step=np.zeros((), np.int32), params=host_params(shapes.params, cfg.seed),
                 opt_state=zeros, rng=np.asarray(jax.random.PRNGKey(cfg.seed + 1)))


def eval_batches(items: list[Featurised], labels: list, batch_size: int
                 ) -> Iterator[tuple[Batch, list[int]]]:
    """`items` in order, in batches of one size (`run_bucket`): evaluation runs the same set
    every epoch, so one compiled program serves the run."""
    each = trace_sizes(items)
    sizes = run_bucket(each, batch_size)
    for ix in plan_batches(each, np.arange(len(items)), batch_size, sizes):
        yield pack_batch([items[j] for j in ix], [labels[j] for j in ix], batch_size, sizes), ix


def data_mesh() -> Mesh:
    """One mesh axis, "data", over every device of every process."""
    return Mesh(np.array(jax.devices()), ("data",))


def resolve_shards(cfg: TrainConfig, mesh: Mesh) -> int:
    shards = cfg.shards or mesh.size
    if shards % mesh.size or shards % jax.process_count():
        raise ValueError(f"{shards} shards cannot be split over {mesh.size} devices in "
                         f"{jax.process_count()} processes; use a multiple of {mesh.size}")
    return shards


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


def sharded_batches(items: list[Featurised], labels: list, plan: BatchPlan, epoch: int,
                    mesh: Mesh, shards: int) -> Iterator[Batch]:
    """An epoch's global batches laid out over the mesh: each process packs only its own
    shards and `make_array_from_process_local_data` assembles the global array (one process:
    all)."""
    per_proc = shards // jax.process_count()
    local = range(jax.process_index() * per_proc, (jax.process_index() + 1) * per_proc)
    dims = feature_dims(items[0])
    spec = NamedSharding(mesh, P("data"))
    for parts in plan.epochs[epoch]:
        b = pack_shards([[items[j] for j in ix] for ix in parts],
                        [[labels[j] for j in ix] for ix in parts], plan.per_shard, shards,
                        plan.sizes, dims, local)
        yield jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(spec, x), b)


def replicated(tree, mesh: Mesh):
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(NamedSharding(mesh, P()), np.asarray(x)),
        tree)


def evaluate(params, eval_step, items, labels, cfg: TrainConfig, mesh: Mesh | None = None
             ) -> dict[str, float]:
    """Strict agent and step accuracy, top-3 agent recall and ECE over labelled failed traces."""
    hits_a = hits_s = top3 = n = 0
    conf, correct = [], []
    loss_sum = 0.0
    nb = 0
    for b, ix in eval_batches(items, labels, cfg.batch_size):
        metrics, pred, _ = eval_step(params, replicated(b, mesh) if mesh else b)
        loss_sum, nb = loss_sum + float(metrics["loss"]), nb + 1
        pred = jax.tree_util.tree_map(np.asarray, pred)
        for gi, j in enumerate(ix):
            if b.label_mask[gi] == 0:
                continue
            n += 1
            ok_s = pred["pred_node"][gi] == b.target_node[gi]
            ok_a = pred["pred_agent"][gi] == b.target_agent[gi]
            hits_s, hits_a = hits_s + ok_s, hits_a + ok_a
            mine = np.where(b.agent_graph == gi)[0]
            ranked = mine[np.argsort(-pred["agent_p"][mine], kind="stable")][:3]
            top3 += b.target_agent[gi] in ranked
            conf.append(float(pred["step_p"][pred["pred_node"][gi]]))
            correct.append(float(ok_s))
    return {"loss": loss_sum / max(nb, 1), "n": n, "agent_acc": hits_a / max(n, 1),
            "step_acc": hits_s / max(n, 1), "agent_top3": top3 / max(n, 1),
            "ece": expected_calibration_error(np.array(conf), np.array(correct))}


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    if len(conf) == 0:
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)


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


def checkpoint_manager(out_dir: Path) -> ocp.CheckpointManager:
    """Ties (e.g. a run without validation data) go to the later epoch, as `is_better` says.
    Saving is synchronous: training waits for each save anyway, and orbax's asynchronous
    saves from two threads of one process (cross-validation's folds) wait on each other's
    signals until they time out."""
    opts = ocp.CheckpointManagerOptions(max_to_keep=2,
                                        best_fn=lambda m: m["val_step_acc"] + 1e-6 * m["epoch"],
                                        best_mode="max", keep_checkpoints_without_metrics=False,
                                        create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(out_dir.resolve() / "checkpoints", options=opts,
                                 item_handlers=ocp.StandardCheckpointHandler())


def packed_state(state: State) -> dict[str, np.ndarray]:
    """The train state as one vector per dtype (its leaves raveled in tree order), what a
    checkpoint holds. Orbax writes every leaf through its own asynchronous machinery, ~2 ms a
    leaf: 0.7 s for the 340 leaves of the default model's state, 0.07 s for these three. The
    state is replicated, so each process packs its own copy."""
    groups: dict[str, list[np.ndarray]] = {}
    for x in jax.tree_util.tree_leaves(state):
        local = np.asarray(x.addressable_data(0) if isinstance(x, jax.Array) else x)
        groups.setdefault(local.dtype.name, []).append(local.ravel())
    return {k: np.concatenate(v) for k, v in groups.items()}


def packed_sizes(like: State) -> dict[str, int]:
    """How many values of each dtype `packed_state` of a state like `like` holds."""
    sizes: dict[str, int] = {}
    for x in jax.tree_util.tree_leaves(like):
        k = np.dtype(x.dtype).name
        sizes[k] = sizes.get(k, 0) + int(np.prod(x.shape))
    return sizes


def unpacked_state(packed: dict[str, np.ndarray], like: State) -> State:
    """`packed_state`'s inverse, into the structure, shapes and dtypes of `like`."""
    offsets = dict.fromkeys(packed, 0)
    leaves, treedef = jax.tree_util.tree_flatten(like)
    out = []
    for x in leaves:
        k, n = np.dtype(x.dtype).name, int(np.prod(x.shape))
        out.append(packed[k][offsets[k]:offsets[k] + n].reshape(x.shape))
        offsets[k] += n
    if any(offsets[k] != len(v) for k, v in packed.items()):
        raise RunDirError("a checkpoint holds more values than this model has: it was written "
                          "by another model")
    return jax.tree_util.tree_unflatten(treedef, out)


def restore_state(mngr: ocp.CheckpointManager, step: int, like: State) -> State:
    """The state saved at `step`, on the host, in the structure of `like`. Checkpoints written
    before states were packed hold the tree itself and restore as such."""
    sizes = packed_sizes(like)
    saved = getattr(mngr.item_metadata(step), "tree", None)
    if isinstance(saved, dict) and set(saved) == set(sizes):
        packed = mngr.restore(step, args=ocp.args.StandardRestore(
            {k: np.zeros(n, k) for k, n in sizes.items()}))
        return unpacked_state(packed, like)
    target = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), like)
    return jax.tree_util.tree_map(np.asarray, mngr.restore(
        step, args=ocp.args.StandardRestore(target)))


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


def member_dirs(run_dir: Path) -> list[Path]:
    """The run directories of a trained model: the directory itself, or its ensemble members."""
    if (run_dir / "config.json").exists():
        return [run_dir]
    members = {int(d.name[7:]): d for d in run_dir.glob("member-*")
               if d.name[7:].isdigit() and (d / "config.json").exists()}
    if not members:
        raise RunDirError(f"{run_dir}: no trained model here (no config.json, no "
                                f"member-N/config.json); train one with `astra train`")
    return [members[n] for n in sorted(members)]


def is_better(rec: dict[str, Any], best: dict[str, Any]) -> bool:
    """The checkpoint manager's rule: highest validation step accuracy, later epochs on ties."""
    return not best or rec["val_step_acc"] >= best.get("val_step_acc", -1)


def best_record(path: Path) -> dict[str, Any]:
    """The best epoch's record in a run's log (a resumed run picks up where it left off)."""
    best: dict[str, Any] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        rec = json.loads(line)
        if "val_step_acc" in rec and is_better(rec, best):
            best = rec
    return best


def keep_log_until(path: Path, epoch: int) -> None:
    """A run killed between logging an epoch and checkpointing it, or mid-line, leaves records
    past its last checkpoint; drop them so the resumed run's log is one clean curve."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("epoch", 0) <= epoch:
            kept.append(line)
    path.write_text("".join(f"{x}\n" for x in kept))


def load_params(run_dir: Path, cfg: TrainConfig, sample: Batch, which: str = "best"):
    mngr = checkpoint_manager(run_dir)
    step = mngr.best_step() if which == "best" else mngr.latest_step()
    if step is None:
        raise RunDirError(f"no checkpoint under {run_dir / 'checkpoints'}")
    state = restore_state(mngr, step, abstract_state(cfg, sample))
    mngr.close()
    return state.params, step


# `FILE#N` names member N of a model file as a starting point
MEMBER_MARK = "#"


def init_members(init: str) -> list[str]:
    """The starting point of each member of `init`: a run's member directories, or each
    member of a model file as `FILE#N`."""
    path = Path(init)
    if path.is_file():
        from astra_jax.export import read_header
        return [f"{path}{MEMBER_MARK}{i}" for i in range(read_header(path)[0]["members"])]
    return [str(d) for d in member_dirs(path)]


def model_file_member(init: str) -> tuple[Path, int] | None:
    """(file, member) when `init` is `FILE#N` with FILE a file, else None."""
    head, sep, tail = init.rpartition(MEMBER_MARK)
    if sep and tail.isdigit() and Path(head).is_file():
        return Path(head), int(tail)
    return None


def init_params(init: str, cfg: TrainConfig, sample: Batch):
    """The parameters to fine-tune from: the best of a trained single-model run, or one member
    of a model file (`FILE#N`, a model file alone means its first); their model, embedder and
    evidence must be this run's."""
    if Path(init).is_file():
        init = f"{init}{MEMBER_MARK}0"
    member = model_file_member(init)
    if member is not None:
        from astra_jax.export import load_model
        base, members, _ = load_model(member[0])
        if not same_parameters(base, cfg):
            raise RunDirError(f"{member[0]}: its model, embedder or evidence differ from this "
                              f"run's; fine-tuning needs the same")
        if member[1] >= len(members):
            raise RunDirError(f"{member[0]}: has {len(members)} members, no member {member[1]}")
        like = abstract_state(cfg, sample).params
        return jax.tree_util.tree_map(jnp.asarray, serialization.from_state_dict(
            like, members[member[1]]))
    run_dir = Path(init)
    if not (run_dir / "config.json").exists():
        raise RunDirError(f"{run_dir}: no trained model to start from (no config.json); give a "
                          f"single run, or an ensemble member's directory")
    base = config_from_dir(run_dir)
    if not same_parameters(base, cfg):
        raise RunDirError(f"{run_dir}: its model, embedder or evidence differ from this run's; "
                          f"fine-tuning needs the same")
    return load_params(run_dir, base, sample)[0]


def same_parameters(a: TrainConfig, b: TrainConfig) -> bool:
    """Whether parameters trained under `a` mean the same under `b`: same architecture,
    embedder and evidence columns (training-only settings may differ)."""
    return ((architecture(a.model), a.embedder, a.dropped)
            == (architecture(b.model), b.embedder, b.dropped))


def override(cfg: TrainConfig, settings: list[str]) -> TrainConfig:
    """Apply `key=value` settings (`epochs=4`, `model.d_model=64`), converting each value to the
    field's type; an unknown key or a bad value names itself."""
    for item in settings:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"setting {item!r}: expected KEY=VALUE")
        path = key.strip().split(".")
        if len(path) > 2 or (len(path) == 2 and path[0] != "model"):
            raise ValueError(f"setting {item!r}: unknown key {key!r}")
        target = cfg.model if len(path) == 2 else cfg
        fields = {f.name for f in dataclasses.fields(target)}
        if path[-1] not in fields or path[-1] == "model":
            raise ValueError(f"setting {item!r}: unknown key {key!r}; known: "
                             f"{', '.join(sorted(fields))}")
        kind = type(getattr(target, path[-1]))
        try:
            value = kind(raw) if kind is not bool else raw.lower() in ("1", "true", "yes")
        except ValueError:
            raise ValueError(f"setting {item!r}: {raw!r} is not a valid {kind.__name__}") from None
        try:
            new = dataclasses.replace(target, **{path[-1]: value})
        except ValueError as e:
            raise ValueError(f"setting {item!r}: {e}") from None
        cfg = dataclasses.replace(cfg, model=new) if len(path) == 2 else new
    return cfg


def config_from_dir(run_dir: Path) -> TrainConfig:
    d = json.loads((run_dir / "config.json").read_text())
    d["model"] = ModelConfig(**d["model"])
    return TrainConfig(**d)
