"""`astra run` (traces → coarse → fine → verdicts → report) and `astra eval`.

Each stage writes its file into the run's output directory (`candidates.jsonl`, `verdicts.jsonl`,
`eval.json`, `eval.md`, `report/`), and `--from STAGE` restarts from that stage by reading the
files the earlier stages left there, so a fine stage on another machine, or a second look at the
report, never repeats the coarse stage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from data_gen.readers import load_traces
from data_gen.stage_files import coarse_verdict, read_stage_file, write_stage_file
from data_gen.trace import CANDIDATES_SCHEMA, VERDICT_SCHEMA, Trace

STAGES = ("coarse", "fine", "report")


def add_commands(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="traces → coarse → fine → verdicts → evaluation + HTML report")
    r.add_argument("traces", nargs="+", type=Path, help="trace files or directories, any format")
    r.add_argument("--coarse", type=Path, help="coarse run directory from `astra train` "
                   "(needed when starting from the coarse stage)")
    r.add_argument("--out", type=Path, required=True, help="output directory")
    r.add_argument("--from", dest="start", choices=STAGES, default="coarse",
                   help="restart from this stage, reusing the earlier stages' files in --out")
    r.add_argument("--top-k", type=int, default=3, help="candidate agents passed to the fine stage")
    r.add_argument("--strategy", default="coarse-to-fine",
                   help="fine-stage strategy (see `astra-llm localize --help`)")
    r.add_argument("--budget", type=int, default=4096, help="prompt token budget")
    r.add_argument("--threshold", type=float, default=0.0,
                   help="below this confidence the verdict is reported as unsure")
    r.add_argument("--no-html", action="store_true", help="skip the HTML report")
    g = r.add_argument_group("fine stage (coarse only when neither is given)")
    g.add_argument("--model", help="local model directory (e.g. Qwen3-8B)")
    g.add_argument("--adapter", help="LoRA adapter directory from `astra-llm finetune`")
    g.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    g.add_argument("--llm-model", help="model name to send to the endpoint")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="strict scores of verdicts (or candidates) against labels")
    e.add_argument("traces", nargs="+", type=Path, help="labelled traces")
    e.add_argument("--verdicts", type=Path, help="verdicts JSONL (astra.verdict/v1)")
    e.add_argument("--candidates", type=Path,
                   help="candidates JSONL: top-K recall, and the verdicts when none are given")
    e.add_argument("--top-k", type=int, default=3)
    e.add_argument("--threshold", type=float, default=0.0)
    e.add_argument("--method", default="ASTRA-JAX", help="the method's name in the tables")
    e.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    e.add_argument("--json", type=Path, help="write the full evaluation here (astra.eval/v1)")
    e.add_argument("--md", type=Path, help="write the Markdown tables here")
    e.set_defaults(func=cmd_eval)


def _load(paths: list[Path]) -> list[Trace]:
    report = load_traces(paths)
    for e in report.errors:
        print(f"skipped (invalid): {e}", file=sys.stderr)
    return report.traces


def _read(path: Path, schema: str) -> dict[str, dict]:
    rows, bad = read_stage_file(path, schema)
    for b in bad:
        print(f"skipped: {b}", file=sys.stderr)
    return rows


def evaluate_and_write(traces: list[Trace], verdicts: dict[str, dict],
                       candidates: dict[str, dict], args: argparse.Namespace,
                       json_path: Path | None, md_path: Path | None) -> dict[str, Any] | None:
    """Score, write JSON/Markdown, print the tables; None when no trace carries a label."""
    from astra_eval.markdown import eval_markdown
    from astra_eval.scoring import evaluate
    if not any(t.label for t in traces):
        print("no labelled traces: nothing to score")
        return None
    report = evaluate(traces, verdicts, candidates, args.top_k, args.threshold,
                      getattr(args, "method", "ASTRA-JAX"), getattr(args, "seed", 0))
    md = eval_markdown(report)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1), "utf-8")
    if md_path:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(md, "utf-8")
    print(md)
    return report


def cmd_eval(args: argparse.Namespace) -> int:
    if not args.verdicts and not args.candidates:
        print("error: give --verdicts, --candidates or both", file=sys.stderr)
        return 2
    traces = _load(args.traces)
    cands = _read(args.candidates, CANDIDATES_SCHEMA) if args.candidates else {}
    verdicts = (_read(args.verdicts, VERDICT_SCHEMA) if args.verdicts
                else {k: coarse_verdict(c) for k, c in cands.items()})
    unknown = set(verdicts) - {t.trace_id for t in traces}
    if unknown:
        print(f"warning: {len(unknown)} verdicts name traces not given, e.g. "
              f"{sorted(unknown)[0]!r}", file=sys.stderr)
    report = evaluate_and_write(traces, verdicts, cands, args, args.json, args.md)
    return 0 if report else 1


def _coarse(args: argparse.Namespace, traces: list[Trace], path: Path) -> dict[str, dict]:
    from astra_cli.coarse_commands import predict_traces
    if args.coarse is None:
        raise SystemExit("error: --coarse RUN_DIR is needed to start from the coarse stage")
    print(f"== coarse stage: {len(traces)} traces, model {args.coarse}")
    cands = predict_traces(args.coarse, traces, args.top_k)
    write_stage_file(cands, path)
    print(f"wrote {len(cands)} candidate records to {path}")
    return {c["trace_id"]: c for c in cands}


def _fine(args: argparse.Namespace, traces: list[Trace], cands: dict[str, dict],
          path: Path) -> dict[str, dict]:
    """Verdicts from the fine stage, or from the coarse stage when no model is given. Traces the
    fine stage cannot handle are reported, and get the coarse verdict so none is lost."""
    if not (args.model or args.llm_url):
        print("== fine stage: none (coarse only); give --model or --llm-url to run one")
        verdicts = {k: coarse_verdict(c) for k, c in cands.items()}
    else:
        from llm_stage.cli import make_backend
        from llm_stage.localize import localize
        backend = make_backend(args)
        print(f"== fine stage: {backend.name}, strategy {args.strategy}")
        verdicts = {}
        for v in localize(traces, cands, backend, args.strategy, args.budget, args.top_k,
                          total=len(traces)):
            if isinstance(v, str):
                print(f"fine stage failed: {v}", file=sys.stderr)
                continue
            verdicts[v["trace_id"]] = v
        for t in traces:
            if t.trace_id not in verdicts and t.trace_id in cands:
                verdicts[t.trace_id] = {**coarse_verdict(cands[t.trace_id]), "fallback": True,
                                        "reason": "coarse stage's top choice (fine stage failed)"}
    missing = [t.trace_id for t in traces if t.trace_id not in verdicts]
    if missing:
        print(f"warning: {len(missing)} traces have no verdict (no candidates), e.g. "
              f"{missing[0]!r}", file=sys.stderr)
    write_stage_file((verdicts[t.trace_id] for t in traces if t.trace_id in verdicts), path)
    print(f"wrote {len(verdicts)} verdicts to {path}")
    return verdicts


def cmd_run(args: argparse.Namespace) -> int:
    traces = _load(args.traces)
    if not traces:
        print("error: no valid traces", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    cand_path, verdict_path = args.out / "candidates.jsonl", args.out / "verdicts.jsonl"
    start = STAGES.index(args.start)
    for stage, path in (("fine", cand_path), ("report", verdict_path)):
        if start >= STAGES.index(stage) and not path.exists():
            print(f"error: --from {args.start} needs {path} from an earlier run", file=sys.stderr)
            return 2
    cands = (_coarse(args, traces, cand_path) if start == 0
             else _read(cand_path, CANDIDATES_SCHEMA))
    verdicts = (_fine(args, traces, cands, verdict_path) if start <= 1
                else _read(verdict_path, VERDICT_SCHEMA))
    report = evaluate_and_write(traces, verdicts, cands, args, args.out / "eval.json",
                                args.out / "eval.md")
    if not args.no_html:
        from astra_eval.html_report import write_reports
        index = write_reports(args.out / "report", traces, cands, verdicts, report,
                              args.threshold)
        print(f"report: {index.resolve().as_uri()}")
    return 0
