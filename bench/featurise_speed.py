"""Text featurising throughput: steps/s of each embedder on a fixed workload, cold cache.

    python bench/featurise_speed.py [--tasks 8] [--skip-old]

Workload: the 126 Who&When development logs (long steps: median 191 wordpieces) and the traces
ASTRA-Gen simulates from `--tasks` tasks, seed 0 (short steps: median 20 wordpieces). Every row
featurises into a fresh temporary cache directory, so it embeds every step and writes every
cache file; loading the model is not timed. Rows:
- `hashing`: the numpy embedder.
- `minilm-head96-tail32` (the default) and `minilm-head48-tail16`: MiniLM across traces (the
  featuriser's default chunks), float32, one torch thread per core; `, 1 thread`: one thread.
- `+ int8`: the same with `torch.ao.quantization.quantize_dynamic` on every Linear layer, an
  experiment kept out of the product: the cosine columns compare it with float32.
- `... one trace per call, first 256`: how the featuriser ran before (one `embed` call per
  trace, plain truncation to 256 wordpieces).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from astra_cli.table import format_table  # noqa: E402
from astra_jax.features import Embedder, HashingEmbedder, MiniLMEmbedder, featurise  # noqa: E402
from data_gen.readers import load_traces  # noqa: E402
from data_gen.sim.generate import GenConfig, generate  # noqa: E402
from data_gen.trace import Trace  # noqa: E402

DEV = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Algorithm-Generated"


def int8(emb: MiniLMEmbedder) -> MiniLMEmbedder:
    """`emb` with its Linear layers quantised to int8 (dynamic activation scales)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb.model = torch.ao.quantization.quantize_dynamic(emb.model, {torch.nn.Linear},
                                                           dtype=torch.qint8)
    emb.name += "-int8"
    return emb


def timed(traces: list[Trace], emb: Embedder, chunk_steps: int) -> tuple[float, np.ndarray]:
    """Seconds to featurise `traces` into an empty cache, and all step embeddings [S, D]."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        feats = featurise(traces, emb, Path(d), chunk_steps=chunk_steps)
        secs = time.perf_counter() - t0
    return secs, np.concatenate([f.step_text for f in feats])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=8, help="ASTRA-Gen tasks, ~2.6 traces each")
    ap.add_argument("--skip-old", action="store_true", help="leave out the slow old-setting row")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    workloads = {
        "Who&When dev logs": load_traces(sorted(DEV.glob("*.json"))).traces,
        "ASTRA-Gen traces": [t for r in generate(GenConfig(n_tasks=args.tasks, seed=0, workers=1))
                             for t in r.traces]}
    variants: list[tuple[str, object, int]] = [
        ("hashing", HashingEmbedder, 4096),
        ("minilm-head96-tail32", lambda: MiniLMEmbedder(128, 32, threads=cores), 4096),
        ("minilm-head96-tail32, 1 thread", lambda: MiniLMEmbedder(128, 32, threads=1), 4096),
        ("minilm-head96-tail32 + int8", lambda: int8(MiniLMEmbedder(128, 32, threads=cores)),
         4096),
        ("minilm-head48-tail16", lambda: MiniLMEmbedder(64, 16, threads=cores), 4096)]
    if not args.skip_old:
        variants.append(("minilm, one trace per call, first 256",
                         lambda: MiniLMEmbedder(256, 0, threads=cores), 1))
    rows, floats = [], {}
    for label, make, chunk_steps in variants:
        emb = make()
        for wname, traces in workloads.items():
            secs, emb_rows = timed(traces, emb, chunk_steps)
            steps = len(emb_rows)
            cos: tuple[object, object] = ("-", "-")
            if label.endswith("+ int8"):
                sim = (emb_rows * floats[(label.removesuffix(" + int8"), wname)]).sum(1)
                cos = (float(sim.mean()), float(sim.min()))
            floats[(label, wname)] = emb_rows
            rows.append((label, wname, len(traces), steps, secs, steps / secs,
                         len(traces) / secs, *cos))
            print(f"{label} on {wname}: {steps / secs:.1f} steps/s", file=sys.stderr)
    print(format_table(("embedder", "workload", "traces", "steps", "seconds", "steps/s",
                        "traces/s", "cos to float, mean", "min"), rows))


if __name__ == "__main__":
    main()
