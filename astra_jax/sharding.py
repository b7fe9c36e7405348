"""Data parallelism: one mesh axis over every device of every process, the number of shards a
global batch splits into, batches laid out over the mesh and values replicated on it."""
from __future__ import annotations

from typing import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from astra_jax.batch_plans import BatchPlan
from astra_jax.batching import Batch, feature_dims, pack_shards
from astra_jax.configs import TrainConfig
from astra_jax.features import Featurised


def data_mesh() -> Mesh:
    """One mesh axis, "data", over every device of every process."""
    return Mesh(np.array(jax.devices()), ("data",))


def resolve_shards(cfg: TrainConfig, mesh: Mesh) -> int:
    shards = cfg.shards or mesh.size
    if shards % mesh.size or shards % jax.process_count():
        raise ValueError(f"{shards} shards cannot be split over {mesh.size} devices in "
                         f"{jax.process_count()} processes; use a multiple of {mesh.size}")
    return shards


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
