"""`astra-llm`: the fine stage from the command line (prep, finetune, localize, fit-gate, serve,
tiny)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_gen.readers import load_valid_traces


def _candidates(path: Path | None) -> dict[str, dict]:
    from data_gen.stage_files import read_stage_rows
    from data_gen.trace import CANDIDATES_SCHEMA
    return {} if path is None else read_stage_rows(path, CANDIDATES_SCHEMA)


def make_backend(args: argparse.Namespace):
    """A local model (--model DIR [--adapter DIR]) or an endpoint (--llm-url URL)."""
    from data_gen.chat_client import ChatConfig
    from llm_stage.backends import EndpointBackend, LocalBackend
    if args.parallel < 1:
        raise SystemExit(f"error: --parallel must be at least 1, not {args.parallel}")
    if args.model:
        if args.adapter:
            from llm_stage.finetune import check_adapter
            check_adapter(args.adapter)
        return LocalBackend(args.model, args.adapter, parallel=args.parallel)
    cfg = ChatConfig.from_env(url=args.llm_url, model=args.llm_model)
    if not cfg.url:
        raise SystemExit("error: give --model DIR (local) or --llm-url URL (endpoint)")
    return EndpointBackend(cfg, parallel=args.parallel)


def add_answer_tokens_arg(p: argparse.ArgumentParser) -> None:
    from llm_stage.strategies import ANSWER_TOKENS
    p.add_argument("--answer-tokens", type=int, default=ANSWER_TOKENS,
                   help="the longest answer generated, in tokens (yes/no questions of the "
                   "step-by-step and binary-search strategies ask for fewer)")


def add_backend_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    from llm_stage.backends import DEFAULT_PARALLEL
    p.add_argument("--model", help="local model directory (e.g. a Qwen3-8B download)")
    p.add_argument("--adapter", help="LoRA adapter directory from `astra-llm finetune`")
    p.add_argument("--llm-url", help="OpenAI-compatible endpoint base URL, e.g. "
                                     "http://localhost:8000/v1 (or ASTRA_LLM_URL)")
    p.add_argument("--llm-model", help="model name to send to the endpoint (or ASTRA_LLM_MODEL)")
    p.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help="calls in flight at once: a local model generates them as one batch, "
                   "an endpoint gets them as concurrent requests")


def cmd_prep(args) -> int:
    from llm_stage.sft import sft_rows
    from llm_stage.backends import token_counter
    counter = token_counter(args.tokenizer)
    train, held, skipped = sft_rows(load_valid_traces(args.traces), _candidates(args.candidates),
                                    args.budget, counter, args.top_k, args.held_out)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", held)):
        (args.out / name).write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    for s in skipped:
        print(f"skipped: {s}", file=sys.stderr)
    print(f"wrote {len(train)} training and {len(held)} held-out rows to {args.out} "
          f"({len(skipped)} skipped)")
    return 0


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text("utf-8").splitlines() if x.strip()]


def cmd_finetune(args) -> int:
    from llm_stage.finetune import FinetuneConfig, finetune
    cfg = FinetuneConfig(base_model=args.base_model, out_dir=str(args.out), epochs=args.epochs,
                         max_steps=args.max_steps, lr=args.lr, batch_size=args.batch_size,
                         grad_accum=args.grad_accum, r=args.r, alpha=args.alpha,
                         dropout=args.dropout, target_modules=tuple(args.target_modules),
                         max_length=args.max_length,
                         gradient_checkpointing=not args.no_gradient_checkpointing)
    held = _rows(args.data / "heldout.jsonl") if (args.data / "heldout.jsonl").exists() else []
    metrics, _ = finetune(cfg, _rows(args.data / "train.jsonl"), held)
    print(json.dumps(metrics, indent=1))
    print(f"adapter saved to {args.out / 'adapter'}")
    return 0


def cmd_localize(args) -> int:
    from llm_stage.localize import localize
    traces = load_valid_traces(args.traces)
    backend = make_backend(args)
    n = failed = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as f:
        for v in localize(traces, _candidates(args.candidates), backend, args.strategy,
                          args.budget, args.top_k, total=len(traces),
                          answer_tokens=args.answer_tokens):
            if isinstance(v, str):
                failed += 1
                print(f"skipped: {v}", file=sys.stderr)
                continue
            n += 1
            f.write(json.dumps(v) + "\n")
            f.flush()
    print(f"wrote {n} verdicts to {args.out}" + (f" ({failed} traces failed)" if failed else ""))
    return 0 if n else 1


def cmd_fit_gate(args) -> int:
    """Fit the gate on labelled logs, their candidates and `localize`'s verdicts on them."""
    from data_gen.stage_files import read_stage_rows
    from data_gen.trace import VERDICT_SCHEMA
    from llm_stage.gate import GateError, describe, fit_gate, labelled_rows, labels_of
    from llm_stage.gate_apply import identity_of_verdicts, save_gate
    traces = load_valid_traces(args.traces)
    cands = _candidates(args.candidates)
    fine = read_stage_rows(args.verdicts, VERDICT_SCHEMA)
    labels = labels_of(traces)
    rows = labelled_rows(cands, fine, labels)
    try:
        identity = identity_of_verdicts(fine.values(), str(args.verdicts))
        gate = fit_gate(rows, labels, identity, next((c.get("model") or {}
                                                      for c in cands.values()), {}), args.seed)
    except GateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"gate: {describe(gate)}")
    print(f"wrote the gate to {save_gate(gate, args.out)} (for {identity['backend']}, "
          f"{identity['strategy']}, {identity['prompt_version']})")
    return 0


def cmd_serve(args) -> int:
    from llm_stage.server import ServerConfig, make_server
    backend = make_backend(args)
    server = make_server(backend, ServerConfig(host=args.host, port=args.port,
                                               max_body=args.max_body_mb * 1024 * 1024))
    print(f"serving {backend.name} on http://{args.host}:{server.server_port} "
          "(POST /v1/chat/completions, POST /v1/localize)", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    return 0


def cmd_tiny(args) -> int:
    from llm_stage.tiny import build_tiny_model, tiny_texts
    out = build_tiny_model(args.out, tiny_texts(load_valid_traces(args.traces)),
                           pretrain_steps=args.pretrain_steps)
    print(f"tiny Qwen3 model written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from llm_stage.strategies import STRATEGIES
    ap = argparse.ArgumentParser(prog="astra-llm", description="ASTRA-JAX fine stage")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prep", help="labelled traces + candidates → chat SFT JSONL")
    p.add_argument("traces", nargs="+", type=Path)
    p.add_argument("--candidates", type=Path, help="candidates JSONL (default: heuristic ranker)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--budget", type=int, default=4096, help="prompt token budget")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--held-out", type=float, default=0.1)
    p.add_argument("--tokenizer", help="count tokens with this model directory's tokenizer")
    p.set_defaults(func=cmd_prep)

    p = sub.add_parser("finetune", help="LoRA fine-tuning on `prep` output")
    p.add_argument("data", type=Path, help="directory with train.jsonl (and heldout.jsonl)")
    p.add_argument("--base-model", required=True, help="local model directory, e.g. Qwen3-8B")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=8)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--target-modules", nargs="+", default=["q_proj", "k_proj", "v_proj",
                   "o_proj", "gate_proj", "up_proj", "down_proj"])
    p.add_argument("--max-length", type=int, default=6144)
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("localize", help="traces + candidates → verdicts JSONL")
    p.add_argument("traces", nargs="+", type=Path)
    p.add_argument("--candidates", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--strategy", choices=tuple(STRATEGIES), default="coarse-to-fine")
    p.add_argument("--budget", type=int, default=4096)
    p.add_argument("--top-k", type=int, default=3)
    add_answer_tokens_arg(p)
    add_backend_args(p)
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser("fit-gate", help="fit the gate between the stages on labelled logs "
                       "the fine stage did not train on (docs/fine_stage.md)")
    p.add_argument("traces", nargs="+", type=Path, help="labelled logs")
    p.add_argument("--candidates", type=Path, required=True, help="their candidates JSONL")
    p.add_argument("--verdicts", type=Path, required=True,
                   help="`astra-llm localize`'s verdicts on them (the fine stage to gate)")
    p.add_argument("--out", type=Path, required=True,
                   help="the gate file, e.g. ft/adapter/astra_gate.json (beside the adapter, "
                   "where `astra run --adapter` finds it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the cross-validation folds")
    p.set_defaults(func=cmd_fit_gate)

    p = sub.add_parser("serve", help="HTTP server: /v1/chat/completions and /v1/localize")
    add_backend_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-body-mb", type=int, default=8)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("tiny", help="build a tiny local Qwen3-architecture model to try things")
    p.add_argument("traces", nargs="+", type=Path, help="traces to train its tokenizer on")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.set_defaults(func=cmd_tiny)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
