"""`astra run`'s gate between the fine stage and the verdicts (the model: llm_stage/gate.py;
its file and verdicts: llm_stage/gate_apply.py).

Fits a gate on labelled traces the fine stage has not trained on (`--fit-gate LOGS`), or loads
one (`--gate FILE`, or by default `OUT/astra_gate.json`, then `ADAPTER/astra_gate.json`), and
decides per trace whether the fine answer replaces the coarse verdict. Traces that are also among
the fitting traces are decided out-of-fold, so their figures stay honest. A gate file that cannot
be used here (another prompt version or fine stage, too few labelled traces, malformed) is
refused with its name and the run falls back to the coarse verdicts. `--gate off`: the fine
stage's answers as they are.
"""
from __future__ import annotations

import sys
from pathlib import Path

from data_gen.trace import Trace
from llm_stage.gate import (GATE_FILE, Gate, GateError, describe, fine_identity, fit_gate,
                            gate_row, labelled_rows, labels_of, out_of_fold_decisions)
from llm_stage.gate_apply import apply_gate, decision_counts, load_gate, save_gate


def find_gate(choice: str, out: Path, adapter: str | Path | None) -> Path | None:
    """The gate file a run uses: `choice` itself, or for "auto" the first that exists of
    OUT/astra_gate.json and ADAPTER/astra_gate.json; None for "off" or when none exists."""
    if choice == "off":
        return None
    if choice != "auto":
        return Path(choice)
    for p in (out / GATE_FILE, Path(adapter) / GATE_FILE if adapter else None):
        if p is not None and p.is_file():
            return p
    return None


def gate_stage(backend_name: str, strategy: str, traces: list[Trace], cands: dict[str, dict],
               fine: dict[str, dict], choice: str, out: Path, adapter: str | Path | None,
               fit: tuple[list[Trace], dict[str, dict], dict[str, dict]] | None = None,
               seed: int = 0) -> dict[str, dict]:
    """The run's verdicts after the gate. `fit`: (labelled traces, their candidates, their
    ungated fine verdicts) to fit a gate on and save as OUT/astra_gate.json."""
    identity = fine_identity(backend_name, strategy)
    rows = [gate_row(cands[t.trace_id], fine[t.trace_id]) for t in traces
            if t.trace_id in cands and t.trace_id in fine]
    if choice == "off" and fit is None:
        print("== gate: off; the fine stage's answers are the verdicts")
        return fine
    oof: dict[str, tuple[str, float | None]] = {}
    source = ""
    try:
        if fit is not None:
            gate, oof = _fit(fit, traces, identity, cands, fine, seed)
            source = str(save_gate(gate, out / GATE_FILE))
            print(f"wrote the gate to {source}")
        else:
            path = find_gate(choice, out, adapter)
            if path is None:
                print(f"== gate: none ({out / GATE_FILE} not found"
                      + (f", nor {Path(adapter) / GATE_FILE}" if adapter else "")
                      + "); the fine stage's answers are the verdicts. Fit one with "
                      "--fit-gate LABELLED_LOGS (logs the fine stage did not train on)")
                return fine
            gate, source = load_gate(path, identity), str(path)
            print(f"== gate: {path}: {describe(gate)}")
            seen = set(gate.trace_ids) & {r.trace_id for r in rows}
            if seen:
                print(f"warning: {len(seen)} of these traces are among the {gate.n_labelled} "
                      f"the gate was fitted on (e.g. {sorted(seen)[0]!r}): their gated figures "
                      "are training figures", file=sys.stderr)
    except GateError as e:
        print(f"gate refused: {e}", file=sys.stderr)
        print("== gate: refused (see above); falling back to coarse only: every verdict is the "
              "coarse stage's")
        return {**fine, **apply_gate([("coarse", None)] * len(rows), rows, cands, fine,
                                     f"refused: {e}")}
    decisions = [oof.get(r.trace_id) or gate.decide([r])[0] for r in rows]
    gated = {**fine, **apply_gate(decisions, rows, cands, fine, source)}
    counts = decision_counts(gated.values())
    print("gate decisions: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + (f" ({len(oof)} decided out-of-fold, being among the fitting traces)" if oof else ""))
    return gated


def _fit(fit: tuple[list[Trace], dict[str, dict], dict[str, dict]], traces: list[Trace],
         identity: dict[str, str], cands: dict[str, dict], fine: dict[str, dict], seed: int
         ) -> tuple[Gate, dict[str, tuple[str, float | None]]]:
    """Fit on the labelled fitting traces; the run's traces among them get out-of-fold
    decisions (each from a gate fitted without its fold)."""
    fit_traces, fit_cands, fit_fine = fit
    labels = labels_of(fit_traces)
    rows = labelled_rows({**fit_cands, **cands}, {**fit_fine, **fine}, labels)
    print(f"== gate: fitting on {len(rows)} labelled traces ({len(labels)} labelled given)")
    gate = fit_gate(rows, labels, identity, _coarse_model(fit_cands or cands), seed)
    print(f"gate: {describe(gate)}")
    own = {t.trace_id for t in traces}
    oof = {}
    if any(r.trace_id in own for r in rows):
        oof = {r.trace_id: d for r, d in zip(rows, out_of_fold_decisions(rows, labels, seed=seed))
               if r.trace_id in own}
    return gate, oof


def _coarse_model(cands: dict[str, dict]) -> dict:
    return next((c.get("model") or {} for c in cands.values()), {})
