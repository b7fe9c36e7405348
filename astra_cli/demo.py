"""`astra demo`: the README's main job on embedded defaults, end to end."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from astra_cli.data_commands import DEV_LOGS, positive_int, run_gen, validate_paths
from astra_cli.recipe import Recipe, add_fine_tune_args
from astra_cli.table import format_table
from data_gen.readers import load_traces
from data_gen.sim.generate import GenConfig
from data_gen.stats import STATS_HEADERS, label_positions, stats_rows

# the tiny model's prompts, in its own tokens, when tuning and attributing: short enough that
# its LoRA steps take a fraction of a second on a CPU
TINY_PROMPT_TOKENS = 1500
# its longest answer: every answer it was tuned on is at most 84 of its tokens, and past that it
# only rambles, which cost the demo a minute of generation at the default 256
TINY_ANSWER_TOKENS = 96


def add_command(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="the whole job on embedded defaults: simulate, train, "
                       "attribute, report")
    d.add_argument("--out", type=Path, default=Path("runs/demo"))
    d.add_argument("--tasks", type=int, default=1000)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--dev-logs", type=Path, default=DEV_LOGS)
    d.add_argument("--epochs", type=int, default=Recipe.sim_epochs,
                   help="per ensemble member, on simulated traces")
    d.add_argument("--folds", type=positive_int, default=Recipe.folds,
                   help="cross-validation folds over the development logs")
    d.add_argument("--real-epochs", type=positive_int, default=Recipe.real_epochs,
                   help="epochs of fine-tuning on real logs (each fold, and the final model)")
    add_fine_tune_args(d)
    d.add_argument("--real-only-epochs", type=int, default=Recipe.real_only_epochs,
                   help="pair each member with one trained this many epochs on the real logs "
                   "alone (0: none)")
    d.add_argument("--held-out-topology", default="crewai-hierarchical",
                   help="never seen in training; appears in the held-out test split")
    d.add_argument("--coarse-only", action="store_true", help="skip the tiny fine-stage model")
    d.add_argument("--export", type=Path, help="also write the coarse model as a model file, in "
                   "float16 (`make model` writes the package's shipped model this way)")
    d.add_argument("--tiny-pretrain-steps", type=int, default=150)
    d.add_argument("--tiny-lora-steps", type=int, default=300,
                   help="LoRA steps of the tiny model (about 80 s): at 60 none of its answers "
                   "was JSON; at 300 they are, though few name an agent and step of the trace")
    d.add_argument("--threshold", type=float, default=0.5,
                   help="confidence below which a verdict is reported as unsure")
    d.set_defaults(func=cmd_demo, compiles=True)


def cmd_demo(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    sim_path = args.out / "sim.jsonl"
    print(f"== 1. simulate {args.tasks} tasks with ASTRA-Gen (seed {args.seed})")
    n, rejected, secs = run_gen(GenConfig(n_tasks=args.tasks, seed=args.seed), sim_path)
    print(f"wrote {n:,} traces to {sim_path} in {secs:.1f}s; rejected tasks: "
          f"{sum(rejected.values())}")
    print("== 2. validate")
    ok, errors, _ = validate_paths([sim_path], quiet=True)
    print(format_table(("file", "valid", "invalid"), [(str(sim_path), ok, len(errors))]))
    print("== 3. statistics")
    sim = load_traces(sim_path).traces
    print(format_table(STATS_HEADERS, stats_rows(sim)))
    print(f"== 4. read the development logs ({args.dev_logs})")
    dev = load_traces(args.dev_logs)
    for e in dev.errors:
        print(f"ERROR {e}")
    for w in dev.warnings:
        print(f"warning {w}")
    if dev.traces:
        print(format_table(STATS_HEADERS, stats_rows(dev.traces)))
        print("where labels sit, simulated failures beside real ones:")
        print(format_table(("labels of", "n", "at step 0", "on agent's 1st step", "rel. pos."), [
            (name, len(ts), *(label_positions(ts) or ("-",) * 3)) for name, ts in (
                ("ASTRA-Gen fatal traces", [t for t in sim if t.variant == "fatal"]),
                *((f"dev logs: {fw}", ts) for fw, ts in _by_framework(dev.traces).items()))]))
    if errors or dev.errors:
        return 1
    return _coarse(args, sim_path, dev.traces)


def _coarse(args: argparse.Namespace, sim_path: Path, dev_traces) -> int:
    from astra_cli.coarse_commands import predict_traces
    from astra_cli.pipeline_commands import RunOptions, run_pipeline
    from astra_cli.recipe import build_coarse_model
    from astra_eval.scoring import evaluate
    from data_gen.sim.teams import TEAMS
    from data_gen.stage_files import coarse_verdict

    seen = tuple(t for t in TEAMS if t != args.held_out_topology)
    train_traces = [t for t in load_traces(sim_path).traces if t.system.topology in seen]
    print(f"== 5. coarse model on {len(train_traces)} simulated traces ({', '.join(seen)}) and "
          f"the {len(dev_traces)} development logs")
    splits = {}
    for name, seed in (("val", args.seed + 1000), ("test", args.seed + 2000)):
        path = args.out / f"sim_{name}.jsonl"
        run_gen(GenConfig(n_tasks=max(args.tasks // 4, 50), seed=seed, variants=("fatal",)),
                path, quiet=True)
        splits[name] = load_traces(path).traces
    recipe = Recipe(members=args.members, sim_epochs=args.epochs, real_epochs=args.real_epochs,
                    folds=args.folds, seed=args.seed, replay=args.replay,
                    real_weight=args.real_weight,
                    real_only_epochs=args.real_only_epochs)
    built = build_coarse_model(recipe, train_traces, splits["val"], dev_traces, args.out)
    sim_run, run, cv = built["sim_run"], built["run"], built["cv"]
    if args.export:
        _export(args, run, recipe)
    else:
        _compare_with_shipped(cv)
    backend = None if args.coarse_only else _tiny_fine_stage(args, train_traces)
    opts = RunOptions(threshold=args.threshold, seed=args.seed, budget=TINY_PROMPT_TOKENS,
                      answer_tokens=TINY_ANSWER_TOKENS)
    rows = []
    cv_name = ("held out: " if cv["cv"]["by_framework"] else f"{args.folds}-fold CV: ")
    for subset, by_method in cv["subsets"].items():
        for j, (name, s) in enumerate(by_method.items()):
            rows.append((cv_name + subset if j == 0 else "", name, s["n"], s["agent_acc"],
                         s["step_acc"], s["step_acc_pm1"], s["topk_agent_recall"], s["ece"]))
    sim_only = {c["trace_id"]: c for c in predict_traces(sim_run, splits["test"], 3)}
    s = evaluate(splits["test"], {"sim": {k: coarse_verdict(c) for k, c in sim_only.items()}},
                 sim_only)["overall"]["sim"]
    rows.append(("sim test", "simulated-only coarse model", s["n"], s["agent_acc"],
                 s["step_acc"], s["step_acc_pm1"], s["topk_agent_recall"], s["ece"]))
    for i, (name, key, traces) in enumerate((
            (f"sim test (unseen seeds; incl. {args.held_out_topology})", "sim_test",
             splits["test"]), ("Who&When dev logs (trained on: see the CV rows)", "dev",
                               dev_traces))):
        print(f"== {7 + i}. attribute the {name} with the final model")
        # the gate between the stages, fitted on these labelled traces and deciding each of
        # them out-of-fold: the headline row is what a user with labelled runs gets
        gated = dataclasses.replace(opts, gate_traces=tuple(traces)) if backend else opts
        _, _, report = run_pipeline(traces, args.out / key, "coarse", run, backend, gated)
        for j, (method, s) in enumerate(report["overall"].items()):
            rows.append((name if j == 0 else "", method, s["n"], s["agent_acc"], s["step_acc"],
                         s["step_acc_pm1"], s["topk_agent_recall"], s["ece"]))
    print("== accuracy (strict; details in eval.md beside each report and in cv/eval.md)")
    print(format_table(("set", "method", "n", "agent acc", "step acc", "step ±1",
                        "agent top-3", "ECE"), rows))
    for key in ("sim_test", "dev"):
        print(f"report: {(args.out / key / 'report' / 'index.html').resolve().as_uri()}")
    return 0


def _by_framework(traces) -> dict[str, list]:
    """Labelled logs grouped by framework, in order of first appearance."""
    from astra_eval.folds import framework_of
    out: dict[str, list] = {}
    for t in traces:
        if t.label is not None:
            out.setdefault(framework_of(t) or "unknown", []).append(t)
    return out


def _tiny_fine_stage(args: argparse.Namespace, train_traces):
    """A tiny local model of the Qwen3 architecture, LoRA-tuned for a few steps on simulated
    traces: it runs the fine stage's real code path on a CPU in a minute. It is far too small
    to read logs well; point `astra run --model` at Qwen3-8B for that."""
    from llm_stage.backends import LocalBackend
    from llm_stage.finetune import FinetuneConfig, finetune
    from llm_stage.sft import sft_rows
    from llm_stage.tiny import build_tiny_model, tiny_texts

    sample = train_traces[:: max(1, len(train_traces) // 300)]
    print(f"== 6. fine stage: a tiny local Qwen3-architecture model, LoRA-tuned on "
          f"{len(sample)} simulated traces")
    # its tokenizer and pre-training see log text, answers and prompts, as a real base has
    base = build_tiny_model(args.out / "tiny_model", tiny_texts(sample, TINY_PROMPT_TOKENS),
                            pretrain_steps=args.tiny_pretrain_steps)
    backend = LocalBackend(base)
    train_rows, held, _ = sft_rows(sample, {}, budget=TINY_PROMPT_TOKENS, count=backend.count)
    cfg = FinetuneConfig(base_model=str(base), out_dir=str(args.out / "tiny_lora"),
                         max_steps=args.tiny_lora_steps, batch_size=4, grad_accum=1, lr=1e-2,
                         save_steps=args.tiny_lora_steps, dropout=0.0,
                         gradient_checkpointing=False, max_length=TINY_PROMPT_TOKENS + 200,
                         seed=args.seed)
    metrics, _ = finetune(cfg, train_rows, held[:16])
    curve = metrics["loss_curve"]  # empty when the run is shorter than one logging interval
    if curve:
        print(f"LoRA loss {curve[0]:.3f} → {curve[-1]:.3f}")
    # batches of 16: the tiny model's rows cost little, and on two cores a larger batch
    # spreads Python's per-token overhead over more traces (31 s for the simulated test split
    # against 42 s at the default 8)
    return LocalBackend(base, args.out / "tiny_lora" / "adapter", parallel=16)


def _export(args: argparse.Namespace, run: Path, recipe) -> None:
    """Write the demo's coarse model as a model file, its header naming this recipe and the
    cross-validated table, and compare it with the model it replaces, if any."""
    from dataclasses import asdict

    from astra_cli.coarse_commands import export_run
    from astra_jax.export import read_header, run_provenance

    before = _evaluation_of(args.export)
    command = (f"astra demo --coarse-only --tasks {args.tasks} --seed {args.seed} "
               f"--members {recipe.members} --epochs {recipe.sim_epochs} --real-epochs "
               f"{recipe.real_epochs} --replay {recipe.replay} --real-weight {recipe.real_weight} "
               f"--folds {recipe.folds} "
               f"--real-only-epochs {recipe.real_only_epochs} "
               f"--dev-logs {args.dev_logs.name}")
    provenance = run_provenance(run, args.out / "cv" / "eval.json", command)
    provenance["recipe"] = asdict(recipe)
    export_run(run, args.export, provenance, dtype="float16")  # half the size
    print(f"wrote the coarse model to {args.export} ({args.export.stat().st_size / 1e6:.1f} MB)")
    if before:
        _compare("the model replaced", before, read_header(args.export)[0]["evaluation"])


def _evaluation_of(model_file: Path) -> dict | None:
    """The evaluation in a model file's header; None when there is no usable file."""
    from astra_jax.export import ModelFileError, read_header
    try:
        return read_header(model_file)[0].get("evaluation") if model_file.exists() else None
    except ModelFileError:
        return None


def _compare(name: str, before: dict, now: dict) -> None:
    ours = lambda e: next(iter(e["overall"].values()))  # noqa: E731
    print(f"cross-validated on the development logs, {name} → this demo's: agent "
          f"{ours(before)['agent_acc']:.3f} → {ours(now)['agent_acc']:.3f}, step "
          f"{ours(before)['step_acc']:.3f} → {ours(now)['step_acc']:.3f}")


def _compare_with_shipped(cv: dict) -> None:
    """The demo trains its own model; say how it compares with the one the package ships."""
    from astra_jax.export import DEFAULT_MODEL
    shipped = _evaluation_of(DEFAULT_MODEL)
    if shipped:
        _compare(f"the shipped model ({DEFAULT_MODEL.name})", shipped, cv)
