"""`astra train`, `astra predict`, `astra attribute`: the coarse stage from the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from astra_cli.data_commands import add_labels_arg, positive_int, share, with_labels
from astra_cli.size_guard import add_max_steps_arg, refusal, step_limit
from astra_cli.table import format_table
from data_gen.readers import load_valid_traces
from data_gen.stage_files import SINGLE_AGENT

# models trained at once where a command trains several (ensemble members, cross-validation's
# folds), on one device: on a CPU one training keeps about 1.6 cores busy (XLA's threads wait on
# the host between small operations), and two at once finish a 5-fold cross-validation 17%
# sooner on two cores (docs/coarse_stage.md)
DEFAULT_JOBS = 2


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train the coarse graph model on labelled traces")
    t.add_argument("data", nargs="+", type=Path,
                   help="training traces (files or directories): simulated, real labelled logs, "
                   "or both (see --real-weight)")
    t.add_argument("--val", nargs="+", type=Path, default=[],
                   help="validation traces; the best epoch on them is kept (default: none, the "
                   "last epoch is kept)")
    add_labels_arg(t)
    t.add_argument("--out", type=Path, required=True, help="run directory (resumes if present)")
    t.add_argument("--real-weight", type=share, default=0.5,
                   help="when simulated traces and real logs are mixed, the share of each "
                   "epoch's traces that are real logs (real logs are repeated to reach it)")
    t.add_argument("--init", type=Path,
                   help="start from this trained run, ensemble or model file (fine-tune it on "
                   "DATA)")
    t.add_argument("--drop-evidence", default="",
                   help="comma-separated evidence groups to leave out (ablations): "
                   "position, errors, claims, answer, contradiction")
    t.add_argument("--epochs", type=int, default=8)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--d-model", type=int, default=128)
    t.add_argument("--embedder", choices=("hashing", "minilm"), default="hashing")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--members", type=positive_int, default=1,
                   help="train an ensemble of this many models, seeds SEED, SEED+1, ...; "
                   "prediction averages them (steadier on real logs, N times the training)")
    t.add_argument("--jobs", type=positive_int, default=DEFAULT_JOBS,
                   help="ensemble members trained at once on one device (threads sharing the "
                   "compiled programs; the models do not depend on it)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig field, e.g. shards=8, warmup_steps=10, model.heads=8")
    t.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() (see docs/coarse_stage.md)")
    t.set_defaults(func=cmd_train, compiles=True)

    p = sub.add_parser("predict", help="write top-K candidates JSONL (astra.candidates/v1)")
    p.add_argument("data", nargs="+", type=Path)
    p.add_argument("--run", type=Path, help="a run directory from `astra train` or a model file "
                   "from `astra export` (default: the model shipped with the package)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    add_mark_args(p)
    add_labels_arg(p)
    p.set_defaults(func=cmd_predict, compiles=True)

    a = sub.add_parser("attribute", help="who failed, when, how sure, for one trace")
    a.add_argument("trace", type=Path, help="a trace file in any supported format")
    a.add_argument("--run", type=Path, help="a run directory or model file (default: the "
                   "shipped model)")
    a.add_argument("--top-k", type=int, default=3)
    add_mark_args(a)
    add_max_steps_arg(a)
    a.set_defaults(func=cmd_attribute, compiles=True)

    x = sub.add_parser("export", help="write a trained run or ensemble as one model file "
                       "(msgpack parameters + JSON header) for inference")
    x.add_argument("run", type=Path, help="a run directory of `astra train`")
    x.add_argument("--out", type=Path, required=True, help="the model file, e.g. model.msgpack")
    x.add_argument("--eval", type=Path, help="an eval.json (from `astra cv` or `astra eval`) "
                   "whose overall table goes into the header")
    x.add_argument("--command", default="", help="the command(s) that trained the run, for "
                   "the header")
    x.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="float16 halves the file; predictions then differ by about 1e-3")
    x.set_defaults(func=cmd_export)


def add_mark_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--agents", default="", metavar="NAME,...",
                   help="these entities are agents (can be blamed), whatever the log's "
                   "structure says")
    p.add_argument("--not-agents", default="", metavar="NAME,...",
                   help="these entities are not agents (tools, environment, people): never blamed")


def marked_traces(traces: list, args: argparse.Namespace) -> list:
    """The traces with the user's `--agents` / `--not-agents` applied (data_gen.marks); a name
    that is in no trace is an error, since a typo would silently change nothing."""
    from data_gen.marks import override_marks, parse_overrides

    try:
        overrides = parse_overrides(args.agents, args.not_agents)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    unknown = set(overrides) - {a for t in traces for a in t.agents}
    if unknown:
        raise SystemExit(f"error: --agents/--not-agents name {', '.join(sorted(unknown))}, "
                         "who speak in none of the traces")
    return [override_marks(t, {n: k for n, k in overrides.items() if n in t.agents})
            if overrides else t for t in traces]


def cmd_train(args: argparse.Namespace) -> int:
    from astra_jax.compilation import compile_stats
    from astra_jax.ensembles import train_ensemble
    from astra_jax.features import featurise, make_embedder
    from astra_jax.model import ModelConfig

    if args.distributed:
        import jax
        jax.distributed.initialize()
    try:
        cfg = train_config(args, model=ModelConfig(d_model=args.d_model),
                           batch_size=args.batch_size, lr=args.lr)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tr_all = load_valid_traces(args.data)  # --labels apply to DATA and --val alike
    labelled = with_labels(tr_all + load_valid_traces(args.val), args.labels)
    tr = usable_for_training(labelled[:len(tr_all)], "training", cfg.real_weight)
    va = usable_for_training(labelled[len(tr_all):], "validation") if args.val else []
    if not tr or (args.val and not va):
        print("error: no usable training or validation traces", file=sys.stderr)
        return 1
    emb = make_embedder(cfg.embedder)
    cache = args.out / "feature_cache"
    results = train_ensemble(cfg, args.members, tr, featurise(tr, emb, cache, True, cfg.dropped),
                             va, featurise(va, emb, cache, True, cfg.dropped), args.out,
                             jobs=args.jobs)
    if va:
        rows = [(cfg.seed + i, r["best"]["epoch"], r["best"]["val_agent_acc"],
                 r["best"]["val_step_acc"], r["best"]["val_agent_top3"], r["best"]["val_ece"])
                for i, r in enumerate(results)]
        print(format_table(("seed", "best epoch", "val agent acc", "val step acc",
                            "val top-3 agent", "val ECE"), rows))
    else:
        print(format_table(("seed", "epochs", "final train loss"), [
            (cfg.seed + i, r["best"]["epoch"], r["best"]["train_loss"])
            for i, r in enumerate(results)]))
    c = compile_stats()
    print(f"compiled {c.compiled} XLA programs and loaded {c.cache_hits} from the compile cache "
          f"in {c.seconds:.1f}s")
    return 0


def train_config(args: argparse.Namespace, **fields):
    """The TrainConfig of the flags `astra train` and `astra cv` share, plus `fields` and any
    `--set KEY=VALUE`; a ValueError names a bad setting or evidence group."""
    from astra_jax.features import evidence_mask
    from astra_jax.configs import TrainConfig, override

    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, embedder=args.embedder,
                      real_weight=args.real_weight, drop_evidence=args.drop_evidence,
                      init=str(args.init.resolve()) if args.init else "", **fields)
    cfg = override(cfg, args.set)
    evidence_mask(cfg.dropped)
    return cfg


def usable_for_training(traces, name: str, real_weight: float | None = None) -> list:
    """Print what training learns from each kind of trace (simulated or real), list every trace
    of little or no use with its reason on stderr, and keep all but the unusable ones."""
    from astra_jax.batching import is_real, training_use
    from astra_jax.batch_plans import real_repeats

    counts: dict[tuple[str, str], int] = {}
    kept = []
    for t in traces:
        kind, problem = training_use(t)
        origin = "real" if is_real(t) else "simulated"
        counts[(origin, kind)] = counts.get((origin, kind), 0) + 1
        if problem:
            print(f"{name}: {t.source.get('path', t.trace_id)} ({t.trace_id}): {problem}"
                  f"{'; left out' if kind == 'unusable' else ''}", file=sys.stderr)
        if kind != "unusable":
            kept.append(t)
    rows = [(name, origin, kind, n) for (origin, kind), n in sorted(counts.items())]
    print(format_table(("data", "origin", "kind", "traces"), rows))
    if real_weight is not None and any(is_real(t) for t in kept) and not all(map(is_real, kept)):
        print(f"real logs repeated {real_repeats(kept, real_weight)}x per epoch "
              f"(--real-weight {real_weight})")
    return kept


def load_coarse(model: Path | None):
    """(config, members' parameters, the candidates' `model` field) of a model file from
    `astra export`, a run directory of `astra train` (one model or an ensemble), or, when `model`
    is None, the model shipped with the package."""
    from astra_jax import RunDirError
    from astra_jax.batching import labels_of, pack_batch
    from astra_jax.checkpoints import load_params
    from astra_jax.configs import config_from_dir, same_parameters
    from astra_jax.export import DEFAULT_MODEL, load_model
    from astra_jax.features import featurise, make_embedder
    from astra_jax.run_dirs import member_dirs
    from data_gen.trace import Step, Task, Trace

    if model is None:
        if not DEFAULT_MODEL.exists():
            raise RunDirError(f"no model given and none shipped at {DEFAULT_MODEL}; train one "
                              f"with `astra train` and pass --run")
        model = DEFAULT_MODEL
    if not model.exists():
        raise RunDirError(f"{model}: no such file or directory; give a run directory of "
                          f"`astra train` or a model file of `astra export`")
    if model.is_file():
        cfg, members, header = load_model(model)
        return cfg, members, {"checkpoint": str(model), "step": 0,
                              "members": header["members"]} if header["members"] > 1 else {
            "checkpoint": str(model), "step": 0}
    dirs = member_dirs(model)
    cfgs = [config_from_dir(d) for d in dirs]
    cfg = cfgs[0]
    for d, c in zip(dirs[1:], cfgs[1:]):
        if not same_parameters(c, cfg):
            raise RunDirError(f"{d}: its model, embedder or evidence differ from {dirs[0]}'s; "
                              f"the members of an ensemble must share them")
    shape_only = Trace("sample", Task(""), (Step(0, "agent", "text"),))  # restore needs a batch
    feats = featurise([shape_only], make_embedder(cfg.embedder), drop=cfg.dropped)
    sample = pack_batch(feats, [labels_of(shape_only)], cfg.batch_size)
    loaded = [load_params(d, c, sample) for d, c in zip(dirs, cfgs)]
    info = {"checkpoint": str(model), "step": max(s for _, s in loaded)}
    if len(dirs) > 1:
        info["members"] = [{"checkpoint": str(d), "step": s} for d, (_, s) in zip(dirs, loaded)]
    return cfg, [p for p, _ in loaded], info


def predict_traces(model: Path | None, traces, top_k: int, cache: Path | None = None):
    """Candidates from a coarse model (see `load_coarse`); an ensemble's members have their
    probabilities averaged. Features are cached in `cache` (default: a run directory's own)."""
    return coarse_candidates(model, traces, top_k, cache)[0]


def coarse_candidates(model: Path | None, traces, top_k: int, cache: Path | None = None):
    """`predict_traces`'s candidates and each trace's DHCG by trace id, for the stages after
    it (scoring's baselines, the report), so a run builds each graph once."""
    from astra_jax.features import featurise, make_embedder
    from astra_jax.predict import stack_members, top_k_candidates

    cfg, members, info = load_coarse(model)
    if cache is None and model is not None and model.is_dir():
        cache = model / "feature_cache"
    feats = featurise(traces, make_embedder(cfg.embedder), cache, drop=cfg.dropped)
    cands = top_k_candidates(stack_members(members), cfg, traces, feats, top_k, info)
    return cands, {t.trace_id: f.graph for t, f in zip(traces, feats)}


def cmd_predict(args: argparse.Namespace) -> int:
    from astra_eval.scoring import evaluate
    from data_gen.stage_files import coarse_verdict, write_stage_file

    traces = marked_traces(with_labels(load_valid_traces(args.data), args.labels), args)
    if not traces:
        print("error: no valid traces", file=sys.stderr)
        return 1
    cands = predict_traces(args.run, traces, args.top_k)
    write_stage_file(cands, args.out)
    print(f"wrote {len(cands)} candidate records to {args.out}")
    if any(t.label for t in traces):
        by_id = {c["trace_id"]: c for c in cands}
        s = evaluate(traces, {"coarse": {k: coarse_verdict(c) for k, c in by_id.items()}},
                     by_id, args.top_k)["overall"]["coarse"]
        print(format_table(("labelled", "agent acc", "step acc", "step ±1",
                            f"top-{args.top_k} agent"),
                           [(s["n"], s["agent_acc"], s["step_acc"], s["step_acc_pm1"],
                             s["topk_agent_recall"])]))
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    traces = marked_traces(load_valid_traces([args.trace]), args)
    if not traces:
        return 1
    t = traces[0]
    too_long = refusal(t, step_limit(args.max_steps))
    if too_long:
        print(f"error: {too_long}", file=sys.stderr)
        return 2
    c = predict_traces(args.run, [t], args.top_k)[0]
    top = c["agents"][0]
    step = top["steps"][0]
    print(f"trace {t.trace_id}: {len(t.steps)} steps, failure probability "
          f"{c['failure_prob']:.2f}, uncertainty {c['uncertainty']:.2f}")
    if c.get("not_agents"):
        print(format_table(("not an agent (never blamed)", "read as", "why"),
                           [(x["entity"], x["kind"], x["reason"]) for x in c["not_agents"]]))
    if c.get("single_agent"):
        print(f"{SINGLE_AGENT}: {top['agent']} decides everything")
    print(f"who:  {top['agent']}  (score {top['score']:.2f})")
    span = t.steps[step["step"]].extra.get("span_id")
    print(f"when: step {step['step']}{f', span {span}' if span else ''}  "
          f"(confidence {step['score']:.2f})")
    print(f"      {t.steps[step['step']].content[:200]!r}")
    rows = [(a["agent"], a["score"], ", ".join(f"{s['step']} ({s['score']:.2f})"
                                                for s in a["steps"][:3])) for a in c["agents"]]
    print(format_table(("candidate agent", "score", "top steps"), rows))
    if t.label:
        print(f"label: {t.label.agent} at step {t.label.step}")
    return 0


def export_run(run: Path, out: Path, provenance: dict, dtype: str = "float32") -> dict:
    """Write a run or ensemble (`astra train`, `astra demo`, `astra adapt`) as one model file;
    returns its header."""
    from astra_jax.export import export_model
    cfg, members, _ = load_coarse(run)
    return export_model(cfg, members, out, provenance, dtype)


def cmd_export(args: argparse.Namespace) -> int:
    from astra_jax.export import run_provenance

    header = export_run(args.run, args.out, run_provenance(args.run, args.eval, args.command),
                        args.dtype)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {header['members']} member(s), {size / 1e6:.2f} MB ({args.dtype})")
    return 0
