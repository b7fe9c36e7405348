"""Where the memory of one `astra attribute` goes: RSS after each phase, in one process.

    python bench/long_log_phases.py LOG [--run MODEL] [--tracemalloc]

Phases, as `astra attribute` runs them (astra_cli/coarse_commands.py `predict_traces`): import
and model loading, reading the log, the step text embeddings, the DHCG build, the node metadata
and step evidence, the cut into windows (astra_jax/windows.py), and packing, the forward pass
and the candidates (astra_jax/predict.py `top_k_candidates`). Each row gives the RSS after the
phase, the peak RSS during it (Linux: VmHWM, reset before each phase through
/proc/self/clear_refs) and, with `--tracemalloc`, the peak of Python and numpy allocations
during it (slower). Used by `bench/long_logs.py --phases`.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status(field: str) -> float:
    """A /proc/self/status field in MiB (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("log", type=Path)
    ap.add_argument("--run", type=Path, help="model (default: the shipped one)")
    ap.add_argument("--tracemalloc", action="store_true")
    args = ap.parse_args()
    rows: list[tuple] = []
    state = {"t": time.perf_counter()}

    def phase(name: str) -> None:
        py = tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc else "-"
        rows.append((name, time.perf_counter() - state["t"], _status("VmRSS"), _status("VmHWM"),
                     py))
        _reset_peak()
        if args.tracemalloc:
            tracemalloc.reset_peak()
        state["t"] = time.perf_counter()

    if args.tracemalloc:
        tracemalloc.start()
    _reset_peak()
    from astra_cli.coarse_commands import load_coarse
    from astra_jax.batching import bucket_sizes
    from astra_jax.features import (Featurised, embed_steps, make_embedder, node_meta,
                                    without_evidence)
    from astra_jax.model import receptive_hops
    from astra_jax.predict import stack_members, top_k_candidates
    from astra_jax.windows import batches, split
    from data_gen.dhcg import build_dhcg
    from data_gen.readers import load_valid_traces
    cfg, members, info = load_coarse(args.run)
    stacked = stack_members(members)
    embedder = make_embedder(cfg.embedder)
    phase("import, model, embedder")
    trace = load_valid_traces([args.log])[0]
    phase("read the log")
    text = embed_steps([trace], embedder)[0]
    phase("step text embeddings")
    g = build_dhcg(trace)
    phase("DHCG build")
    meta = without_evidence(node_meta(trace, g), cfg.dropped)
    feat = Featurised(g, text, meta)
    phase("node metadata + step evidence")
    pieces = split(0, feat, receptive_hops(cfg.model))
    phase("windows (astra_jax/windows.py)")
    cands = top_k_candidates(stacked, cfg, [trace], [feat], 3, info)
    phase("pack, forward, combine, candidates")
    n, e = len(g.node_type), len(g.senders)
    piece_nodes = sum(len(p.feat.graph.node_type) for p in pieces)
    piece_edges = sum(len(p.feat.graph.senders) for p in pieces)
    sizes = {bucket_sizes([p.feat for p in chunk]) for chunk in batches(pieces, cfg.batch_size)}
    from astra_cli.table import format_table
    print(format_table(("phase", "seconds", "RSS after MiB", "peak during MiB",
                        "Python/numpy peak MiB"), rows))
    print(f"{len(trace.steps)} steps, {n} nodes, {e} edges, {len(g.agents)} agents; "
          f"{len(pieces)} piece(s) of {piece_nodes} nodes and {piece_edges} edges in all; "
          f"batches padded to (nodes, spatial edges, temporal edges, agents) {', '.join(map(str, sorted(sizes)))}; "
          f"embedder {embedder.name} ({text.shape[1]}); "
          f"{len(cands[0]['agents'])} candidate agents; process peak {max(r[3] for r in rows):.0f}"
          f" MiB")


if __name__ == "__main__":
    main()
