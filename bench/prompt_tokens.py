"""Prompt tokens per trace: the coarse-to-fine prompt (K = 1..4) against the all-at-once prompt,
on the Who&When development logs, and how often the labelled step survives into the prompt.

    python bench/prompt_tokens.py [--candidates C.jsonl] [--tokenizer MODEL_DIR] [--budget 4096]

Candidates come from `astra predict` when given, else from the label-free heuristic ranker.
Tokens are counted with the tokenizer of MODEL_DIR (e.g. a Qwen3-8B directory) when given, else
estimated at 4 characters per token.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from astra_cli.table import format_table  # noqa: E402
from data_gen.readers import load_traces  # noqa: E402
from llm_stage.backends import token_counter  # noqa: E402
from data_gen.stage_files import read_stage_file  # noqa: E402
from data_gen.trace import CANDIDATES_SCHEMA  # noqa: E402
from llm_stage.prompts import focused_prompt, full_prompt  # noqa: E402
from llm_stage.ranker import heuristic_candidates  # noqa: E402

DEV = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Algorithm-Generated"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--candidates", type=Path)
    ap.add_argument("--tokenizer")
    ap.add_argument("--budget", type=int, default=4096)
    args = ap.parse_args()
    traces = [t for t in load_traces(args.data).traces if t.label]
    count = token_counter(args.tokenizer)
    cands = read_stage_file(args.candidates, CANDIDATES_SCHEMA)[0] if args.candidates else {}
    full = [full_prompt(t, 1 << 20, count).tokens for t in traces]
    rows = [("all-at-once", "-", statistics.mean(full), statistics.median(full), 1.0, 1.0, 1.0,
             0.0)]
    for k in (1, 2, 3, 4):
        toks, step_in, agent_in, cut = [], 0, 0, 0
        for t in traces:
            c = cands.get(t.trace_id) or heuristic_candidates(t, 4)
            c = dict(c, agents=c["agents"][:k])
            p = focused_prompt(t, c, args.budget, count)
            toks.append(p.tokens)
            step_in += t.label.step in p.shown_steps
            agent_in += t.label.agent in [a["agent"] for a in c["agents"]]
            cut += p.truncated
        n = len(traces)
        rows.append(("coarse-to-fine", k, statistics.mean(toks), statistics.median(toks),
                     statistics.mean(toks) / statistics.mean(full), agent_in / n, step_in / n,
                     cut / n))
    source = f"candidates {args.candidates}" if args.candidates else "heuristic ranker"
    unit = f"tokenizer {args.tokenizer}" if args.tokenizer else "~4 chars/token estimate"
    print(f"{len(traces)} labelled traces from {args.data}; {source}; {unit}; focused budget "
          f"{args.budget}")
    print(format_table(("prompt", "K", "mean tokens", "median tokens", "vs all-at-once",
                        "label agent in top-K", "label step in prompt", "truncated"), rows))


if __name__ == "__main__":
    main()
