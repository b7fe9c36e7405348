"""Prediction of a long log in pieces: windows of steps, each with the part of the graph that
its steps' scores depend on.

The forward pass's memory grows with the nodes of one padded batch (~10 KB a node), so a log of
100,000 steps run whole needs ~6 GB. A log longer than `WINDOW_STEPS` steps is cut into windows
of at most that many. A window's piece holds its steps' author nodes and every node within
`receptive_hops` edges upstream of them (model.py): the nodes whose states reach theirs
through the attention blocks, edges between them included. Node features are those of the
whole log (position, evidence), and every piece keeps all the log's agents, so the pieces'
outputs combine into one verdict (`combine`):

- step scores: a step's logit in its piece is the one the whole graph gives it (its receptive
  field is all there), and one softmax runs over the steps of all pieces;
- agent scores: the model's agent logit is the maximum of its step logits plus a term linear
  in the mean state of its steps, so the whole-log value is the maximum over pieces plus the
  pieces' terms weighted by their steps;
- uncertainty: the sum of the pieces' evidence over the sum of their steps, as for one graph;
- failure probability: the pieces' probabilities weighted by their steps (the one output that
  reads the whole graph's mean state, so here an approximation).

A log of at most `WINDOW_STEPS` steps is one piece, the whole graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from astra_jax.batching import Labels
from astra_jax.features import Featurised
from data_gen.dhcg import DHCG

WINDOW_STEPS = 2048  # a log of at most this many steps is predicted whole
BATCH_NODES = 32768  # pieces share a batch up to this many nodes (one batch's memory)


@dataclass(frozen=True)
class Piece:
    trace: int  # index of the trace among those predicted
    feat: Featurised  # the window's graph: its scored steps are its `step_node`
    first_step: int  # the log's step index of the window's first scored step


def windows(n_steps: int, window: int = WINDOW_STEPS) -> list[tuple[int, int]]:
    """[start, end) of each window: as few as hold `window` steps each, lengths within one."""
    n = max(1, -(-n_steps // window))
    bounds = [i * n_steps // n for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass(frozen=True)
class InEdges:
    """A graph's edges grouped by receiver: `order[indptr[v]:indptr[v + 1]]` are v's."""
    order: np.ndarray
    indptr: np.ndarray

    @classmethod
    def of(cls, g: DHCG) -> "InEdges":
        order = np.argsort(g.receivers, kind="stable")
        counts = np.bincount(g.receivers, minlength=len(g.node_type))
        return cls(order, np.concatenate([[0], np.cumsum(counts)]))

    def into(self, nodes: np.ndarray) -> np.ndarray:
        """The ids of the edges into `nodes`."""
        starts, ends = self.indptr[nodes], self.indptr[nodes + 1]
        lens = ends - starts
        if not lens.sum():
            return np.zeros(0, np.int64)
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
        return self.order[offsets + np.arange(lens.sum())]


def subgraph(g: DHCG, edges_in: InEdges, start: int, end: int, hops: int
             ) -> tuple[DHCG, np.ndarray]:
    """The piece of steps [start, end): their author nodes and every node up to `hops` edges
    upstream, with the edges between them in the whole graph's order; and the whole graph's
    index of each of its nodes."""
    keep = np.zeros(len(g.node_type), bool)
    frontier = np.unique(g.step_node[start:end])
    keep[frontier] = True
    for _ in range(hops):
        senders = g.senders[edges_in.into(frontier)]
        frontier = np.unique(senders[~keep[senders]])
        keep[frontier] = True
    nodes = np.flatnonzero(keep)
    edges = edges_in.into(nodes)
    edges = np.sort(edges[keep[g.senders[edges]]])
    local = np.full(len(g.node_type), -1, np.int64)
    local[nodes] = np.arange(len(nodes))
    sub = DHCG(node_type=g.node_type[nodes], node_step=g.node_step[nodes],
               node_entity=g.node_entity[nodes], step_node=local[g.step_node[start:end]],
               step_agent=g.step_agent[start:end], senders=local[g.senders[edges]],
               receivers=local[g.receivers[edges]], edge_type=g.edge_type[edges],
               agents=g.agents, signals=g.signals[start:end], entities=g.entities,
               agent_is_env=g.agent_is_env, step_is_empty=g.step_is_empty[start:end])
    return sub, nodes


def split(index: int, feat: Featurised, hops: int, window: int = WINDOW_STEPS) -> list[Piece]:
    """The pieces of trace `index`: itself when it has at most `window` steps; `hops` is the
    model's `receptive_hops`."""
    n_steps = len(feat.graph.step_node)
    if n_steps <= window:
        return [Piece(index, feat, 0)]
    edges_in = InEdges.of(feat.graph)
    out = []
    for start, end in windows(n_steps, window):
        g, nodes = subgraph(feat.graph, edges_in, start, end, hops)
        out.append(Piece(index, Featurised(g, feat.step_text, feat.meta[nodes]), start))
    return out


def piece_labels(piece: Piece, labels: Labels) -> Labels:
    """A trace's labels for one of its pieces: the labelled step where the piece scores it."""
    step, agent, failed, mode, real = labels
    local = step - piece.first_step
    if not 0 <= local < len(piece.feat.graph.step_node):
        local = -1
    return local, agent, failed, mode, real


def batches(pieces: list[Piece], per_batch: int, max_nodes: int = BATCH_NODES
            ) -> list[list[Piece]]:
    """`pieces` in order, cut into batches of at most `per_batch` pieces and, unless one piece
    is larger, `max_nodes` nodes: a long log's windows do not pile up in one batch."""
    out: list[list[Piece]] = []
    nodes = 0
    for p in pieces:
        n = len(p.feat.graph.node_type)
        if not out or len(out[-1]) == per_batch or nodes + n > max_nodes:
            out.append([])
            nodes = 0
        out[-1].append(p)
        nodes += n
    return out


@dataclass(frozen=True)
class PieceOutput:
    """One member's outputs on one piece, cut out of its batch."""
    step_logit: np.ndarray  # [S] of the piece's core steps (-1e9 where not a candidate)
    step_mask: np.ndarray  # [S] 1 for candidate steps
    step_agent: np.ndarray  # [S]
    agent_pool: np.ndarray  # [A]
    agent_mask: np.ndarray  # [A] 1 for agents that can be blamed
    evidence: np.ndarray  # [S]
    fail_logit: float


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def combine(parts: list[PieceOutput]) -> dict[str, np.ndarray | float]:
    """One member's probabilities for a whole trace from its pieces' outputs, in step order:
    `step_p` [S], `agent_p` [A], `fail_p`, `uncertainty` (see the module docstring)."""
    step_logit = np.concatenate([p.step_logit for p in parts])
    step_agent = np.concatenate([p.step_agent for p in parts])
    step_mask = np.concatenate([p.step_mask for p in parts])
    n_agents = len(parts[0].agent_pool)
    lse = np.full(n_agents, -np.inf, np.float32)
    np.maximum.at(lse, step_agent, step_logit)
    # each piece's pooled term weighted by its candidate steps of that agent (where an agent has
    # none anywhere, its pieces' terms are alike: the projection of a zero state)
    counts = np.stack([np.bincount(p.step_agent, p.step_mask, n_agents) for p in parts])
    present = np.stack([np.bincount(p.step_agent, None, n_agents) > 0 for p in parts])
    weight = np.where(counts.sum(0) > 0, counts, present).astype(np.float32)
    pool = np.stack([p.agent_pool for p in parts])
    pool = (weight * pool).sum(0) / np.maximum(weight.sum(0), 1.0)
    agent_logit = np.where(parts[0].agent_mask > 0, lse + pool, -1e9).astype(np.float32)
    n_core = np.array([len(p.step_logit) for p in parts], np.float32)
    fail = 1.0 / (1.0 + np.exp(-np.array([p.fail_logit for p in parts], np.float64)))
    alpha = sum(float(p.evidence.sum() + p.step_mask.sum()) for p in parts)
    return {"step_p": _softmax(step_logit.astype(np.float64)),
            "agent_p": _softmax(agent_logit.astype(np.float64)),
            "fail_p": float((fail * n_core).sum() / max(n_core.sum(), 1.0)),
            "uncertainty": float(step_mask.sum() / max(alpha, 1.0))}
