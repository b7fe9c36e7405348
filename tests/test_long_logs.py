"""Long logs: inference's chunked edge attention gives what the whole-batch one gives, and the
prediction bucket pads each dimension on its own rung (docs/pipeline.md, "Long logs")."""
from pathlib import Path

import numpy as np

from astra_jax import model as model_module
from astra_jax.batching import bucket_sizes, exact_sizes, labels_of, pack_batch
from astra_jax.export import DEFAULT_MODEL, load_model
from astra_jax.features import featurise, make_embedder
from astra_jax.model import AstraMoE
from data_gen.readers import load_valid_traces

HAND = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Hand-Crafted"


def test_chunked_attention_matches_the_whole_batch(monkeypatch):
    cfg, members, _ = load_model(DEFAULT_MODEL)
    traces = load_valid_traces([HAND / "1.json", HAND / "2.json"])
    feats = featurise(traces, make_embedder(cfg.embedder), drop=cfg.dropped)
    b = pack_batch(feats, [labels_of(t) for t in traces], cfg.batch_size)
    n_edges = b.graph.senders.shape[0]
    model = AstraMoE(cfg.model)
    whole = model.apply({"params": members[0]}, b, deterministic=True)
    monkeypatch.setattr(model_module, "EDGE_CHUNK", n_edges // 4)
    assert model_module.edge_chunks(n_edges) == 4
    chunked = model.apply({"params": members[0]}, b, deterministic=True)
    step = np.asarray(b.step_mask) > 0
    for name in ("step_logit", "agent_logit", "fail_logit", "evidence"):
        x, y = np.asarray(getattr(whole, name)), np.asarray(getattr(chunked, name))
        if name == "step_logit":
            x, y = x[step], y[step]
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.asarray(whole.attention), np.asarray(chunked.attention),
                               atol=1e-6)


def test_each_dimension_pads_to_its_own_rung():
    traces = load_valid_traces([HAND / "1.json"])
    feats = featurise(traces, make_embedder("hashing"))
    n, e, a = exact_sizes(feats)
    bn, be, ba = bucket_sizes(feats)
    assert (bn, be, ba) == (512, 2048, 128) and n <= bn and e <= be and a <= ba
    assert model_module.edge_chunks(2048) == 1 and model_module.edge_chunks(3 * 2**16) == 12
