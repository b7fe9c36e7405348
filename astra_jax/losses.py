"""The training losses and the per-graph predictions, computed from the model's outputs and a
packed batch inside the jitted steps (train, eval and prediction)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from astra_jax.batching import Batch
from astra_jax.configs import TrainConfig
from astra_jax.model import Outputs, segment_log_softmax


def loss_terms(out: Outputs, b: Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Each loss as (sum, count), so that shards of a data-parallel batch add up to exactly the
    loss of the whole batch."""
    G = b.graph_mask.shape[0]
    lm = b.label_mask
    step_lp = segment_log_softmax(out.step_logit, b.node_graph, G)
    agent_lp = segment_log_softmax(out.agent_logit, b.agent_graph, G)
    mode_ce = optax.softmax_cross_entropy_with_integer_labels(out.mode_logit, b.mode)
    fail_bce = optax.sigmoid_binary_cross_entropy(out.fail_logit, b.failed)
    labelled_node = lm[b.node_graph] * b.step_mask
    wrong = labelled_node.at[b.target_node].multiply(1.0 - lm)
    return {"step_ce": (-(step_lp[b.target_node] * lm).sum(), lm.sum()),
            "agent_ce": (-(agent_lp[b.target_agent] * lm).sum(), lm.sum()),
            "mode_ce": ((mode_ce * b.mode_mask).sum(), b.mode_mask.sum()),
            "fail_bce": ((fail_bce * b.graph_mask).sum(), b.graph_mask.sum()),
            "balance": (out.balance_loss, jnp.ones(())),
            "evidence": ((out.evidence * wrong).sum(), wrong.sum())}


def reduce_terms(terms: dict[str, tuple[jax.Array, jax.Array]]) -> dict[str, jax.Array]:
    return {k: num.sum() / jnp.maximum(den.sum(), 1.0) for k, (num, den) in terms.items()}


def losses(out: Outputs, b: Batch) -> dict[str, jax.Array]:
    return reduce_terms(loss_terms(out, b))


def total_loss(parts: dict[str, jax.Array], cfg: TrainConfig) -> jax.Array:
    return (cfg.w_step * parts["step_ce"] + cfg.w_agent * parts["agent_ce"]
            + cfg.w_mode * parts["mode_ce"] + cfg.w_fail * parts["fail_bce"]
            + cfg.w_balance * parts["balance"] + cfg.w_evidence * parts["evidence"])


def predictions(out: Outputs, b: Batch) -> dict[str, jax.Array]:
    """Per graph: predicted step node, agent, their probabilities, uncertainty."""
    G = b.graph_mask.shape[0]
    step_p = jnp.exp(segment_log_softmax(out.step_logit, b.node_graph, G))
    agent_p = jnp.exp(segment_log_softmax(out.agent_logit, b.agent_graph, G))
    idx_n = jnp.arange(step_p.shape[0])
    best_node = jax.ops.segment_max(jnp.where(b.step_mask > 0, out.step_logit, -1e9), b.node_graph,
                                    G)
    is_best = (out.step_logit == best_node[b.node_graph]) & (b.step_mask > 0)
    pred_node = jax.ops.segment_min(jnp.where(is_best, idx_n, 1 << 30), b.node_graph, G)
    best_agent = jax.ops.segment_max(out.agent_logit, b.agent_graph, G)
    idx_a = jnp.arange(agent_p.shape[0])
    pred_agent = jax.ops.segment_min(
        jnp.where(out.agent_logit == best_agent[b.agent_graph], idx_a, 1 << 30), b.agent_graph, G)
    alpha_sum = jax.ops.segment_sum(out.evidence + b.step_mask, b.node_graph, G)
    n_steps = jax.ops.segment_sum(b.step_mask, b.node_graph, G)
    return {"pred_node": pred_node, "pred_agent": pred_agent, "step_p": step_p,
            "agent_p": agent_p, "fail_p": jax.nn.sigmoid(out.fail_logit),
            "uncertainty": n_steps / jnp.maximum(alpha_sum, 1.0)}
