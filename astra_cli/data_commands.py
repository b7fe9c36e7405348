"""`astra gen` and `astra traces validate | stats | convert`."""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from astra_cli.table import format_table
from data_gen.labels import LabelsError, apply_labels, read_labels
from data_gen.readers import ENCODERS, iter_traces, load_traces, load_valid_traces, write_traces
from data_gen.sim.generate import GenConfig, generate
from data_gen.sim.teams import TEAMS
from data_gen.stats import STATS_HEADERS, stats_rows
from data_gen.trace import FAULT_MODES, VARIANTS, Trace, TraceError

REPO = Path(__file__).resolve().parent.parent
DEV_LOGS = REPO / "data" / "who_and_when"  # both frameworks: Algorithm-Generated, Hand-Crafted


def _csv(choices: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return items
    return parse


def positive_int(text: str) -> int:
    """An argparse type for counts that must be at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {n}")
    return n


def share(text: str) -> float:
    """An argparse type for a share of a whole that must lie strictly between 0 and 1."""
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, not {x}")
    return x


def add_labels_arg(p: argparse.ArgumentParser) -> None:
    """`--labels FILE...`, the same on every command that reads labelled logs."""
    p.add_argument("--labels", nargs="+", action="extend", type=Path, default=[], metavar="FILE",
                   help="astra.labels/v1 JSONL files (the report saves them): each label "
                   "overrides or adds to the one in its log; bad lines are listed and skipped")


def with_labels(traces: list[Trace], label_files: list[Path]) -> list[Trace]:
    """`traces` with the labels of `label_files` applied (data_gen/labels.py): every line left
    out is listed on stderr with its file and line, and a summary says what was used. Raises
    LabelsError (exit 2) when files were given and not one label in them could be used."""
    if not label_files:
        return traces
    labels, problems = read_labels(label_files)
    out, unused = apply_labels(traces, labels)
    for p in problems + unused:
        print(f"skipped label: {p}", file=sys.stderr)
    changed = [(a, b) for a, b in zip(traces, out) if a is not b]
    if not changed:
        raise LabelsError(f"no usable label in {', '.join(map(str, label_files))} "
                          f"({len(problems) + len(unused)} problem(s) listed above)")
    replaced = sum(a.label is not None for a, _ in changed)
    not_failed = sum(b.label is None for _, b in changed)
    print(f"labels: {len(changed)} trace(s) labelled from {len(label_files)} file(s) "
          f"({replaced} replacing the log's own label, {not_failed} marked as not failed); "
          f"{len(problems) + len(unused)} line(s) skipped", file=sys.stderr)
    return out


def load_labelled(paths: list[Path], label_files: list[Path]) -> list[Trace]:
    """The valid traces under `paths` (bad records listed) with `label_files` applied."""
    return with_labels(load_valid_traces(paths), label_files)


def add_commands(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gen", help="simulate agent-team runs with injected, verified faults")
    g.add_argument("--tasks", type=int, default=1000, help="tasks; each gives up to 3 traces")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--topologies", type=_csv(tuple(TEAMS)), default=tuple(TEAMS),
                   help=f"comma-separated, from {', '.join(TEAMS)}")
    g.add_argument("--faults", type=_csv(FAULT_MODES), default=FAULT_MODES,
                   help=f"comma-separated fault modes, from {', '.join(FAULT_MODES)}")
    g.add_argument("--variants", type=_csv(VARIANTS), default=VARIANTS)
    g.add_argument("--max-tools", type=int, default=GenConfig.max_tools,
                   help="longest tool chain per task (drawn log-uniformly up to it)")
    g.add_argument("--format", choices=("native", "whowhen"), default="native")
    g.add_argument("--layout", choices=("jsonl", "files"), default="jsonl",
                   help="one JSONL file, or one JSON file per trace in a directory")
    g.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--llm-url", help="OpenAI-compatible base URL; rewrites text with the model")
    g.add_argument("--llm-model", help="model name (or ASTRA_LLM_MODEL)")
    g.add_argument("--llm-key", help="API key (or ASTRA_LLM_KEY / OPENAI_API_KEY)")
    g.add_argument("--concurrency", type=int, default=4, help="requests in flight (LLM mode)")
    g.set_defaults(func=cmd_gen)

    t = sub.add_parser("traces", help="validate, describe or convert trace files")
    tsub = t.add_subparsers(dest="traces_cmd", required=True)
    v = tsub.add_parser("validate", help="check every record; report bad ones and go on")
    v.add_argument("paths", nargs="+", type=Path)
    v.set_defaults(func=cmd_validate)
    s = tsub.add_parser("stats", help="counts, lengths, labels per topology and variant")
    s.add_argument("paths", nargs="+", type=Path)
    s.set_defaults(func=cmd_stats)
    c = tsub.add_parser("convert", help="convert any readable format to native, Who&When or "
                        "OTLP JSON (for OpenTelemetry viewers)")
    c.add_argument("paths", nargs="+", type=Path)
    c.add_argument("--to", choices=tuple(ENCODERS), required=True)
    c.add_argument("--layout", choices=("jsonl", "files"), default="jsonl")
    c.add_argument("--out", type=Path, required=True)
    c.set_defaults(func=cmd_convert)


def run_gen(cfg: GenConfig, out: Path, fmt: str = "native", layout: str = "jsonl",
            quiet: bool = False) -> tuple[int, Counter, float]:
    """Generate and write; returns (traces written, rejections by reason, seconds)."""
    rejected: Counter = Counter()
    start = time.perf_counter()

    def traces():
        for res in tqdm(generate(cfg, ENCODERS[fmt]), total=cfg.n_tasks, desc="simulating", unit="task",
                        disable=quiet, file=sys.stderr):
            if res.rejected:
                rejected[res.rejected] += 1
            yield from res.traces

    n = write_traces(traces(), out, fmt, layout)
    return n, rejected, time.perf_counter() - start


def cmd_gen(args: argparse.Namespace) -> int:
    cfg = GenConfig(n_tasks=args.tasks, seed=args.seed, topologies=args.topologies,
                    modes=args.faults, variants=args.variants, max_tools=args.max_tools,
                    workers=args.workers)
    if args.llm_url or args.llm_model:
        return _gen_llm(args, cfg)
    n, rejected, secs = run_gen(cfg, args.out, args.format, args.layout)
    print(f"wrote {n:,} traces to {args.out} in {secs:.1f}s ({n / secs:,.0f} traces/s)")
    for reason, count in rejected.most_common():
        print(f"  rejected {count} task(s): {reason}")
    print(format_table(STATS_HEADERS, stats_rows(load_traces(args.out).traces)))
    return 0


def _gen_llm(args: argparse.Namespace, cfg: GenConfig) -> int:
    from data_gen.chat_client import ChatConfig
    from data_gen.sim.llm_text import rewrite_all

    if args.format != "native" or args.layout != "jsonl":
        print("error: LLM mode writes native JSONL (it resumes from it); convert afterwards "
              "with `astra traces convert`", file=sys.stderr)
        return 2
    chat_cfg = ChatConfig.from_env(url=args.llm_url, model=args.llm_model, api_key=args.llm_key)
    traces = [t for res in generate(cfg) for t in res.traces]
    bar = tqdm(total=len(traces), desc="rewriting", unit="trace", file=sys.stderr)
    stats = rewrite_all(traces, chat_cfg, args.out, args.concurrency, on_done=lambda _: bar.update())
    bar.close()
    print(format_table(("traces rewritten", "steps", "kept template text", "prompt tokens",
                        "completion tokens"),
                       [(stats.traces, stats.steps, stats.kept_template, stats.prompt_tokens,
                         stats.completion_tokens)]))
    return 0


def validate_paths(paths: list[Path], quiet: bool = False) -> tuple[int, list[TraceError], list[str]]:
    ok, errors, warnings = 0, [], []
    for path in paths:
        for item in tqdm(iter_traces(path), desc=f"validating {path.name}", unit="rec",
                         disable=quiet, file=sys.stderr):
            if isinstance(item, TraceError):
                errors.append(item)
            else:
                ok += 1
                trace, warns = item
                warnings += [f"{trace.source.get('path', trace.trace_id)}: {w}" for w in warns]
    return ok, errors, warnings


def cmd_validate(args: argparse.Namespace) -> int:
    ok, errors, warnings = validate_paths(args.paths)
    for e in errors:
        print(f"ERROR {e}")
    for w in warnings:
        print(f"warning {w}")
    print(format_table(("valid", "invalid", "warnings"), [(ok, len(errors), len(warnings))]))
    return 1 if errors else 0


def cmd_stats(args: argparse.Namespace) -> int:
    report = load_traces(args.paths)
    for e in report.errors:
        print(f"skipped (invalid): {e}", file=sys.stderr)
    if not report.traces:
        print("no valid traces", file=sys.stderr)
        return 1
    print(format_table(STATS_HEADERS, stats_rows(report.traces)))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    report = load_traces(args.paths)
    for e in report.errors:
        print(f"skipped (invalid): {e}", file=sys.stderr)
    n = write_traces(report.traces, args.out, args.to, args.layout)
    print(f"converted {n:,} traces to {args.to} at {args.out}; {len(report.errors)} invalid "
          "record(s) skipped and listed above")
    return 1 if report.errors else 0
