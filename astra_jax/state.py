"""The train state (`State`), the model and optimiser objects, the initial state built on the
host, and the learning-rate schedule the train step reads as an argument."""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from astra_jax.batching import SMALLEST_BUCKET, Batch, pack_batch
from astra_jax.configs import TrainConfig
from astra_jax.initialise import host_params
from astra_jax.model import AstraMoE, ModelConfig


@struct.dataclass
class State:
    """What training carries from step to step. The optimiser itself is not in it (the steps
    close over it), so the state's structure pickles and its compiled steps can be stored."""
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


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


@lru_cache(maxsize=8)
def model_and_tx(model_cfg: ModelConfig, clip_norm: float, weight_decay: float):
    """One model and optimiser object per setting. The optimiser is AdamW at a unit rate (a
    schedule of ones, so its state counts steps as a scheduled one does); the train step scales
    its updates by `learning_rate`."""
    tx = optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(lambda count: 1.0, weight_decay=weight_decay))
    return AstraMoE(model_cfg), tx


def _abstract_init(cfg: TrainConfig, sample: Batch):
    """The initial state's function and its arguments. Parameters depend on the feature widths
    only, so it gets the smallest bucket."""
    model, tx = model_and_tx(cfg.model, 1.0, 1.0)  # nominal: the initial state ignores them
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
