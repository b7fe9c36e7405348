"""Prediction: top-K candidates per trace (the `astra.candidates/v1` contract of DESIGN.md)."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from astra_jax.batching import labels_of, pack_batch
from astra_jax.features import Featurised
from astra_jax.train import TrainConfig, make_steps
from data_gen.trace import CANDIDATES_SCHEMA, Trace


def top_k_candidates(params, cfg: TrainConfig, traces: list[Trace], feats: list[Featurised],
                     k: int, checkpoint: str, ckpt_step: int) -> list[dict[str, Any]]:
    _, _, eval_step = make_steps(cfg)
    out = []
    for i in range(0, len(traces), cfg.batch_size):
        chunk_t, chunk_f = traces[i:i + cfg.batch_size], feats[i:i + cfg.batch_size]
        b = pack_batch(chunk_f, [labels_of(t) for t in chunk_t], cfg.batch_size)
        _, pred, _ = eval_step(params, b)
        pred = jax.tree_util.tree_map(np.asarray, pred)
        node_offset = agent_offset = 0
        for gi, (t, f) in enumerate(zip(chunk_t, chunk_f)):
            g = f.graph
            a_ix = agent_offset + np.arange(len(g.agents))
            order = a_ix[np.argsort(-pred["agent_p"][a_ix], kind="stable")][:k]
            agents = []
            for a in order:
                local = a - agent_offset
                steps = [s for s in range(len(t.steps)) if g.step_agent[s] == local]
                nodes = node_offset + g.step_node[steps]
                ranked = sorted(zip(steps, pred["step_p"][nodes].tolist()), key=lambda x: -x[1])
                agents.append({"agent": g.agents[local], "score": float(pred["agent_p"][a]),
                               "steps": [{"step": int(s), "score": float(p)}
                                         for s, p in ranked]})
            out.append({"schema": CANDIDATES_SCHEMA, "trace_id": t.trace_id,
                        "failure_prob": float(pred["fail_p"][gi]),
                        "uncertainty": float(pred["uncertainty"][gi]),
                        "agents": agents, "model": {"checkpoint": checkpoint, "step": ckpt_step}})
            node_offset += len(g.node_type)
            agent_offset += len(g.agents)
    return out


def internals(params, cfg: TrainConfig, trace: Trace, feat: Featurised) -> dict[str, np.ndarray]:
    """What the model looked at for one trace: the last spatial block's attention on each edge
    [E, heads] and each node's expert routing probabilities [N, experts]. For inspection (the
    notebooks); prediction never needs it."""
    from astra_jax.model import AstraMoE
    b = pack_batch([feat], [labels_of(trace)], 1)
    out = AstraMoE(cfg.model).apply({"params": params}, b)
    n, e = len(feat.graph.node_type), len(feat.graph.senders)
    return {"attention": np.asarray(out.attention)[:e], "routing": np.asarray(out.router_probs)[:n]}
