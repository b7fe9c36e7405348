"""Prediction: top-K candidates per trace (the `astra.candidates/v1` contract of DESIGN.md)."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from astra_jax.batching import Batch, labels_of, pack_batch
from astra_jax.compilation import PROGRAM_SOURCES, StoredJit, shared_programs, source_digest
from astra_jax.configs import TrainConfig
from astra_jax.features import Featurised
from astra_jax.losses import predictions
from astra_jax.model import AstraMoE, ModelConfig
from data_gen.marks import not_agents
from data_gen.trace import CANDIDATES_SCHEMA, Trace

AVERAGED = ("agent_p", "step_p", "fail_p", "uncertainty")


def stack_members(params: list[Any]) -> Any:
    """Parameters of an ensemble's members, stacked on a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *params)


@shared_programs(maxsize=8)
def ensemble_step(model_cfg: ModelConfig) -> StoredJit:
    """One compiled function for any number of members: each member's probabilities, averaged.
    Averaging probabilities (not logits) keeps each a distribution over the trace's agents and
    steps, and damps what one seed learnt by chance."""
    model = AstraMoE(model_cfg)

    def step(stacked, b: Batch) -> dict[str, jax.Array]:
        def one(params):
            pred = predictions(model.apply({"params": params}, b, deterministic=True), b)
            return {k: pred[k] for k in AVERAGED}
        # one member after another (not vmap): the peak memory of one member's forward pass,
        # not of all of them at once, which on a long log is most of the process's memory
        return jax.tree_util.tree_map(lambda x: x.mean(0), jax.lax.map(one, stacked))

    return StoredJit(step, f"predict {model_cfg!r} "
                           f"{source_digest('astra_jax.predict', *PROGRAM_SOURCES)}")


def top_k_candidates(stacked, cfg: TrainConfig, traces: list[Trace], feats: list[Featurised],
                     k: int, model_info: dict[str, Any]) -> list[dict[str, Any]]:
    """`stacked`: the members' parameters from `stack_members` (one member is an ensemble of
    one); `model_info` is written as each record's `model` field."""
    step = ensemble_step(cfg.model)
    out = []
    for i in range(0, len(traces), cfg.batch_size):
        chunk_t, chunk_f = traces[i:i + cfg.batch_size], feats[i:i + cfg.batch_size]
        b = pack_batch(chunk_f, [labels_of(t) for t in chunk_t], cfg.batch_size)
        pred = jax.tree_util.tree_map(np.asarray, step(stacked, b))
        node_offset = agent_offset = 0
        for gi, (t, f) in enumerate(zip(chunk_t, chunk_f)):
            g = f.graph
            a_ix = agent_offset + np.arange(len(g.agents))
            # only agents are candidates (DHCG rule R6: tools, environment, humans never are)
            a_ix = a_ix[~g.agent_is_env]
            order = a_ix[np.argsort(-pred["agent_p"][a_ix], kind="stable")][:k]
            agents = []
            for a in order:
                local = a - agent_offset
                steps = np.flatnonzero(g.step_agent[:len(t.steps)] == local)
                nodes = node_offset + g.step_node[steps]
                ranked = sorted(zip(steps, pred["step_p"][nodes].tolist()), key=lambda x: -x[1])
                agents.append({"agent": g.agents[local], "score": float(pred["agent_p"][a]),
                               "steps": [{"step": int(s), "score": float(p)}
                                         for s, p in ranked]})
            out.append({"schema": CANDIDATES_SCHEMA, "trace_id": t.trace_id,
                        "failure_prob": float(pred["fail_p"][gi]),
                        "uncertainty": float(pred["uncertainty"][gi]),
                        "agents": agents, "not_agents": not_agents(t),
                        "single_agent": int((~g.agent_is_env).sum()) == 1, "model": model_info})
            node_offset += len(g.node_type)
            agent_offset += len(g.agents)
    return out


def internals(params, cfg: TrainConfig, trace: Trace, feat: Featurised) -> dict[str, np.ndarray]:
    """What the model looked at for one trace: the last spatial block's attention on each edge
    [E, heads] and each node's expert routing probabilities [N, experts]. For inspection (the
    notebooks); prediction never needs it."""
    b = pack_batch([feat], [labels_of(trace)], 1)
    out = AstraMoE(cfg.model).apply({"params": params}, b)
    n, e = len(feat.graph.node_type), len(feat.graph.senders)
    return {"attention": np.asarray(out.attention)[:e], "routing": np.asarray(out.router_probs)[:n]}
