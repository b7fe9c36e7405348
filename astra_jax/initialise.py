"""A model's initial parameters, drawn on the host with NumPy from Flax's default initialisers.

Drawing them with `model.init` under `jax.jit` compiles a program of ~700 fusions (a random
generator and a truncated normal per weight): 3.5 s of XLA on a 2-core CPU, a fifth of what a
small job compiles, to produce a megabyte of numbers once. Here the parameter tree comes from
`jax.eval_shape(model.init, ...)`, which compiles nothing, and each leaf is drawn by the rule
Flax's layers use for it, by its name:

- `kernel` (`nn.Dense`): LeCun normal, a normal truncated at two standard deviations and scaled
  to variance 1 / fan-in, fan-in being the second-to-last axis;
- `embedding` (`nn.Embed`): a normal of variance 1 / features;
- `bias` (`nn.Dense`, `nn.LayerNorm`): zeros; `scale` (`nn.LayerNorm`): ones.

A leaf of any other name is an error, so a layer with another initialiser cannot slip through
(`tests/test_coarse.py` also compares every leaf's spread with `model.init`'s).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

TRUNCATED_STD = 0.87962566103423978  # standard deviation of a standard normal cut at ±2


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal samples cut at ±2 (the ones outside are drawn again)."""
    x = rng.standard_normal(shape)
    out = np.abs(x) > 2
    while out.any():
        x[out] = rng.standard_normal(int(out.sum()))
        out = np.abs(x) > 2
    return x


def draw_leaf(name: str, shape: tuple[int, ...], dtype: Any, rng: np.random.Generator,
              path: str) -> np.ndarray:
    if name in ("kernel", "embedding") and len(shape) != 2:  # fan-in below assumes a matrix
        raise ValueError(f"parameter {path}: a {len(shape)}-axis {name}; only matrices have a "
                         f"host initialiser")
    if name == "kernel":
        x = truncated_normal(rng, shape) * (np.sqrt(1.0 / shape[-2]) / TRUNCATED_STD)
    elif name == "embedding":
        x = rng.standard_normal(shape) * np.sqrt(1.0 / shape[-1])
    elif name == "bias":
        x = np.zeros(shape)
    elif name == "scale":
        x = np.ones(shape)
    else:
        raise ValueError(f"parameter {path}: no host initialiser for a leaf named {name!r} "
                         f"(known: kernel, embedding, bias, scale)")
    return x.astype(dtype)


def host_params(shapes: Any, seed: int) -> Any:
    """Parameters of the tree of shapes `shapes` (`jax.ShapeDtypeStruct` leaves), drawn from
    `seed`, leaf after leaf in the tree's order."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:], simple=True)
        return draw_leaf(name, tuple(leaf.shape), leaf.dtype, rng,
                         jax.tree_util.keystr(path, simple=True, separator="/"))

    return jax.tree_util.tree_map_with_path(draw, shapes)
