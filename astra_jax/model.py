"""ASTRA-MoE: MicroStateEncoder → STGAT blocks → MoE head, over one packed batch.

Shapes: N nodes, E edges, G graphs, A agents, D = d_model, H heads. Message passing is
`segment_*` over senders/receivers; no Python loop over traces or steps runs in here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from astra_jax.batching import Batch
from data_gen.dhcg import EDGE_TYPES, NODE_TYPES, TEMPORAL
from data_gen.trace import FAULT_MODES



@dataclass(frozen=True)
class ModelConfig:
    d_model: int = 128
    heads: int = 4
    spatial_layers: int = 2
    temporal_layers: int = 2
    experts: int = 4
    router_noise: float = 1.0
    dropout: float = 0.1
    # in training, the share of real logs whose step and agent scores come from the linear
    # evidence path alone: it must then rank their steps by itself, and the graph layers learn
    # a correction to it instead of memorising a few hundred labelled logs. Simulated traces,
    # plentiful, always train the graph layers (docs/coarse_stage.md, "Path dropout").
    path_dropout: float = 0.8


def architecture(cfg: ModelConfig) -> ModelConfig:
    """`cfg` less what acts only in training (dropout, path dropout, router noise): two models
    of the same architecture share parameter shapes and evaluate alike, so one can fine-tune or
    join an ensemble with the other whatever their training regularisation."""
    return dataclasses.replace(cfg, dropout=0.0, path_dropout=0.0, router_noise=0.0)


class Outputs(NamedTuple):
    step_logit: jax.Array  # [N] fault score of each node (meaningful on step nodes)
    agent_logit: jax.Array  # [A] soft maximum of the agent's step logits + `agent_pool`
    agent_pool: jax.Array  # [A] the agent's pooled term (its steps' mean state, projected)
    fail_logit: jax.Array  # [G]
    mode_logit: jax.Array  # [G, M]
    evidence: jax.Array  # [N] Dirichlet evidence per step node
    balance_loss: jax.Array  # []
    router_probs: jax.Array  # [N, experts]
    attention: jax.Array  # [E, H] last spatial block's attention on the spatial edges


def segment_log_softmax(logits: jax.Array, segments: jax.Array, n: int) -> jax.Array:
    """Log-softmax of logits [E, ...] within each segment id; ids in [0, n)."""
    mx = jax.lax.stop_gradient(jax.ops.segment_max(logits, segments, n))[segments]
    ex = jnp.exp(logits - mx)
    return logits - mx - jnp.log(jax.ops.segment_sum(ex, segments, n)[segments] + 1e-9)


def segment_softmax(logits: jax.Array, segments: jax.Array, n: int) -> jax.Array:
    return jnp.exp(segment_log_softmax(logits, segments, n))


def rope(x: jax.Array, pos: jax.Array) -> jax.Array:
    """Rotary position embedding of x [E, H, Dh] at integer positions [E]."""
    half = x.shape[-1] // 2
    freq = 1.0 / (10000 ** (jnp.arange(half) / half))
    ang = pos[:, None, None].astype(jnp.float32) * freq
    x1, x2 = x[..., :half], x[..., half:2 * half]
    return jnp.concatenate([x1 * jnp.cos(ang) - x2 * jnp.sin(ang),
                            x1 * jnp.sin(ang) + x2 * jnp.cos(ang), x[..., 2 * half:]], -1)


class MicroStateEncoder(nn.Module):
    d_model: int

    @nn.compact
    def __call__(self, text, meta, node_type):
        t = nn.Dense(self.d_model)(text)
        m = nn.gelu(nn.Dense(self.d_model)(
            jnp.concatenate([meta, jax.nn.one_hot(node_type, len(NODE_TYPES))], -1)))
        gate = nn.sigmoid(nn.Dense(self.d_model)(jnp.concatenate([t, m], -1)))
        return nn.LayerNorm()(gate * t + (1 - gate) * m)


EDGE_CHUNK = 16384  # edges at a time in inference's attention (astra_jax/predict.py)
CHUNK_FROM = 1 << 19  # inference chunks an attention over this many edges or more


def edge_chunks(n_edges: int) -> int:
    """In how many chunks of `EDGE_CHUNK` edges inference computes an attention over
    `n_edges` padded edges: 1 (all at once) below `CHUNK_FROM`, or when the chunk does not
    divide them. Prediction's batches (astra_jax/windows.py) stay below it, where one pass is
    about a sixth faster; a larger batch's per-edge [E, d_model] arrays would be most of its
    memory."""
    return n_edges // EDGE_CHUNK if n_edges >= CHUNK_FROM and not n_edges % EDGE_CHUNK else 1


class EdgeAttention(nn.Module):
    """Multi-head attention along edges: each receiver attends over its incoming edges, keys and
    values shifted by a learned embedding of the edge type; optional RoPE on the step index."""
    d_model: int
    heads: int
    use_rope: bool = False
    dropout: float = 0.1

    @nn.compact
    def __call__(self, h, senders, receivers, edge_type, edge_mask, node_step, deterministic):
        n, hd = h.shape[0], self.d_model // self.heads
        split = lambda x: x.reshape(x.shape[0], self.heads, hd)  # noqa: E731
        chunks = edge_chunks(senders.shape[0]) if deterministic else 1
        if chunks > 1:
            return _chunked_attention(self, h, senders, receivers, edge_type, edge_mask,
                                      node_step, chunks)
        q = split(nn.Dense(self.d_model)(h))[receivers]
        type_k = nn.Embed(len(EDGE_TYPES), self.d_model)(edge_type)
        type_v = nn.Embed(len(EDGE_TYPES), self.d_model)(edge_type)
        k = split(nn.Dense(self.d_model)(h)[senders] + type_k)
        v = split(nn.Dense(self.d_model)(h)[senders] + type_v)
        if self.use_rope:
            q, k = rope(q, node_step[receivers]), rope(k, node_step[senders])
        logits = (q * k).sum(-1) / jnp.sqrt(hd)  # [E, H]
        logits = jnp.where(edge_mask[:, None] > 0, logits, -1e9)
        attn = segment_softmax(logits, receivers, n) * edge_mask[:, None]
        msg = jax.ops.segment_sum(attn[..., None] * v, receivers, n).reshape(n, self.d_model)
        return _feed_forward(self, h, msg, deterministic), attn


def _feed_forward(m: EdgeAttention, h, msg, deterministic):
    """An attention block's output projection, residual, norm and MLP (inside m's __call__)."""
    out = nn.Dropout(m.dropout)(nn.Dense(m.d_model)(msg), deterministic=deterministic)
    h = nn.LayerNorm()(h + out)
    ff = nn.Dense(m.d_model)(nn.gelu(nn.Dense(2 * m.d_model)(h)))
    return nn.LayerNorm()(h + ff)


def _chunked_attention(m: EdgeAttention, h, senders, receivers, edge_type, edge_mask, node_step,
                       chunks):
    """EdgeAttention (inside m's __call__) with its per-edge [E, D] arrays made `EDGE_CHUNK`
    edges at a time, for inference: the same parameters, created in the same order, the same
    products, and the messages summed in the same edge order."""
    n, hd = h.shape[0], m.d_model // m.heads
    split = lambda x: x.reshape(x.shape[0], m.heads, hd)  # noqa: E731
    q_node = split(nn.Dense(m.d_model)(h))
    types = jnp.arange(len(EDGE_TYPES))
    type_k = nn.Embed(len(EDGE_TYPES), m.d_model)(types)
    type_v = nn.Embed(len(EDGE_TYPES), m.d_model)(types)
    k_node, v_node = nn.Dense(m.d_model)(h), nn.Dense(m.d_model)(h)
    cut = lambda x: jnp.asarray(x).reshape(chunks, -1, *x.shape[1:])  # noqa: E731
    parts = (cut(senders), cut(receivers), cut(edge_type))
    node_step = jnp.asarray(node_step)

    def logits_of(part):
        s, r, t = part
        q, k = q_node[r], split(k_node[s] + type_k[t])
        if m.use_rope:
            q, k = rope(q, node_step[r]), rope(k, node_step[s])
        return (q * k).sum(-1) / jnp.sqrt(hd)

    logits = jax.lax.map(logits_of, parts).reshape(-1, m.heads)  # [E, H]
    logits = jnp.where(edge_mask[:, None] > 0, logits, -1e9)
    attn = segment_softmax(logits, receivers, n) * edge_mask[:, None]

    def add(acc, part):
        s, r, t, a = part
        return acc.at[r].add(a[..., None] * split(v_node[s] + type_v[t])), None

    msg, _ = jax.lax.scan(add, jnp.zeros((n, m.heads, hd), h.dtype), (*parts, cut(attn)))
    return _feed_forward(m, h, msg.reshape(n, m.d_model), True), attn


class MoEHead(nn.Module):
    """Noisy top-2 routing over small expert MLPs, with a switch-style load-balancing loss."""
    d_model: int
    experts: int
    noise: float

    @nn.compact
    def __call__(self, h, node_mask, deterministic):
        logits = nn.Dense(self.experts)(h)
        if not deterministic and self.noise > 0:
            logits = logits + self.noise * jax.random.normal(self.make_rng("router"),
                                                             logits.shape) / self.experts
        top_val, top_ix = jax.lax.top_k(logits, 2)
        gates = jax.nn.softmax(top_val, -1)
        dense_gates = (jax.nn.one_hot(top_ix, self.experts) * gates[..., None]).sum(1)  # [N, X]
        outs = jnp.stack([nn.Dense(self.d_model)(nn.gelu(nn.Dense(self.d_model)(h)))
                          for _ in range(self.experts)], 1)  # [N, X, D]
        y = h + (dense_gates[..., None] * outs).sum(1)
        probs = jax.nn.softmax(logits, -1)
        w = node_mask[:, None] / jnp.maximum(node_mask.sum(), 1.0)
        frac = (jax.nn.one_hot(top_ix[:, 0], self.experts) * w).sum(0)
        balance = self.experts * (frac * (probs * w).sum(0)).sum()
        return y, balance, probs


def receptive_hops(c: ModelConfig) -> int:
    """How many edges upstream a node's final state reads: one per attention block
    (`AstraMoE` runs max(spatial, temporal) rounds of a spatial and a temporal block)."""
    return max(c.spatial_layers, c.temporal_layers) * ((c.spatial_layers > 0)
                                                        + (c.temporal_layers > 0))


class AstraMoE(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, b: Batch, deterministic: bool = True) -> Outputs:
        c, g = self.cfg, b.graph
        n_graphs, n_agents = b.graph_mask.shape[0], b.agent_mask.shape[0]
        h = MicroStateEncoder(c.d_model)(g.nodes["text"], g.nodes["meta"], g.nodes["type"])
        temporal_type = jnp.full(b.temporal_senders.shape, TEMPORAL, jnp.int32)
        attn = None
        for _ in range(max(c.spatial_layers, c.temporal_layers)):
            if c.spatial_layers:
                h, attn = EdgeAttention(c.d_model, c.heads, dropout=c.dropout)(
                    h, g.senders, g.receivers, g.edges, b.edge_mask, b.node_step, deterministic)
            if c.temporal_layers:
                h, _ = EdgeAttention(c.d_model, c.heads, use_rope=True, dropout=c.dropout)(
                    h, b.temporal_senders, b.temporal_receivers, temporal_type, b.temporal_mask,
                    b.node_step, deterministic)
        node_mask = (b.node_graph < n_graphs - 1).astype(jnp.float32)
        h, balance, probs = MoEHead(c.d_model, c.experts, c.router_noise)(h, node_mask,
                                                                         deterministic)
        # a linear path from the step's own metadata and evidence: what a few hundred labelled
        # logs can support, without having to pass through the graph layers
        keep = jnp.ones(n_graphs)
        if not deterministic and c.path_dropout > 0:
            drop = jax.random.bernoulli(self.make_rng("dropout"), c.path_dropout, (n_graphs,))
            keep = 1.0 - b.real * drop
        step_logit = (nn.Dense(1)(h)[:, 0] * keep[b.node_graph]
                      + nn.Dense(1)(g.nodes["meta"])[:, 0])
        step_logit = jnp.where(b.step_mask > 0, step_logit, -1e9)
        evidence = jax.nn.softplus(step_logit) * b.step_mask
        # an agent's score: the soft maximum of its step scores plus a pooled term
        agent_lse = jax.ops.segment_max(step_logit, b.node_agent, n_agents)
        pooled = jax.ops.segment_sum(h * b.step_mask[:, None], b.node_agent, n_agents)
        count = jax.ops.segment_sum(b.step_mask, b.node_agent, n_agents)[:, None]
        agent_pool = nn.Dense(1)(pooled / jnp.maximum(count, 1.0))[:, 0] * keep[b.agent_graph]
        agent_logit = agent_lse + agent_pool
        agent_logit = jnp.where(b.agent_mask > 0, agent_logit, -1e9)
        gsum = jax.ops.segment_sum(h * node_mask[:, None], b.node_graph, n_graphs)
        gcount = jax.ops.segment_sum(node_mask, b.node_graph, n_graphs)[:, None]
        gvec = gsum / jnp.maximum(gcount, 1.0)
        fail_logit = nn.Dense(1)(nn.gelu(nn.Dense(c.d_model)(gvec)))[:, 0]
        mode_logit = nn.Dense(len(FAULT_MODES))(nn.gelu(nn.Dense(c.d_model)(gvec)))
        return Outputs(step_logit, agent_logit, agent_pool, fail_logit, mode_logit, evidence,
                       balance, probs,
                       attn if attn is not None else jnp.zeros((g.edges.shape[0], c.heads)))
