"""Packing featurised traces into one padded `jraph.GraphsTuple` per batch.

A batch has `batch_size + 1` graphs (the last one absorbs padding) and fixed sizes (`Sizes`:
nodes, spatial edges, temporal edges, agents; the two kinds of edge apart, since each attention
block reads one kind and temporal edges are most of a graph's). Training and evaluation give a whole run one size (`run_bucket`: room for
`batch_size` traces of the run's mean size) and cut each epoch's order into batches that fit it
(`plan_batches`): one compiled program per run, and padding that is a fraction of each batch
rather than up to half of it. Prediction, which meets one log or a few, pads each batch to a
bucket whose every dimension is a rung of the ladder (512, 512, 2048, 128) * 2**level
or 1.5 * 2**level, so that logs of many sizes share few programs and a long log wastes little.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from astra_jax.features import Featurised
from astra_jax.jraph_compat import jraph
from data_gen.dhcg import TEMPORAL
from data_gen.trace import FAULT_MODES, Trace


class Batch(NamedTuple):
    # nodes: {"text" [N, Dt], "meta" [N, Dm], "type" [N]}; edges: the spatial ones, type [E]
    graph: jraph.GraphsTuple
    node_step: np.ndarray  # [N] snapshot index (RoPE position)
    node_graph: np.ndarray  # [N] graph of each node (the padding graph for padding)
    step_mask: np.ndarray  # [N] 1 for step (author) nodes of real graphs
    node_agent: np.ndarray  # [N] batch-wide agent of each step node (padding agent elsewhere)
    agent_graph: np.ndarray  # [A] graph of each agent
    agent_mask: np.ndarray  # [A]
    edge_mask: np.ndarray  # [E]
    # the temporal edges (an entity's earlier states to its next one), apart: each attention
    # block reads only its own kind, and temporal edges are most of a graph's
    temporal_senders: np.ndarray  # [T]
    temporal_receivers: np.ndarray  # [T]
    temporal_mask: np.ndarray  # [T]
    graph_mask: np.ndarray  # [G]
    target_node: np.ndarray  # [G] node index of the labelled step (0 where none)
    target_agent: np.ndarray  # [G] agent index of the labelled agent (0 where none)
    label_mask: np.ndarray  # [G] 1 for failed traces with a label
    failed: np.ndarray  # [G] 1 for failed runs
    mode: np.ndarray  # [G] fault mode index (0 where unknown)
    mode_mask: np.ndarray  # [G]
    real: np.ndarray  # [G] 1 for real logs (path dropout acts on them alone)


Labels = tuple[int, int, int, int, int]


def is_real(trace: Trace) -> bool:
    """A real log: anything but an ASTRA-Gen trace, which always carries its variant."""
    return trace.variant is None


def labels_of(trace: Trace) -> Labels:
    """(step, agent index, failed, mode index, real); -1 where unknown. Healed runs did not
    fail."""
    failed, real = int(trace.failed), int(is_real(trace))
    if trace.label is None or not failed:
        return -1, -1, failed, -1, real
    agents = trace.agents
    mode = FAULT_MODES.index(trace.label.mode) if trace.label.mode in FAULT_MODES else -1
    agent = agents.index(trace.label.agent) if trace.label.agent in agents else -1
    return trace.label.step, agent, failed, mode, real


def training_use(trace: Trace) -> tuple[str, str | None]:
    """What training can learn from a trace: its kind, and why it is of little or no use (None
    when it is fully used). A trace with neither a label nor an outcome teaches nothing."""
    if trace.label is not None:
        return ("labelled failure" if trace.failed else "healed run"), None
    if trace.outcome.success is True or trace.variant == "golden":
        return "successful run", None
    if trace.failed:
        return "unlabelled failure", ("a failed run without a label: it teaches the failure "
                                      "probability only, not who or when")
    return "unusable", "no label and no outcome: nothing to learn from it"


Sizes = tuple[int, int, int, int]  # padded (nodes, spatial edges, temporal edges, agents)
SMALLEST_BUCKET: Sizes = (512, 512, 2048, 128)


def trace_sizes(items: list[Featurised]) -> np.ndarray:
    """[len(items), 4]: nodes, spatial edges, temporal edges and agents of each trace."""
    rows = []
    for f in items:
        temporal = int(np.count_nonzero(f.graph.edge_type == TEMPORAL))
        rows.append((len(f.graph.node_type), len(f.graph.senders) - temporal, temporal,
                     len(f.graph.agents)))
    return np.array(rows, np.int64).reshape(-1, 4)


def exact_sizes(items: list[Featurised]) -> Sizes:
    """(nodes, spatial edges, temporal edges, agents) of `items` plus one padding slot each:
    no bucket."""
    n, e, t, a = (int(x) + 1 for x in trace_sizes(items).sum(0))
    return n, e, t, a


def bucket_sizes(items: list[Featurised]) -> Sizes:
    """The smallest bucket (`Sizes`) that holds `items` plus one padding slot:
    each dimension on its own rung of the ladder (`ladder_level`), so a long log with ten edges
    per node pads neither its nodes nor its agents to its edges' rung, and wastes under a third
    of any dimension."""
    return tuple(ladder_level(x, base) for x, base in zip(exact_sizes(items), SMALLEST_BUCKET))


def feature_dims(f: Featurised) -> tuple[int, int]:
    """(text embedding, metadata) widths."""
    return f.step_text.shape[1], f.meta.shape[1]


def pack_batch(items: list[Featurised], labels: list[Labels],
               batch_size: int, sizes: Sizes | None = None,
               dims: tuple[int, int] | None = None) -> Batch:
    """Pack up to `batch_size` traces; `sizes` forces a bucket and `dims` (text, meta widths)
    allows an empty, all-padding batch (a data-parallel shard with nothing left to take)."""
    if len(items) > batch_size or (not items and dims is None):
        raise ValueError(f"need 1..{batch_size} traces, got {len(items)}")
    N, E, T, A = sizes or bucket_sizes(items)
    G = batch_size + 1
    dt, dm = dims or feature_dims(items[0])
    text, meta = np.zeros((N, dt), np.float32), np.zeros((N, dm), np.float32)
    ntype, nstep = np.zeros(N, np.int32), np.zeros(N, np.int32)
    ngraph = np.full(N, G - 1, np.int32)
    step_mask, nagent = np.zeros(N, np.float32), np.full(N, A - 1, np.int32)
    senders, receivers = np.full(E, N - 1, np.int32), np.full(E, N - 1, np.int32)
    etype, emask = np.zeros(E, np.int32), np.zeros(E, np.float32)
    t_send, t_recv = np.full(T, N - 1, np.int32), np.full(T, N - 1, np.int32)
    tmask = np.zeros(T, np.float32)
    agraph, amask = np.full(A, G - 1, np.int32), np.zeros(A, np.float32)
    n_node, n_edge = np.zeros(G, np.int32), np.zeros(G, np.int32)
    gmask = np.zeros(G, np.float32)
    tnode, tagent = np.zeros(G, np.int32), np.zeros(G, np.int32)
    lmask, failed = np.zeros(G, np.float32), np.zeros(G, np.float32)
    mode, mmask = np.zeros(G, np.int32), np.zeros(G, np.float32)
    real = np.zeros(G, np.float32)
    no = eo = to = ao = 0
    for gi, (f, (step, agent, fail, md, rl)) in enumerate(zip(items, labels)):
        g = f.graph
        temporal = g.edge_type == TEMPORAL
        spatial = ~temporal
        n, e, t, a = len(g.node_type), int(spatial.sum()), int(temporal.sum()), len(g.agents)
        text[no:no + n] = f.step_text[g.node_step]
        meta[no:no + n] = f.meta
        ntype[no:no + n], nstep[no:no + n], ngraph[no:no + n] = g.node_type, g.node_step, gi
        step_mask[no + g.step_node] = 1.0 - g.step_is_empty  # R7, unless a label says otherwise
        nagent[no + g.step_node] = ao + g.step_agent
        senders[eo:eo + e] = no + g.senders[spatial]
        receivers[eo:eo + e] = no + g.receivers[spatial]
        etype[eo:eo + e], emask[eo:eo + e] = g.edge_type[spatial], 1.0
        t_send[to:to + t] = no + g.senders[temporal]
        t_recv[to:to + t], tmask[to:to + t] = no + g.receivers[temporal], 1.0
        # the environment is never blamed (R6), unless a label says otherwise
        agraph[ao:ao + a], amask[ao:ao + a] = gi, 1.0 - g.agent_is_env
        if agent >= 0:
            amask[ao + agent] = 1.0
        n_node[gi], n_edge[gi], gmask[gi], failed[gi], real[gi] = n, e, 1.0, fail, rl
        if step >= 0 and agent >= 0:
            tnode[gi], tagent[gi], lmask[gi] = no + g.step_node[step], ao + agent, 1.0
            step_mask[no + g.step_node[step]] = 1.0
        if md >= 0:
            mode[gi], mmask[gi] = md, 1.0
        no, eo, to, ao = no + n, eo + e, to + t, ao + a
    n_node[G - 1], n_edge[G - 1] = N - no, E - eo
    graph = jraph.GraphsTuple(nodes={"text": text, "meta": meta, "type": ntype}, edges=etype,
                              senders=senders, receivers=receivers, n_node=n_node, n_edge=n_edge,
                              globals=None)
    return Batch(graph, nstep, ngraph, step_mask, nagent, agraph, amask, emask, t_send, t_recv,
                 tmask, gmask, tnode, tagent, lmask, failed, mode, mmask, real)


def ladder_level(x: int, base: int) -> int:
    """The smallest of base * 2**k and base * 1.5 * 2**k that is at least `x`: a run's size
    wastes under a third of it, and runs on similar data (cross-validation's folds) meet the
    same size and share its program."""
    v = base
    while v < x and v * 3 // 2 < x:
        v *= 2
    return v if v >= x else v * 3 // 2


def run_bucket(each: np.ndarray, per_batch: int) -> Sizes:
    """The one size of every batch of a run over traces of sizes `each` (`trace_sizes`): room
    for `per_batch` traces of their mean size in each dimension, and for the largest trace, plus
    a padding slot."""
    if not len(each):
        return SMALLEST_BUCKET
    need = np.maximum(per_batch * each.mean(0), each.max(0)) + 1
    return tuple(ladder_level(int(np.ceil(x)), base) for x, base in zip(need, SMALLEST_BUCKET))


def plan_batches(each: np.ndarray, order: np.ndarray, per_batch: int, sizes: Sizes
                 ) -> list[list[int]]:
    """`order` (indices into `each`, the traces' `trace_sizes`) cut, in order, into batches of
    at most `per_batch` traces that fit `sizes` with a padding slot to spare: a batch ends early
    rather than spill over."""
    room = np.array(sizes) - 1
    if len(each) and (each.max(0) > room).any():
        raise ValueError(f"a trace of (nodes, spatial edges, temporal edges, agents) "
                         f"{tuple(each.max(0))} does not fit batches of {sizes}")
    batches: list[list[int]] = []
    used = np.zeros(len(sizes), np.int64)
    for j in order.tolist():
        if not batches or len(batches[-1]) == per_batch or (used + each[j] > room).any():
            batches.append([])
            used[:] = 0
        batches[-1].append(j)
        used += each[j]
    return batches


def pack_shards(parts: list[list[Featurised]], labels: list[list[Labels]], per_batch: int,
                shards: int, sizes: Sizes, dims: tuple[int, int],
                local: range | None = None) -> Batch:
    """One global batch of up to `shards` sub-batches (`parts`, each at most `per_batch`
    traces) padded to `sizes`, the ones in `local` (default: all) stacked on a leading axis:
    the data-parallel layout. Missing sub-batches are all padding."""
    if len(parts) > shards:
        raise ValueError(f"{len(parts)} sub-batches for {shards} shards")
    local = local if local is not None else range(shards)
    packed = [pack_batch(parts[i] if i < len(parts) else [],
                         labels[i] if i < len(parts) else [], per_batch, sizes, dims)
              for i in local]
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *packed)
