"""A fitted gate (llm_stage.gate) kept and used: its file, `astra.gate/v1` JSON (`save_gate`;
`load_gate` checks it and refuses a file made for another prompt version or fine stage, or
fitted on fewer than `MIN_LABELLED` traces), and the verdicts its decisions give.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Sequence

from data_gen.stage_files import coarse_verdict
from llm_stage.gate import (DECISIONS, FEATURES, GATE_SCHEMA, MIN_LABELLED, UNSURE_BAND, Gate,
                            GateError, GateRow, Policy, policy_name, takes_fine)


def gate_to_json(gate: Gate) -> dict[str, Any]:
    d = asdict(gate)
    d["policy"]["name"] = policy_name(gate.policy.kind, gate.policy.l2)
    d["features"] = list(FEATURES)
    return d


def save_gate(gate: Gate, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(gate_to_json(gate), indent=1) + "\n", "utf-8")
    return path


def load_gate(path: str | Path, identity: dict[str, str] | None = None) -> Gate:
    """A saved gate, checked: its schema, its fields, at least MIN_LABELLED traces, and (when
    `identity` is given) the same prompt version, backend and strategy. GateError otherwise."""
    path = Path(path)
    try:
        d = json.loads(path.read_text("utf-8"))
    except OSError as e:
        raise GateError(f"{path}: cannot read the gate file ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GateError(f"{path}: not a JSON gate file ({e})") from None
    if not isinstance(d, dict) or d.get("schema") != GATE_SCHEMA:
        got = d.get("schema") if isinstance(d, dict) else type(d).__name__
        raise GateError(f"{path}: field 'schema' is {got!r}, not {GATE_SCHEMA!r}")
    try:
        p = d["policy"]
        kind = p["kind"]
        if kind not in ("coarse", "fine", "logistic"):
            raise ValueError(f"'policy.kind' is {kind!r}")
        vec = lambda key: tuple(float(v) for v in p.get(key, ()))  # noqa: E731
        policy = Policy(kind, p.get("l2"), vec("mean"), vec("std"), vec("coef"),
                        float(p.get("intercept", 0.0)))
        if kind == "logistic" and not (len(policy.mean) == len(policy.std) == len(policy.coef)
                                       == len(FEATURES)):
            raise ValueError(f"'policy' needs {len(FEATURES)} values in mean, std and coef")
        if d.get("features", list(FEATURES)) != list(FEATURES):
            raise ValueError(f"'features' is {d.get('features')!r}, this version uses "
                             f"{list(FEATURES)!r}")
        ident = {k: str(d["identity"][k]) for k in ("prompt_version", "backend", "strategy")}
        n = int(d["n_labelled"])
        gate = Gate(policy, ident, n, int(d.get("n_open", 0)), dict(d.get("cv", {})),
                    dict(d.get("coarse_model", {})), float(d.get("unsure_band", UNSURE_BAND)),
                    tuple(str(t) for t in d.get("trace_ids", ())))
    except (KeyError, TypeError, ValueError) as e:
        what = e.args[0] if isinstance(e, KeyError) else e
        raise GateError(f"{path}: malformed gate file (field {what})") from None
    if n < MIN_LABELLED:
        raise GateError(f"{path}: fitted on {n} labelled traces, fewer than the "
                        f"{MIN_LABELLED} a gate needs; fit it on more")
    if identity is not None:
        for key in ("prompt_version", "backend", "strategy"):
            if ident[key] != identity[key]:
                raise GateError(f"{path}: fitted for {key} {ident[key]!r}, this run's is "
                                f"{identity[key]!r}; fit a gate for this fine stage")
    return gate


def gated_verdict(coarse: dict, fine: dict, decision: str, p: float | None,
                  source: str) -> dict[str, Any]:
    """The verdict the decision gives, carrying the fine answer under `gate.fine` (so the fine
    stage alone can still be scored) and the decision. The fine stage's tokens and latency stay:
    they were spent. "unsure": the coarse verdict as the best guess, flagged `unsure`."""
    keep = ("agent", "step", "mode", "reason", "confidence", "source", "fallback")
    base = dict(fine)
    if not takes_fine(decision):
        base.update({k: coarse.get(k) for k in keep})
        base["reason"] = f"coarse stage's choice, kept by the gate ({decision})"
    base["gate"] = {"decision": decision, "p_fine_better": p, "file": source,
                    "fine": {k: fine.get(k) for k in keep}}
    if decision == "unsure":
        base["unsure"] = True
    return base


def fine_only(verdict: dict) -> dict[str, Any]:
    """The fine stage's own verdict from a gated one (itself when it was not gated)."""
    g = verdict.get("gate")
    if not g:
        return verdict
    v = {k: x for k, x in verdict.items() if k not in ("gate", "unsure")}
    v.update(g["fine"])
    return v


def apply_gate(decisions: Sequence[tuple[str, float | None]], rows: Sequence[GateRow],
               cands: dict[str, dict], fine: dict[str, dict], source: str) -> dict[str, dict]:
    """Gated verdicts by trace id for `rows`, one decision each."""
    return {r.trace_id: gated_verdict(coarse_verdict(cands[r.trace_id]), fine[r.trace_id], d, p,
                                      source) for r, (d, p) in zip(rows, decisions)}


def decision_counts(verdicts: Iterable[dict]) -> dict[str, int]:
    counts = {d: 0 for d in DECISIONS}
    for v in verdicts:
        if v.get("gate"):
            counts[v["gate"]["decision"]] += 1
    return counts


def identity_of_verdicts(verdicts: Iterable[dict], where: str) -> dict[str, str]:
    """The one fine stage (prompt version, backend, strategy) that wrote these verdicts; a
    clear error when they come from several, or say nothing of it."""
    seen = {(str(v.get("prompt_version")), str(v.get("backend")), str(v.get("strategy")))
            for v in verdicts}
    if len(seen) != 1 or "None" in next(iter(seen)):
        raise GateError(f"{where}: a gate is fitted for one fine stage; these verdicts name "
                        f"{len(seen)} (prompt_version, backend, strategy) sets: "
                        f"{sorted(seen)[:3]} (use the verdicts of one `astra-llm localize` run)")
    version, backend, strategy = seen.pop()
    return {"prompt_version": version, "backend": backend, "strategy": strategy}
