"""Validation scores of a model during training: strict agent and step accuracy, top-3 agent
recall and expected calibration error."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from astra_jax.batch_plans import eval_batches
from astra_jax.configs import TrainConfig
from astra_jax.sharding import replicated


def evaluate(params, eval_step, items, labels, cfg: TrainConfig, mesh: Mesh | None = None
             ) -> dict[str, float]:
    """Strict agent and step accuracy, top-3 agent recall and ECE over labelled failed traces."""
    hits_a = hits_s = top3 = n = 0
    conf, correct = [], []
    loss_sum = 0.0
    nb = 0
    for b, ix in eval_batches(items, labels, cfg.batch_size):
        metrics, pred, _ = eval_step(params, replicated(b, mesh) if mesh else b)
        loss_sum, nb = loss_sum + float(metrics["loss"]), nb + 1
        pred = jax.tree_util.tree_map(np.asarray, pred)
        for gi, j in enumerate(ix):
            if b.label_mask[gi] == 0:
                continue
            n += 1
            ok_s = pred["pred_node"][gi] == b.target_node[gi]
            ok_a = pred["pred_agent"][gi] == b.target_agent[gi]
            hits_s, hits_a = hits_s + ok_s, hits_a + ok_a
            mine = np.where(b.agent_graph == gi)[0]
            ranked = mine[np.argsort(-pred["agent_p"][mine], kind="stable")][:3]
            top3 += b.target_agent[gi] in ranked
            conf.append(float(pred["step_p"][pred["pred_node"][gi]]))
            correct.append(float(ok_s))
    return {"loss": loss_sum / max(nb, 1), "n": n, "agent_acc": hits_a / max(n, 1),
            "step_acc": hits_s / max(n, 1), "agent_top3": top3 / max(n, 1),
            "ece": expected_calibration_error(np.array(conf), np.array(correct))}


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    if len(conf) == 0:
        return 0.0
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece)
