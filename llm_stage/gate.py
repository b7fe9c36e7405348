"""The gate between the two stages: per trace, take the fine stage's answer, keep the coarse
verdict, or say "unsure", from what both stages say.

A fine stage can be worse than the coarse stage it refines (a small model, a model on logs of a
framework it was not tuned for, an endpoint whose answers are often invalid), and nothing else
in the pipeline would notice. The gate is fitted on labelled traces the fine stage did not train
on and changes a coarse verdict only where that has been shown to help there.

What it sees, per trace (`GateRow`): the coarse stage's likeliest (agent, step) and its
probability; the fine stage's (agent, step), its confidence (answer probability for a local
model, the coarse probability of the pair for an endpoint), whether the answer was valid, the
coarse probability of the fine pair, whether the two name the same agent, and whether the prompt
was truncated. It only sees verdicts and candidates, so a local model, an adapter and an
endpoint are gated the same way.

How it decides: where the fine answer is invalid (it fell back to the coarse choice) or names the
coarse pair, there is nothing to decide. Where they disagree, one of a few policies decides:
`coarse` (never change), `fine` (always change), or `logistic` (a small L2-regularised logistic
model of "the fine answer scores better than the coarse one" on the features above, taking the
fine answer when its probability is at least 0.5 + `UNSURE_BAND`, keeping the coarse verdict at
or below 0.5 - `UNSURE_BAND`, and answering "unsure" between, with the coarse verdict as the
best guess). The policy (and the logistic model's strength) is chosen by repeated k-fold
cross-validation on the labelled traces, scoring agent right + step right per trace; a policy
must beat `coarse` to be chosen, ties keep the coarse verdict. Pure numpy: tiny data, no new
dependency, no jax.

The file (`astra.gate/v1`, JSON) records the prompt version, the fine stage's identity (backend
name: model and adapter directory names, or endpoint URL and model name; strategy), the number
of labelled traces and the cross-validated figures; `llm_stage.gate_apply` saves and loads it
(`load_gate` refuses a file made for another prompt version or fine stage, or fitted on fewer
than `MIN_LABELLED` traces) and turns decisions into verdicts.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from data_gen.stage_files import coarse_choice
from data_gen.trace import Trace, normalise_agent as norm
from llm_stage.answer import coarse_confidence
from llm_stage.prompts import PROMPT_VERSION

GATE_SCHEMA = "astra.gate/v1"
GATE_FILE = "astra_gate.json"  # beside an adapter, or in a run's output directory
MIN_LABELLED = 20  # fewer labelled traces than this say nothing a gate could rely on
UNSURE_BAND = 0.1  # |p - 0.5| below this: the logistic policy answers "unsure"
L2_GRID = (0.3, 3.0, 30.0)  # strengths tried for the logistic policy
FEATURES = ("fine_conf", "coarse_conf", "fine_pair_coarse", "same_agent", "truncated")
DECISIONS = ("agree", "invalid", "fine", "coarse", "unsure")


class GateError(ValueError):
    """A gate file that cannot be used here; the message names the file and why."""


@dataclass(frozen=True)
class GateRow:
    """One trace as both stages saw it."""
    trace_id: str
    coarse_agent: str
    coarse_step: int
    coarse_conf: float
    fine_agent: str
    fine_step: int
    fine_conf: float
    valid: bool  # the fine answer was usable (not the coarse fallback)
    fine_pair_coarse: float  # the coarse stage's probability for the fine (agent, step)
    truncated: bool  # the fine stage's prompt was cut to fit its budget

    @property
    def same_pair(self) -> bool:
        return norm(self.fine_agent) == norm(self.coarse_agent) and \
            self.fine_step == self.coarse_step

    @property
    def same_agent(self) -> bool:
        return norm(self.fine_agent) == norm(self.coarse_agent)

    @property
    def open(self) -> bool:
        """Whether there is something to decide: a valid fine answer naming another pair."""
        return self.valid and not self.same_pair


def gate_row(cands: dict, fine: dict) -> GateRow:
    """A trace's row from its coarse candidates and its (ungated) fine-stage verdict."""
    agent, step, conf = coarse_choice(cands)
    return GateRow(
        trace_id=str(cands["trace_id"]), coarse_agent=agent, coarse_step=step,
        coarse_conf=float(conf), fine_agent=fine["agent"], fine_step=int(fine["step"]),
        fine_conf=float(fine.get("confidence") or 0.0),
        valid=fine.get("source") == "llm" and not fine.get("fallback"),
        fine_pair_coarse=coarse_confidence(cands, fine["agent"], int(fine["step"])),
        truncated=bool(fine.get("prompt_truncated")))


def features(rows: Sequence[GateRow]) -> np.ndarray:
    """[n, len(FEATURES)] float64: probabilities as they are, flags as 0/1."""
    return np.array([[r.fine_conf, r.coarse_conf, r.fine_pair_coarse, float(r.same_agent),
                      float(r.truncated)] for r in rows], dtype=np.float64).reshape(-1, len(FEATURES))


def utility(agent: str, step: int, label: tuple[str, int]) -> int:
    """Agent right + step right (strict, as the evaluation scores them): 0, 1 or 2."""
    return int(norm(agent) == norm(label[0])) + int(step == label[1])


def fit_logistic(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float, iters: int = 50
                 ) -> tuple[np.ndarray, float]:
    """Weighted L2-regularised logistic regression by Newton's method; the intercept is not
    penalised. x [n, d] (standardised), y [n] in {0, 1}, w [n] >= 0; returns (coef [d], b)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    theta = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 1e-6  # a whisker on the intercept keeps one-class data finite
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ theta, -30, 30)))
        grad = xb.T @ (w * (p - y)) + reg * theta
        hess = (xb * (w * p * (1 - p))[:, None]).T @ xb + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return theta[:-1], float(theta[-1])


@dataclass(frozen=True)
class Policy:
    """How open rows are decided: `coarse`, `fine`, or `logistic` (with its fitted model)."""
    kind: str
    l2: float | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    coef: tuple[float, ...] = ()
    intercept: float = 0.0

    def p_fine(self, rows: Sequence[GateRow]) -> np.ndarray:
        """The probability that the fine answer scores better, per row (logistic only)."""
        z = (features(rows) - np.array(self.mean)) / np.array(self.std)
        return 1.0 / (1.0 + np.exp(-np.clip(z @ np.array(self.coef) + self.intercept, -30, 30)))


def fit_policy(kind: str, rows: Sequence[GateRow], labels: dict[str, tuple[str, int]],
               l2: float | None = None) -> Policy:
    """Fit one policy on labelled rows. The logistic model learns, on the open rows where one
    stage scores better than the other, which one does, each row weighted by the difference."""
    if kind != "logistic":
        return Policy(kind)
    train = [r for r in rows if r.open]
    diff = np.array([utility(r.fine_agent, r.fine_step, labels[r.trace_id])
                     - utility(r.coarse_agent, r.coarse_step, labels[r.trace_id]) for r in train],
                    dtype=np.float64)
    keep = diff != 0
    x = features(train)[keep] if train else np.zeros((0, len(FEATURES)))
    mean = x.mean(0) if len(x) else np.zeros(len(FEATURES))
    std = x.std(0) if len(x) else np.ones(len(FEATURES))
    std = np.where(std > 1e-9, std, 1.0)
    if not len(x):  # nothing to learn from: never change a verdict
        return Policy("logistic", l2, tuple(mean), tuple(std), (0.0,) * len(FEATURES), -10.0)
    coef, b = fit_logistic((x - mean) / std, (diff[keep] > 0).astype(np.float64),
                           np.abs(diff[keep]), float(l2 or 1.0))
    return Policy("logistic", l2, tuple(map(float, mean)), tuple(map(float, std)),
                  tuple(map(float, coef)), b)


def decide(policy: Policy, rows: Sequence[GateRow], band: float = UNSURE_BAND
           ) -> list[tuple[str, float | None]]:
    """Per row: (decision, p) with decision in DECISIONS; p is the logistic probability that
    the fine answer scores better (None for the other policies and rows not open)."""
    out: list[tuple[str, float | None]] = []
    p = policy.p_fine(rows) if policy.kind == "logistic" and rows else None
    for i, r in enumerate(rows):
        if not r.valid:
            out.append(("invalid", None))
        elif r.same_pair:
            out.append(("agree", None))
        elif policy.kind in ("coarse", "fine"):
            out.append((policy.kind, None))
        else:
            pi = float(p[i])
            out.append(("fine" if pi >= 0.5 + band else
                        "coarse" if pi <= 0.5 - band else "unsure", round(pi, 4)))
    return out


def takes_fine(decision: str) -> bool:
    return decision in ("agree", "fine")


def _scores(rows: Sequence[GateRow], decisions: Sequence[str],
            labels: dict[str, tuple[str, int]]) -> tuple[int, int]:
    """(agents right, steps right) of the verdicts the decisions give."""
    agent = step = 0
    for r, d in zip(rows, decisions):
        a, s = (r.fine_agent, r.fine_step) if takes_fine(d) else (r.coarse_agent, r.coarse_step)
        lab = labels[r.trace_id]
        agent += norm(a) == norm(lab[0])
        step += s == lab[1]
    return agent, step


def _folds(n: int, k: int, seed: int) -> list[list[int]]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return [idx[i::k] for i in range(k)]


CANDIDATE_POLICIES: tuple[tuple[str, float | None], ...] = (
    ("coarse", None), *(("logistic", l2) for l2 in sorted(L2_GRID, reverse=True)), ("fine", None))


def cross_validate(rows: Sequence[GateRow], labels: dict[str, tuple[str, int]], folds: int = 5,
                   repeats: int = 3, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each candidate policy's out-of-fold agent and step accuracy, averaged over `repeats`
    shuffles of `folds` folds. Keys: `coarse`, `logistic(l2=…)`, `fine`."""
    n = len(rows)
    k = max(2, min(folds, n))
    out: dict[str, dict[str, float]] = {}
    for kind, l2 in CANDIDATE_POLICIES:
        agent = step = 0
        for rep in range(repeats):
            for test in _folds(n, k, seed + rep):
                held = set(test)
                train = [rows[i] for i in range(n) if i not in held]
                pol = fit_policy(kind, train, labels, l2)
                part = [rows[i] for i in test]
                a, s = _scores(part, [d for d, _ in decide(pol, part)], labels)
                agent, step = agent + a, step + s
        out[policy_name(kind, l2)] = {"agent": float(agent / (n * repeats)),
                                      "step": float(step / (n * repeats))}
    return out


def policy_name(kind: str, l2: float | None) -> str:
    return f"logistic(l2={l2:g})" if kind == "logistic" else kind


def choose_policy(cv: dict[str, dict[str, float]], n: int) -> tuple[str, float | None]:
    """The candidate with the best cross-validated agent + step among those no worse than
    `coarse` on agent and on step (a policy that buys agent accuracy with step accuracy is not
    taken); a policy must beat `coarse` by more than the noise of out-of-fold accuracy on `n`
    traces, 1 / (2 sqrt(n)) in agent + step (a change has to be shown to help: on 30 traces
    one verdict more is no proof), and among the others the earlier in CANDIDATE_POLICIES (more strongly
    regularised first) wins a tie."""
    total = lambda name: cv[name]["agent"] + cv[name]["step"]  # noqa: E731
    base = cv["coarse"]
    best, bar = ("coarse", None), total("coarse") + 0.5 / math.sqrt(max(n, 1))
    for kind, l2 in CANDIDATE_POLICIES[1:]:
        name = policy_name(kind, l2)
        safe = min(cv[name]["agent"] - base["agent"], cv[name]["step"] - base["step"]) > -1e-12
        if safe and total(name) > max(bar, total(policy_name(*best)) + 1e-12):
            best = (kind, l2)
    return best


@dataclass(frozen=True)
class Gate:
    """A fitted gate, as saved: the policy, what it was fitted for and on, its CV figures."""
    policy: Policy
    identity: dict[str, str]  # prompt_version, backend, strategy
    n_labelled: int
    n_open: int  # labelled traces where the stages disagreed on a valid answer
    cv: dict[str, dict[str, float]]
    coarse_model: dict[str, Any] = field(default_factory=dict)
    unsure_band: float = UNSURE_BAND
    trace_ids: tuple[str, ...] = ()  # what it was fitted on: a run on them is no test of it
    schema: str = GATE_SCHEMA

    def decide(self, rows: Sequence[GateRow]) -> list[tuple[str, float | None]]:
        return decide(self.policy, rows, self.unsure_band)


def fine_identity(backend_name: str, strategy: str) -> dict[str, str]:
    """What a gate is valid for: the prompts, the model (or adapter, or endpoint), the strategy."""
    return {"prompt_version": PROMPT_VERSION, "backend": backend_name, "strategy": strategy}


def labels_of(traces: Iterable[Trace]) -> dict[str, tuple[str, int]]:
    return {t.trace_id: (t.label.agent, t.label.step) for t in traces if t.label is not None}


def labelled_rows(cands: dict[str, dict], fine: dict[str, dict],
                  labels: dict[str, tuple[str, int]]) -> list[GateRow]:
    """The rows of the labelled traces that both stages answered, in trace-id order."""
    return [gate_row(cands[t], fine[t]) for t in sorted(labels) if t in cands and t in fine]


def fit_gate(rows: Sequence[GateRow], labels: dict[str, tuple[str, int]],
             identity: dict[str, str], coarse_model: dict | None = None, seed: int = 0) -> Gate:
    """Choose the policy by cross-validation on `rows`, then fit it on all of them."""
    if len(rows) < MIN_LABELLED:
        raise GateError(f"a gate needs at least {MIN_LABELLED} labelled traces that both stages "
                        f"answered; {len(rows)} given")
    cv = cross_validate(rows, labels, seed=seed)
    kind, l2 = choose_policy(cv, len(rows))
    return Gate(fit_policy(kind, rows, labels, l2), dict(identity), len(rows),
                sum(r.open for r in rows), cv, dict(coarse_model or {}),
                trace_ids=tuple(r.trace_id for r in rows))


def out_of_fold_decisions(rows: Sequence[GateRow], labels: dict[str, tuple[str, int]],
                          folds: int = 5, seed: int = 0) -> list[tuple[str, float | None]]:
    """Each row decided by a gate fitted (policy choice included) on the other folds only: the
    honest way to gate the very traces the gate is fitted on."""
    out: list[tuple[str, float | None]] = [("invalid", None)] * len(rows)
    for test in _folds(len(rows), max(2, min(folds, len(rows))), seed + 100):
        held = set(test)
        train = [rows[i] for i in range(len(rows)) if i not in held]
        kind, l2 = choose_policy(cross_validate(train, labels, seed=seed), len(train))
        pol = fit_policy(kind, train, labels, l2)
        for i, d in zip(test, decide(pol, [rows[i] for i in test])):
            out[i] = d
    return out


def describe(gate: Gate) -> str:
    """One line: the policy, the data, and the CV figures it was chosen on."""
    name = policy_name(gate.policy.kind, gate.policy.l2)
    cv = gate.cv.get(name, {})
    fig = lambda n: (f"{gate.cv[n]['agent']:.3f} / {gate.cv[n]['step']:.3f}"  # noqa: E731
                     if n in gate.cv else "-")
    return (f"policy {name}, fitted on {gate.n_labelled} labelled traces ({gate.n_open} where "
            f"the stages disagreed); cross-validated agent / step: this policy "
            f"{cv.get('agent', math.nan):.3f} / {cv.get('step', math.nan):.3f}, coarse only "
            f"{fig('coarse')}, fine only {fig('fine')}")
