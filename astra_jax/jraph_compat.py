"""jraph 0.0.6 still calls `jax.tree_map`/`jax.tree_leaves`, removed in JAX 0.6.

Import jraph through this module only; the shim puts back the two names jraph uses.
"""
import jax

if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree_util.tree_map
if not hasattr(jax, "tree_leaves"):
    jax.tree_leaves = jax.tree_util.tree_leaves

import jraph  # noqa: E402

__all__ = ["jraph"]
