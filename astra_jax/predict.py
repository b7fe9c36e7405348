"""Prediction: top-K candidates per trace (the `astra.candidates/v1` contract of DESIGN.md)."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from astra_jax.batching import Batch, labels_of, pack_batch
from astra_jax.compilation import PROGRAM_SOURCES, StoredJit, shared_programs, source_digest
from astra_jax.configs import TrainConfig
from astra_jax.features import Featurised
from astra_jax.model import AstraMoE, ModelConfig, receptive_hops
from astra_jax.windows import (WINDOW_STEPS, Piece, PieceOutput, batches, combine, piece_labels,
                               split)
from data_gen.dhcg import TEMPORAL
from data_gen.marks import not_agents
from data_gen.trace import CANDIDATES_SCHEMA, Trace

RAW = ("step_logit", "agent_pool", "fail_logit", "evidence")


def stack_members(params: list[Any]) -> Any:
    """Parameters of an ensemble's members, stacked on a new leading axis."""
    return jax.tree_util.tree_map(lambda *xs: np.stack(xs), *params)


@shared_programs(maxsize=8)
def ensemble_step(model_cfg: ModelConfig) -> StoredJit:
    """One compiled function for any number of members: each member's raw outputs (`RAW`),
    stacked on a leading member axis, from which `windows.combine` makes probabilities."""
    model = AstraMoE(model_cfg)

    def step(stacked, b: Batch) -> dict[str, jax.Array]:
        def one(params):
            out = model.apply({"params": params}, b, deterministic=True)
            return {k: getattr(out, k) for k in RAW}
        # one member after another (not vmap): the peak memory of one member's forward pass,
        # not of all of them at once, which on a long log is most of the process's memory
        return jax.lax.map(one, stacked)

    return StoredJit(step, f"predict {model_cfg!r} "
                           f"{source_digest('astra_jax.predict', *PROGRAM_SOURCES)}")


def piece_outputs(raw: dict[str, np.ndarray], b: Batch, pieces: list[Piece]
                  ) -> list[list[PieceOutput]]:
    """`raw` outputs of a batch [members, ...] cut into [piece][member]."""
    out: list[list[PieceOutput]] = []
    node_offset = agent_offset = 0
    for gi, p in enumerate(pieces):
        g = p.feat.graph
        nodes = node_offset + g.step_node
        agents = slice(agent_offset, agent_offset + len(g.agents))
        out.append([PieceOutput(
            step_logit=raw["step_logit"][m, nodes], step_mask=b.step_mask[nodes],
            step_agent=g.step_agent, agent_pool=raw["agent_pool"][m, agents],
            agent_mask=b.agent_mask[agents], evidence=raw["evidence"][m, nodes],
            fail_logit=float(raw["fail_logit"][m, gi])) for m in range(len(raw["fail_logit"]))])
        node_offset += len(g.node_type)
        agent_offset += len(g.agents)
    return out


def trace_probabilities(stacked, cfg: TrainConfig, traces: list[Trace], feats: list[Featurised],
                        window: int = WINDOW_STEPS, hops: int | None = None
                        ) -> list[dict[str, Any]]:
    """Each trace's `step_p` [S], `agent_p` [A], `fail_p` and `uncertainty`, the members'
    probabilities averaged (averaging probabilities, not logits, keeps each a distribution
    and damps what one seed learnt by chance). Long logs are predicted in windows
    (astra_jax/windows.py, `window` steps each, with the nodes `hops` edges upstream:
    by default the model's receptive field); pieces of many traces share batches."""
    step = ensemble_step(cfg.model)
    hops = receptive_hops(cfg.model) if hops is None else hops
    pieces = [p for i, f in enumerate(feats) for p in split(i, f, hops, window)]
    parts: list[list[list[PieceOutput]]] = [[] for _ in traces]  # [trace][piece][member]
    planned = batches(pieces, cfg.batch_size)
    # a bar on a terminal, for a long log or many (tqdm's disable=None: none elsewhere)
    for chunk in tqdm(planned, desc="predicting", unit="batch",
                      disable=None if len(planned) > 1 else True):
        b = pack_batch([p.feat for p in chunk],
                       [piece_labels(p, labels_of(traces[p.trace])) for p in chunk],
                       cfg.batch_size)
        raw = jax.tree_util.tree_map(np.asarray, step(stacked, b))
        for p, members in zip(chunk, piece_outputs(raw, b, chunk)):
            parts[p.trace].append(members)
    out = []
    for trace_parts in parts:
        each = [combine(list(per_member)) for per_member in zip(*trace_parts)]
        out.append({k: np.mean([e[k] for e in each], axis=0) for k in each[0]})
    return out


def top_k_candidates(stacked, cfg: TrainConfig, traces: list[Trace], feats: list[Featurised],
                     k: int, model_info: dict[str, Any]) -> list[dict[str, Any]]:
    """`stacked`: the members' parameters from `stack_members` (one member is an ensemble of
    one); `model_info` is written as each record's `model` field."""
    out = []
    for t, f, pred in zip(traces, feats, trace_probabilities(stacked, cfg, traces, feats)):
        g = f.graph
        # only agents are candidates (DHCG rule R6: tools, environment, humans never are)
        a_ix = np.flatnonzero(~g.agent_is_env)
        order = a_ix[np.argsort(-pred["agent_p"][a_ix], kind="stable")][:k]
        agents = []
        for a in order:
            steps = np.flatnonzero(g.step_agent[:len(t.steps)] == a)
            ranked = sorted(zip(steps, pred["step_p"][steps].tolist()), key=lambda x: -x[1])
            agents.append({"agent": g.agents[a], "score": float(pred["agent_p"][a]),
                           "steps": [{"step": int(s), "score": float(p)} for s, p in ranked]})
        out.append({"schema": CANDIDATES_SCHEMA, "trace_id": t.trace_id,
                    "failure_prob": float(pred["fail_p"]),
                    "uncertainty": float(pred["uncertainty"]),
                    "agents": agents, "not_agents": not_agents(t),
                    "single_agent": int((~g.agent_is_env).sum()) == 1, "model": model_info})
    return out


def internals(params, cfg: TrainConfig, trace: Trace, feat: Featurised) -> dict[str, np.ndarray]:
    """What the model looked at for one trace: the last spatial block's attention on each edge
    [E, heads] (0 on temporal edges, which that block does not read) and each node's expert
    routing probabilities [N, experts]. For inspection (the notebooks); prediction never needs
    it."""
    b = pack_batch([feat], [labels_of(trace)], 1)
    out = AstraMoE(cfg.model).apply({"params": params}, b)
    g = feat.graph
    spatial = g.edge_type != TEMPORAL
    attention = np.zeros((len(g.senders), cfg.model.heads), np.float32)
    attention[spatial] = np.asarray(out.attention)[:int(spatial.sum())]
    return {"attention": attention, "routing": np.asarray(out.router_probs)[:len(g.node_type)]}
