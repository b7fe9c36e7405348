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
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from astra_cli.data_commands import add_labels_arg, load_labelled
from data_gen.dhcg import build_dhcg
from data_gen.readers import load_valid_traces
from data_gen.stage_files import (SINGLE_AGENT, coarse_verdict, read_stage_rows,
                                  write_stage_file)
from data_gen.trace import CANDIDATES_SCHEMA, VERDICT_SCHEMA, Trace
from llm_stage.cli import add_answer_tokens_arg, add_backend_args
from llm_stage.strategies import ANSWER_TOKENS

STAGES = ("coarse", "fine", "report")


def add_commands(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="traces → coarse → fine → verdicts → evaluation + HTML report")
    r.add_argument("traces", nargs="+", type=Path, help="trace files or directories, any format")
    add_labels_arg(r)
    r.add_argument("--coarse", type=Path, help="coarse model: a run directory of `astra train` "
                   "or a file of `astra export` (default: the model shipped with the package)")
    r.add_argument("--out", type=Path, required=True, help="output directory")
    r.add_argument("--from", dest="start", choices=STAGES, default="coarse",
                   help="restart from this stage, reusing the earlier stages' files in --out")
    r.add_argument("--top-k", type=int, default=3, help="candidate agents passed to the fine stage")
    r.add_argument("--strategy", default="coarse-to-fine",
                   help="fine-stage strategy (see `astra-llm localize --help`)")
    r.add_argument("--budget", type=int, default=4096, help="prompt token budget")
    add_answer_tokens_arg(r)
    r.add_argument("--threshold", type=float, default=0.0,
                   help="below this confidence the verdict is reported as unsure")
    r.add_argument("--no-html", action="store_true", help="skip the HTML report")
    from astra_cli.coarse_commands import add_mark_args
    from astra_cli.size_guard import add_max_steps_arg
    add_mark_args(r)
    add_max_steps_arg(r)
    r.add_argument("--gate", default="auto", metavar="auto|off|FILE",
                   help="the gate between the stages (docs/pipeline.md): auto (default) uses "
                   "OUT/astra_gate.json, else ADAPTER/astra_gate.json, when present; off: the "
                   "fine stage's answers as they are")
    r.add_argument("--fit-gate", nargs="+", type=Path, metavar="LABELLED_LOGS",
                   help="fit the gate on these labelled logs (ones the fine stage did not train "
                   "on; the run's own traces among them are gated out-of-fold) and save it as "
                   "OUT/astra_gate.json")
    add_backend_args(r.add_argument_group("fine stage (coarse only when neither --model nor "
                                          "--llm-url is given)"))
    r.set_defaults(func=cmd_run, compiles=True)

    e = sub.add_parser("eval", help="strict scores of verdicts (or candidates) against labels")
    e.add_argument("traces", nargs="+", type=Path, help="labelled traces")
    add_labels_arg(e)
    e.add_argument("--verdicts", type=Path, help="verdicts JSONL (astra.verdict/v1)")
    e.add_argument("--candidates", type=Path,
                   help="candidates JSONL: top-K recall, and the verdicts when none are given")
    e.add_argument("--top-k", type=int, default=3)
    e.add_argument("--threshold", type=float, default=0.0)
    e.add_argument("--method", help="the method's name in the tables (default: from the "
                   "verdicts: coarse, or coarse→fine with the coarse stage alone beside it)")
    e.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    e.add_argument("--json", type=Path, help="write the full evaluation here (astra.eval/v1)")
    e.add_argument("--md", type=Path, help="write the Markdown tables here")
    e.set_defaults(func=cmd_eval)


COARSE_ONLY = "ASTRA-JAX coarse only"


def methods_of(verdicts: dict[str, dict], cands: dict[str, dict]) -> dict[str, dict[str, dict]]:
    """The methods a run's verdicts stand for. When a fine stage produced them, the coarse
    stage alone is scored beside it, so the table shows what the language model adds; when a
    gate chose between the two, the fine stage alone is scored too."""
    from llm_stage.gate_apply import fine_only
    fine = next((v["backend"] for v in verdicts.values() if v.get("backend")), None)
    if fine is None:
        return {"ASTRA-JAX coarse": verdicts}
    coarse = {COARSE_ONLY: {k: coarse_verdict(c) for k, c in cands.items()}}
    if not any(v.get("gate") for v in verdicts.values()):
        return {f"ASTRA-JAX coarse→fine ({fine})": verdicts, **coarse}
    return {f"ASTRA-JAX gated coarse→fine ({fine})": verdicts,
            f"ASTRA-JAX coarse→fine ({fine})": {k: fine_only(v) for k, v in verdicts.items()},
            **coarse}


def evaluate_and_write(traces: list[Trace], methods: dict[str, dict[str, dict]],
                       candidates: dict[str, dict], k: int, threshold: float, seed: int,
                       json_path: Path | None, md_path: Path | None,
                       graphs: dict | None = None) -> dict[str, Any] | None:
    """Score, write JSON/Markdown, print the tables; None when no trace carries a label.
    `graphs`: the traces' DHCGs by trace id, when the caller has them."""
    from astra_eval.markdown import eval_markdown
    from astra_eval.scoring import evaluate
    if not any(t.label for t in traces):
        print("no labelled traces: nothing to score")
        return None
    report = evaluate(traces, methods, candidates, k, threshold, seed,
                      changed_from=COARSE_ONLY if COARSE_ONLY in methods else None,
                      graphs=graphs)
    md = eval_markdown(report)
    for path, text in ((json_path, json.dumps(report, indent=1)), (md_path, md)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
    print(md)
    return report


def cmd_eval(args: argparse.Namespace) -> int:
    if not args.verdicts and not args.candidates:
        print("error: give --verdicts, --candidates or both", file=sys.stderr)
        return 2
    traces = load_labelled(args.traces, args.labels)
    cands = read_stage_rows(args.candidates, CANDIDATES_SCHEMA) if args.candidates else {}
    verdicts = (read_stage_rows(args.verdicts, VERDICT_SCHEMA) if args.verdicts
                else {k: coarse_verdict(c) for k, c in cands.items()})
    unknown = set(verdicts) - {t.trace_id for t in traces}
    if unknown:
        print(f"warning: {len(unknown)} verdicts name traces not given, e.g. "
              f"{sorted(unknown)[0]!r}", file=sys.stderr)
    methods = {args.method: verdicts} if args.method else methods_of(verdicts, cands)
    report = evaluate_and_write(traces, methods, cands, args.top_k, args.threshold, args.seed,
                                args.json, args.md)
    return 0 if report else 1


@dataclass(frozen=True)
class RunOptions:
    top_k: int = 3
    strategy: str = "coarse-to-fine"
    budget: int = 4096
    threshold: float = 0.0
    html: bool = True
    seed: int = 0
    answer_tokens: int = ANSWER_TOKENS  # the fine stage's longest answer
    gate: str = "auto"  # "auto", "off" or a gate file (docs/pipeline.md)
    gate_traces: tuple[Trace, ...] = ()  # labelled traces to fit the gate on
    adapter: str | None = None  # where else a gate file may be (ADAPTER/astra_gate.json)


def coarse_stage(run: Path | None, traces: list[Trace], k: int, path: Path
                 ) -> tuple[dict[str, dict], dict]:
    """The candidates by trace id, written to `path`, and each trace's DHCG by trace id."""
    from astra_cli.coarse_commands import coarse_candidates
    print(f"== coarse stage: {len(traces)} traces, model {run or 'shipped with the package'}")
    t0 = time.perf_counter()
    cands, graphs = coarse_candidates(run, traces, k)
    share = round((time.perf_counter() - t0) / max(len(cands), 1), 4)
    for c in cands:  # the batch's time, loading and featurising included, shared per trace
        c["latency_s"] = share
    write_stage_file(cands, path)
    print(f"wrote {len(cands)} candidate records to {path}")
    return {c["trace_id"]: c for c in cands}, graphs


def fine_stage(backend, traces: list[Trace], cands: dict[str, dict], opts: RunOptions
               ) -> dict[str, dict]:
    """Verdicts from the fine stage, or from the coarse stage when there is no backend. Traces
    the fine stage cannot handle are reported and get the coarse verdict, so none is lost."""
    if backend is None:
        print("== fine stage: none (coarse only); give --model or --llm-url to run one")
        verdicts = {k: coarse_verdict(c) for k, c in cands.items()}
    else:
        from llm_stage.localize import localize
        print(f"== fine stage: {backend.name}, strategy {opts.strategy}")
        verdicts = {}
        for v in localize(traces, cands, backend, opts.strategy, opts.budget, opts.top_k,
                          total=len(traces), answer_tokens=opts.answer_tokens):
            if isinstance(v, str):
                print(f"fine stage failed: {v}", file=sys.stderr)
                continue
            if cands.get(v["trace_id"], {}).get("single_agent") and not str(
                    v.get("reason", "")).startswith(SINGLE_AGENT):
                v["reason"] = f"{SINGLE_AGENT}; {v.get('reason') or ''}".rstrip("; ")
            coarse = cands.get(v["trace_id"], {}).get("latency_s", 0.0)
            v["latency_s"] = round(v["latency_s"] + coarse, 4)  # the whole pipeline's time
            verdicts[v["trace_id"]] = v
        for t in traces:
            if t.trace_id not in verdicts and t.trace_id in cands:
                verdicts[t.trace_id] = {**coarse_verdict(cands[t.trace_id]), "fallback": True,
                                        "backend": backend.name, "reason":
                                        "coarse stage's top choice (the fine stage failed)"}
    missing = [t.trace_id for t in traces if t.trace_id not in verdicts]
    if missing:
        print(f"warning: {len(missing)} traces have no verdict (no candidates), e.g. "
              f"{missing[0]!r}", file=sys.stderr)
    return verdicts


def gated_fine_stage(backend, traces: list[Trace], cands: dict[str, dict], opts: RunOptions,
                     out: Path, coarse_run: Path | None) -> dict[str, dict]:
    """The fine stage, then the gate (astra_cli/gate_stage.py). With `opts.gate_traces`, the
    coarse and fine stages first run on those of them that are not the run's own traces (their
    files in OUT/gate_fit/), and the gate is fitted on all of them."""
    from astra_cli.gate_stage import gate_stage
    verdicts = fine_stage(backend, traces, cands, opts)
    if backend is None:
        return verdicts
    fit = None
    if opts.gate_traces:
        own = {t.trace_id: t for t in traces}
        new = [t for t in opts.gate_traces if own.get(t.trace_id) != t]
        fit_c = coarse_stage(coarse_run, new, opts.top_k, out / "gate_fit" / "candidates.jsonl"
                             )[0] if new else {}
        fit_v = fine_stage(backend, new, fit_c, opts) if new else {}
        write_stage_file(fit_v.values(), out / "gate_fit" / "verdicts.jsonl")
        fit = (list(opts.gate_traces), fit_c, fit_v)
    return gate_stage(backend.name, opts.strategy, traces, cands, verdicts, opts.gate, out,
                      opts.adapter, fit, opts.seed)


def run_pipeline(traces: list[Trace], out: Path, start: str, coarse_run: Path | None, backend,
                 opts: RunOptions) -> tuple[dict, dict, dict | None]:
    """Run the stages from `start` on, each writing its file into `out`; returns candidates,
    verdicts and the evaluation (None without labels)."""
    out.mkdir(parents=True, exist_ok=True)
    cand_path, verdict_path = out / "candidates.jsonl", out / "verdicts.jsonl"
    first = STAGES.index(start)
    for stage, path in (("fine", cand_path), ("report", verdict_path)):
        if first >= STAGES.index(stage) and not path.exists():
            raise SystemExit(f"error: --from {start} needs {path} from an earlier run")
    if first == 0:  # each trace's DHCG is built once, here or by the coarse stage
        cands, graphs = coarse_stage(coarse_run, traces, opts.top_k, cand_path)
    else:
        cands, graphs = read_stage_rows(cand_path, CANDIDATES_SCHEMA), {
            t.trace_id: build_dhcg(t) for t in traces}
    if first <= 1:
        verdicts = gated_fine_stage(backend, traces, cands, opts, out, coarse_run)
        write_stage_file((verdicts[t.trace_id] for t in traces if t.trace_id in verdicts),
                         verdict_path)
        print(f"wrote {len(verdicts)} verdicts to {verdict_path}")
    else:
        verdicts = read_stage_rows(verdict_path, VERDICT_SCHEMA)
    report = evaluate_and_write(traces, methods_of(verdicts, cands), cands, opts.top_k,
                                opts.threshold, opts.seed, out / "eval.json", out / "eval.md",
                                graphs)
    if opts.html:
        from astra_eval.html_report import write_reports
        index = write_reports(out / "report", traces, cands, verdicts, report, opts.threshold,
                              graphs=graphs)
        print(f"report: {index.resolve().as_uri()}")
    return cands, verdicts, report


def fitting_traces(traces: list[Trace], max_steps: int | None) -> list[Trace]:
    """The traces short enough for this machine's memory (astra_cli/size_guard.py); each one
    left out is reported on stderr with its steps, estimated memory and the limit."""
    from astra_cli.size_guard import refusal, step_limit
    limit = step_limit(max_steps)
    kept = []
    for t in traces:
        why = refusal(t, limit)
        if why:
            print(f"left out, too long: {why}", file=sys.stderr)
        else:
            kept.append(t)
    return kept


def cmd_run(args: argparse.Namespace) -> int:
    from astra_cli.coarse_commands import marked_traces
    traces = marked_traces(load_labelled(args.traces, args.labels), args)
    if not traces:
        print("error: no valid traces", file=sys.stderr)
        return 1
    traces = fitting_traces(traces, args.max_steps)
    if not traces:
        print("error: every trace is too long for this machine's memory", file=sys.stderr)
        return 2
    backend = None
    if (args.model or args.llm_url) and args.start != "report":
        from llm_stage.cli import make_backend
        backend = make_backend(args)
    if args.fit_gate and (args.gate != "auto" or not (args.model or args.llm_url)
                          or args.start == "report"):
        print("error: --fit-gate fits the gate of a fine stage: it needs --model or --llm-url, "
              "and neither --gate nor --from report", file=sys.stderr)
        return 2
    gate_traces = tuple(load_valid_traces(args.fit_gate)) if args.fit_gate else ()
    opts = RunOptions(args.top_k, args.strategy, args.budget, args.threshold, not args.no_html,
                      answer_tokens=args.answer_tokens, gate=args.gate, gate_traces=gate_traces,
                      adapter=args.adapter)
    try:
        run_pipeline(traces, args.out, args.start, args.coarse, backend, opts)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    return 0
