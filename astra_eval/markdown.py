"""The evaluation as Markdown: the tables a closing note or a paper appendix carries."""
from __future__ import annotations

from typing import Any, Sequence

COLUMNS = (("n", "n"), ("agent", "agent_acc"), ("step", "step_acc"), ("step ±1", "step_acc_pm1"),
           ("step ±3", "step_acc_pm3"), ("top-K agent", "topk_agent_recall"),
           ("top-K step", "topk_step_recall"), ("ECE", "ece"), ("coverage", "coverage"),
           ("selective acc", "selective_acc"), ("changed", "changed"),
           ("changes right", "changed_right"), ("prompt tokens", "prompt_tokens_mean"),
           ("latency s", "latency_s_mean"))


def cell(v: Any) -> str:
    """One table cell: 3 decimals, thousands separators, "-" for nothing to report."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    return str(v)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def value(summary: dict[str, Any], key: str) -> Any:
    """A summary's cell: changes right as "k of n", the rest as they are."""
    if key == "changed_right" and summary.get(key) is not None:
        return f"{summary[key]} of {summary['changed_n']}"
    return summary.get(key)


def summary_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per (set, method): overall first, then each subset."""
    sets = [("all", report["overall"])] + list(report["subsets"].items())
    rows = []
    for name, by_method in sets:
        for i, (method, s) in enumerate(by_method.items()):
            rows.append([name if i == 0 else "", method] + [value(s, key) for _, key in COLUMNS])
    return rows


def eval_markdown(report: dict[str, Any]) -> str:
    k, tau = report["k"], report["threshold"]
    out = [f"## Failure attribution: {report['method']}", "",
           f"{report['n_labelled']} labelled traces of {report['n_traces']}. Strict scoring: agent "
           "name equal after normalising case and whitespace, step index exact; every labelled "
           "trace counts, a missing verdict is wrong. ±1/±3 are tolerances beside the strict "
           f"figures. Top-K recall: the label among the coarse stage's top {k} agents / their "
           f"steps. ECE over 10 bins of the verdict's confidence (correct = agent and step). "
           f"Coverage and selective accuracy at confidence threshold {tau:g} (below it the tool "
           "answers \"unsure\", as it does where the gate cannot choose between the stages). "
           "Changed: the share of verdicts unlike the coarse stage's alone; changes right: how "
           "many of those are right (agent and step).", "",
           md_table(["set", "method"] + [h for h, _ in COLUMNS], summary_rows(report))]
    rc = report["risk_coverage"]
    if rc:
        marks = [0.1, 0.25, 0.5, 0.75, 1.0]
        pts = list({id(p): p for p in (next(p for p in rc if p["coverage"] >= m - 1e-9)
                                         for m in marks)}.values())
        out += ["", "Risk-coverage (the most confident answers first):", "",
                md_table(["coverage", "accuracy", "threshold"],
                         [[p["coverage"], p["accuracy"], p["threshold"]] for p in pts])]
    return "\n".join(out) + "\n"


def cv_markdown(report: dict[str, Any]) -> str:
    """`eval_markdown` of the out-of-fold verdicts, then each method's spread over the folds."""
    cv = report["cv"]
    paired = ", each paired with one trained on the fold's logs alone" if cv.get(
        "real_only_members") else ""
    rows = [[m, s["agent_acc"]["mean"], s["agent_acc"]["std"], s["step_acc"]["mean"],
             s["step_acc"]["std"]] for m, s in cv["methods"].items()]
    per_fold = [[row.get("name", f"fold {i + 1}"), row["ours"]["n"], row["ours"]["agent_acc"],
                 row["ours"]["step_acc"]] for i, row in enumerate(report["folds"])]
    held = ("one fold per framework: the models that score a framework never saw a log of it; "
            if cv.get("by_framework") else "")
    return "\n".join([
        eval_markdown(report), "", f"### Spread over {cv['folds']} folds",
        "", f"{held}Each fold's model never saw its test logs; {cv['simulated']} simulated traces in "
        f"every fold's training data; {cv['members']} model(s) per fold"
        f"{paired}; seed {cv['seed']}.", "",
        md_table(["method", "agent mean", "agent std", "step mean", "step std"], rows), "",
        md_table(["fold", "n", "agent", "step"], per_fold)])


def seeds_markdown(report: dict[str, Any]) -> str:
    """The mean and spread over seeds of every set and method (the figure of record), then the
    first seed's full tables."""
    sp = report["seeds"]
    rows = []
    for name, by_method in sp["sets"].items():
        for i, (m, s) in enumerate(by_method.items()):
            rows.append([name if i == 0 else "", m, s["n"], s["agent_acc"]["mean"],
                         s["agent_acc"]["std"], s["step_acc"]["mean"], s["step_acc"]["std"],
                         " / ".join(f"{a:.3f}, {b:.3f}" for a, b in zip(
                             s["agent_acc"]["per_seed"], s["step_acc"]["per_seed"]))])
    seeds = ", ".join(str(s) for s in sp["seeds"])
    return "\n".join([
        f"## Mean over seeds {seeds}", "",
        "Strict agent and step accuracy, mean and standard deviation over the seeds (each seed "
        "trains every fold anew); per seed: agent, step.", "",
        md_table(["set", "method", "n", "agent mean", "agent std", "step mean", "step std",
                  "per seed"], rows), "", f"## Seed {sp['seeds'][0]} in full", "",
        cv_markdown(report)])
