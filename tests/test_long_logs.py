"""Long logs: inference's chunked edge attention gives what the whole-batch one gives, the
prediction bucket pads each dimension on its own rung, and a log predicted in windows scores
as the whole graph does (docs/pipeline.md, "Long logs")."""
from pathlib import Path

import numpy as np

from astra_jax import model as model_module
from astra_jax.batching import bucket_sizes, exact_sizes, labels_of, pack_batch
from astra_jax.export import DEFAULT_MODEL, load_model
from astra_jax.features import featurise, make_embedder
from astra_jax.losses import predictions
from astra_jax.model import AstraMoE, receptive_hops
from astra_jax.predict import stack_members, trace_probabilities
from astra_jax.windows import batches, split, windows
from data_gen.readers import load_valid_traces

HAND = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Hand-Crafted"


def test_chunked_attention_matches_the_whole_batch(monkeypatch):
    cfg, members, _ = load_model(DEFAULT_MODEL)
    traces = load_valid_traces([HAND / "1.json", HAND / "2.json"])
    feats = featurise(traces, make_embedder(cfg.embedder), drop=cfg.dropped)
    b = pack_batch(feats, [labels_of(t) for t in traces], cfg.batch_size)
    spatial, temporal = b.graph.senders.shape[0], b.temporal_senders.shape[0]
    model = AstraMoE(cfg.model)
    whole = model.apply({"params": members[0]}, b, deterministic=True)
    chunk = min(spatial, temporal) // 4
    monkeypatch.setattr(model_module, "EDGE_CHUNK", chunk)
    monkeypatch.setattr(model_module, "CHUNK_FROM", 2 * chunk)
    assert model_module.edge_chunks(spatial) == spatial // chunk >= 4
    assert model_module.edge_chunks(temporal) == temporal // chunk >= 4
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
    exact, bucket = exact_sizes(feats), bucket_sizes(feats)
    assert bucket == (512, 512, 2048, 128) and all(x <= y for x, y in zip(exact, bucket))
    assert model_module.edge_chunks(2048) == 1 and model_module.edge_chunks(3 * 2**16) == 1
    assert model_module.edge_chunks(3 * 2**19) == 3 * 2**19 // model_module.EDGE_CHUNK


def _whole_graph_probabilities(cfg, members, traces, feats):
    """The members' averaged probabilities from one packed batch, read off `predictions`."""
    b = pack_batch(feats, [labels_of(t) for t in traces], cfg.batch_size)
    model = AstraMoE(cfg.model)
    preds = [predictions(model.apply({"params": p}, b, deterministic=True), b) for p in members]
    out, no, ao = [], 0, 0
    for gi, f in enumerate(feats):
        g = f.graph
        out.append({"step_p": np.mean([np.asarray(p["step_p"])[no + g.step_node]
                                       for p in preds], 0),
                    "agent_p": np.mean([np.asarray(p["agent_p"])[ao:ao + len(g.agents)]
                                        for p in preds], 0),
                    "fail_p": np.mean([float(p["fail_p"][gi]) for p in preds]),
                    "uncertainty": np.mean([float(p["uncertainty"][gi]) for p in preds])})
        no, ao = no + len(g.node_type), ao + len(g.agents)
    return out


def test_pieces_combine_into_what_the_whole_graph_gives():
    """A log cut into windows of 8 steps scores every step and agent as the whole graph does:
    each piece holds its steps' receptive field, and the agent and uncertainty terms add up."""
    cfg, members, _ = load_model(DEFAULT_MODEL)
    traces = load_valid_traces([HAND / "1.json", HAND / "2.json", HAND / "3.json"])
    feats = featurise(traces, make_embedder(cfg.embedder), drop=cfg.dropped)
    whole = _whole_graph_probabilities(cfg, members, traces, feats)
    stacked = stack_members(members)
    one_piece = trace_probabilities(stacked, cfg, traces, feats)
    cut = trace_probabilities(stacked, cfg, traces, feats, window=8)
    assert all(len(t.steps) > 16 for t in traces)
    assert [len(split(i, f, receptive_hops(cfg.model), 8)) for i, f in enumerate(feats)] == \
        [-(-len(t.steps) // 8) for t in traces]
    for w, o, c in zip(whole, one_piece, cut):
        for key in ("step_p", "agent_p", "uncertainty"):
            np.testing.assert_allclose(o[key], w[key], atol=1e-5, err_msg=key)
            np.testing.assert_allclose(c[key], w[key], atol=1e-5, err_msg=key)
        assert abs(o["fail_p"] - w["fail_p"]) < 1e-5
        assert 0 < c["fail_p"] < 1
        assert np.argmax(c["step_p"]) == np.argmax(w["step_p"])


def test_a_piece_without_its_receptive_field_scores_differently():
    """The pieces need their upstream nodes: with none (0 hops) the scores of a cut log move."""
    cfg, members, _ = load_model(DEFAULT_MODEL)
    trace = load_valid_traces([HAND / "1.json"])[0]
    feat = featurise([trace], make_embedder(cfg.embedder), drop=cfg.dropped)[0]
    whole = _whole_graph_probabilities(cfg, members, [trace], [feat])[0]
    pieces = split(0, feat, 0, 8)
    assert sum(len(p.feat.graph.node_type) for p in pieces) < len(feat.graph.node_type)
    bare = trace_probabilities(stack_members(members), cfg, [trace], [feat], window=8,
                               hops=0)[0]
    assert np.abs(bare["step_p"] - whole["step_p"]).max() > 1e-3


def test_windows_cover_every_step_once_in_equal_parts():
    for n, w in [(1, 4), (8, 8), (9, 8), (100, 7), (1000, 1024), (5000, 1024)]:
        parts = windows(n, w)
        assert [i for a, b in parts for i in range(a, b)] == list(range(n))
        sizes = [b - a for a, b in parts]
        assert max(sizes) <= w and max(sizes) - min(sizes) <= 1
        assert len(parts) == -(-n // w)


def test_batches_hold_at_most_their_pieces_and_nodes():
    traces = load_valid_traces([HAND / "1.json", HAND / "2.json"])
    feats = featurise(traces, make_embedder("hashing"))
    pieces = [p for i, f in enumerate(feats) for p in split(i, f, 4, 8)]
    for per_batch, max_nodes in [(16, 10**9), (3, 10**9), (16, 100), (16, 1)]:
        out = batches(pieces, per_batch, max_nodes)
        assert [p for b in out for p in b] == pieces
        for b in out:
            nodes = sum(len(p.feat.graph.node_type) for p in b)
            assert len(b) <= per_batch and (nodes <= max_nodes or len(b) == 1)


def test_a_long_log_among_short_ones_changes_none_of_their_scores():
    """Pieces of a cut log share batches with whole short logs: each trace scores as alone."""
    cfg, members, _ = load_model(DEFAULT_MODEL)
    traces = load_valid_traces([HAND / "2.json", HAND / "1.json", HAND / "3.json"])
    feats = featurise(traces, make_embedder(cfg.embedder), drop=cfg.dropped)
    stacked = stack_members(members)
    window = len(traces[1].steps) // 3  # cuts every log, the second into three
    together = trace_probabilities(stacked, cfg, traces, feats, window=window)
    for t, f, mixed in zip(traces, feats, together):
        alone = trace_probabilities(stacked, cfg, [t], [f], window=window)[0]
        for key in ("step_p", "agent_p", "uncertainty", "fail_p"):
            np.testing.assert_allclose(mixed[key], alone[key], atol=1e-5, err_msg=key)
