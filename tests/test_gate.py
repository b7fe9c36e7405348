"""The gate between the stages: it changes a coarse verdict only where that was shown to help.

Held-out figures on simulated traces, with a simulated coarse stage (candidates that name the
label with a known probability, confident when right more often than when wrong) and fine
stages that are good, or answer at random, in process and behind a loopback OpenAI-compatible
endpoint; bad gate files; `astra run --fit-gate` / `--gate` end to end (coarse stage from a
file, fine stage at an endpoint).
"""
import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from conftest import send_completion
from data_gen.chat_client import ChatConfig
from data_gen.readers import write_traces
from data_gen.sim.generate import GenConfig, generate
from data_gen.stage_files import coarse_verdict
from data_gen.trace import CANDIDATES_SCHEMA, Trace
from llm_stage.backends import Completion, EndpointBackend
from llm_stage.gate import (GATE_SCHEMA, GateError, GateRow, fine_identity, fit_gate, gate_row,
                            labelled_rows, labels_of)
from llm_stage.gate_apply import load_gate, save_gate
from llm_stage.localize import localize
from llm_stage.prompts import approx_tokens

_HEADER = re.compile(r"<<<STEP (\d+) \| agent=([^>|]+?)[>|]")


class RandomBackend:
    """A deliberately bad fine stage: names a random step among those its prompt shows, with a
    random confidence; one answer in ten is not JSON at all."""
    name = "random"
    count = staticmethod(approx_tokens)
    parallel = 1

    def __init__(self, seed: int = 0):
        self.rng, self.lock = random.Random(seed), threading.Lock()

    def answer(self, messages) -> tuple[str, float]:
        shown = _HEADER.findall(messages[-1]["content"])
        with self.lock:
            if self.rng.random() < 0.1:
                return "I cannot tell.", self.rng.random()
            step, agent = self.rng.choice(shown)
            return json.dumps({"agent": agent.strip(), "step": int(step)}), self.rng.random()

    def complete(self, messages, max_tokens=256):
        text, prob = self.answer(messages)
        return Completion(text, 10, 5, prob)


class LabelReader(RandomBackend):
    """A good fine stage: on the traces it "reads well" (a fixed share) it names the label
    and is confident; on the others it guesses like RandomBackend, less confident."""
    name = "reader"

    def __init__(self, labels: dict[str, tuple[str, int]], share: float, seed: int = 0):
        super().__init__(seed)
        self.by_task = labels
        self.share = share

    def complete(self, messages, max_tokens=256):
        task = messages[-1]["content"].split("<<<TASK>>>\n", 1)[1].split("\n<<<END TASK>>>")[0]
        agent, step = self.by_task[task]
        with self.lock:
            reads = self.rng.random() < self.share
            noise = self.rng.random()
        if reads:
            return Completion(json.dumps({"agent": agent, "step": step}), 10, 5, 0.7 + 0.3 * noise)
        text, _ = self.answer(messages)
        return Completion(text, 10, 5, 0.6 * noise)


def simulated_candidates(trace: Trace, rng: random.Random, right: float) -> dict:
    """A coarse stage that ranks the labelled (agent, step) first with probability `right`,
    more confidently when it does."""
    lab = trace.label
    agents = list(dict.fromkeys(s.agent for s in trace.steps))
    ok = rng.random() < right
    top = lab.agent if ok else rng.choice([a for a in agents if a != lab.agent] or agents)
    order = [top] + [a for a in agents if a != top]
    score = rng.uniform(0.5, 0.9) if ok else rng.uniform(0.3, 0.7)
    out = []
    for r, a in enumerate(order[:3]):
        steps = [s.index for s in trace.steps if s.agent == a]
        if ok and a == lab.agent:
            steps = [lab.step] + [i for i in steps if i != lab.step]
        else:
            rng.shuffle(steps)
        out.append({"agent": a, "score": score if r == 0 else (1 - score) / 2,
                    "steps": [{"step": i, "score": 0.8 if j == 0 else 0.2 / len(steps)}
                              for j, i in enumerate(steps)]})
    return {"schema": CANDIDATES_SCHEMA, "trace_id": trace.trace_id, "failure_prob": 1.0,
            "uncertainty": 0.0, "agents": out, "model": {"checkpoint": "simulated", "step": 0}}


@pytest.fixture(scope="module")
def sim():
    """Simulated failed runs (unique tasks) and their simulated coarse candidates."""
    traces = [t for r in generate(GenConfig(n_tasks=170, seed=41, workers=1, max_tools=5))
              for t in r.traces if t.variant == "fatal"]
    seen, unique = set(), []
    for t in traces:
        if t.task.question not in seen:
            seen.add(t.task.question)
            unique.append(t)
    rng = random.Random(7)
    cands = {t.trace_id: simulated_candidates(t, rng, 0.6) for t in unique}
    return unique, cands


def accuracy(traces, verdicts) -> tuple[int, int]:
    """(agents right, steps right) over `traces`."""
    a = sum(verdicts[t.trace_id]["agent"] == t.label.agent for t in traces)
    s = sum(verdicts[t.trace_id]["step"] == t.label.step for t in traces)
    return a, s


def held_out_figures(backend, traces, cands, **localize_kw) -> dict[str, tuple[int, int]]:
    """Fit the gate on the first half, and score coarse only, fine only and gated on the
    second half."""
    fine = {v["trace_id"]: v for v in localize(traces, cands, backend, budget=100_000,
                                                progress=False, **localize_kw)}
    assert len(fine) == len(traces)
    half = len(traces) // 2
    fit, test = traces[:half], traces[half:]
    gate = fit_gate(labelled_rows(cands, fine, labels_of(fit)), labels_of(fit),
                    fine_identity(backend.name, "coarse-to-fine"))
    rows = [gate_row(cands[t.trace_id], fine[t.trace_id]) for t in test]
    gated = {}
    for r, (d, _) in zip(rows, gate.decide(rows)):
        gated[r.trace_id] = fine[r.trace_id] if d in ("agree", "fine") else coarse_verdict(
            cands[r.trace_id])
    return {"coarse": accuracy(test, {t: coarse_verdict(c) for t, c in cands.items()}),
            "fine": accuracy(test, fine), "gated": accuracy(test, gated), "n": (len(test),) * 2,
            "policy": gate.policy.kind}


def test_with_a_fine_stage_that_answers_at_random_the_gate_keeps_the_coarse_verdicts(sim):
    traces, cands = sim
    f = held_out_figures(RandomBackend(seed=1), traces, cands)
    for i in (0, 1):  # agent, step
        assert f["coarse"][i] > f["fine"][i] + 5, f  # the random stage is far worse ...
        assert abs(f["gated"][i] - f["coarse"][i]) <= 2, f  # ... and the gate keeps coarse


def test_with_a_good_fine_stage_the_gate_beats_both_stages(sim):
    traces, cands = sim
    labels = {t.task.question: (t.label.agent, t.label.step) for t in traces}
    f = held_out_figures(LabelReader(labels, share=0.55, seed=2), traces, cands)
    for i in (0, 1):
        assert f["gated"][i] >= max(f["coarse"][i], f["fine"][i]) - 1, f
    assert f["gated"][1] > max(f["coarse"][1], f["fine"][1]), f  # it used both where each helps
    assert f["policy"] == "logistic"


class RandomEndpoint(BaseHTTPRequestHandler):
    """RandomBackend behind an OpenAI-compatible endpoint on loopback."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text, _ = self.server.random.answer(body["messages"])
        send_completion(self, text, 100, 20)

    def log_message(self, *args):
        pass


@pytest.fixture
def random_endpoint():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RandomEndpoint)
    srv.random = RandomBackend(seed=3)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/v1"
    srv.shutdown()
    srv.server_close()


def test_an_endpoint_that_answers_at_random_is_gated_to_the_coarse_verdicts(sim, random_endpoint):
    traces, cands = sim
    be = EndpointBackend(ChatConfig(url=random_endpoint, model="rnd", retries=0), parallel=4)
    f = held_out_figures(be, traces, cands)
    for i in (0, 1):
        assert f["coarse"][i] > f["fine"][i] + 5, f
        # four answers at once arrive in any order, so the random draws differ from run to
        # run; what must hold is that the gate never lets them make the verdicts worse
        assert f["gated"][i] >= f["coarse"][i] - 2, f


def _rows(n: int) -> tuple[list[GateRow], dict]:
    rng = np.random.default_rng(0)
    rows, labels = [], {}
    for i in range(n):
        labels[str(i)] = ("A", 0)
        rows.append(GateRow(str(i), "A", int(rng.integers(0, 2)), float(rng.random()), "A",
                            int(rng.integers(0, 2)), float(rng.random()), True, 0.1, False))
    return rows, labels


def test_bad_gate_files_are_refused_naming_the_file(tmp_path):
    rows, labels = _rows(40)
    ident = fine_identity("local:m+adapter", "coarse-to-fine")
    path = save_gate(fit_gate(rows, labels, ident), tmp_path / "g.json")
    assert load_gate(path, ident).n_labelled == 40
    d = json.loads(path.read_text())
    assert d["schema"] == GATE_SCHEMA and d["identity"] == ident and len(d["trace_ids"]) == 40

    def refused(change, identity=ident, match=""):
        bad = tmp_path / "bad.json"
        bad.write_text(change(json.loads(path.read_text())) if callable(change) else change)
        with pytest.raises(GateError, match=re.escape(str(bad)) + ".*" + match):
            load_gate(bad, identity)

    refused(lambda d: json.dumps({**d, "identity": {**d["identity"],
                                                    "prompt_version": "astra.prompt/v0"}}),
            match="prompt_version 'astra.prompt/v0'")
    refused(lambda d: json.dumps(d), fine_identity("endpoint:http://x/v1", "coarse-to-fine"),
            match="backend 'local:m\\+adapter'")
    refused(lambda d: json.dumps({**d, "n_labelled": 12}), match="12 labelled traces")
    refused(lambda d: json.dumps({**d, "schema": "astra.gate/v9"}), match="schema")
    refused(lambda d: json.dumps({k: v for k, v in d.items() if k != "policy"}),
            match="malformed")
    refused("{not json", match="not a JSON")
    with pytest.raises(GateError, match="cannot read"):
        load_gate(tmp_path / "missing.json")
    with pytest.raises(GateError, match="at least 20 labelled traces"):
        fit_gate(rows[:19], labels, ident)


def _write_candidates(cands: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(c) + "\n" for c in cands.values()))


def test_astra_run_fits_uses_and_refuses_gates(sim, random_endpoint, tmp_path, capsys):
    from astra_cli.main import main
    traces, cands = sim
    logs = tmp_path / "logs.jsonl"
    write_traces(traces[:60], logs)
    out = tmp_path / "run"
    _write_candidates({t.trace_id: cands[t.trace_id] for t in traces[:60]},
                      out / "candidates.jsonl")
    base = ["run", str(logs), "--from", "fine", "--out", str(out), "--llm-url", random_endpoint,
            "--llm-model", "rnd", "--no-html", "--parallel", "4"]
    # fitted by cross-validation on the run's own labelled logs: each decided out-of-fold
    assert main(base + ["--fit-gate", str(logs)]) == 0
    text = capsys.readouterr().out
    assert "60 decided out-of-fold" in text and (out / "astra_gate.json").is_file()
    rep = json.loads((out / "eval.json").read_text())
    name = f"endpoint:{random_endpoint}#rnd"
    gated, fine, coarse = (rep["overall"][m] for m in (
        f"ASTRA-JAX gated coarse→fine ({name})", f"ASTRA-JAX coarse→fine ({name})",
        "ASTRA-JAX coarse only"))
    assert list(rep["overall"])[0] == f"ASTRA-JAX gated coarse→fine ({name})"
    assert gated["agent_acc"] >= coarse["agent_acc"] - 2 / 60
    # a random step is rarely the decisive one (its agent often is: some teams have one agent)
    assert fine["step_acc"] < coarse["step_acc"] - 0.15 and fine["changed"] > 0.5
    assert gated["changed"] < fine["changed"] / 2 and coarse["changed"] is None  # the reference
    assert fine["changed_n"] == round(fine["changed"] * 60) and \
        fine["changed_right"] < fine["changed_n"] / 4  # a random change is rarely right
    md = (out / "eval.md").read_text()
    assert "| changed | changes right |" in md and f"{fine['changed_right']} of " \
        f"{fine['changed_n']}" in md
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert all(v["gate"]["fine"]["agent"] for v in verdicts)

    # a later run finds OUT/astra_gate.json by itself; these traces are its fitting traces
    assert main(base) == 0
    io = capsys.readouterr()
    assert "astra_gate.json: policy" in io.out and "training figures" in io.err

    # refused: another prompt version, or fitted on too few traces; the run says so and
    # falls back to coarse only
    for change, why in (({"identity": {"prompt_version": "astra.prompt/v0", "backend": name,
                                       "strategy": "coarse-to-fine"}}, "prompt_version"),
                        ({"n_labelled": 5}, "5 labelled traces")):
        bad = tmp_path / "bad_gate.json"
        bad.write_text(json.dumps({**json.loads((out / "astra_gate.json").read_text()),
                                   **change}))
        assert main(base + ["--gate", str(bad)]) == 0
        io = capsys.readouterr()
        assert f"gate refused: {bad}" in io.err and why in io.err
        assert "falling back to coarse only" in io.out
        vs = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
        for v in vs:
            c = coarse_verdict(cands[v["trace_id"]])
            assert (v["agent"], v["step"]) == (c["agent"], c["step"])

    # off: today's behaviour, the fine stage's answers
    assert main(base + ["--gate", "off"]) == 0
    vs = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert not any("gate" in v for v in vs) and sum(v["source"] == "llm" for v in vs) > 40
    assert list(json.loads((out / "eval.json").read_text())["overall"])[0] == \
        f"ASTRA-JAX coarse→fine ({name})"


def test_astra_llm_fit_gate(sim, random_endpoint, tmp_path, capsys):
    from llm_stage.cli import main
    traces, cands = sim
    logs, cpath, vpath = tmp_path / "l.jsonl", tmp_path / "c.jsonl", tmp_path / "v.jsonl"
    write_traces(traces[:30], logs)
    _write_candidates({t.trace_id: cands[t.trace_id] for t in traces[:30]}, cpath)
    assert main(["localize", str(logs), "--candidates", str(cpath), "--llm-url", random_endpoint,
                 "--out", str(vpath), "--parallel", "1"]) == 0
    gate = tmp_path / "adapter" / "astra_gate.json"
    assert main(["fit-gate", str(logs), "--candidates", str(cpath), "--verdicts", str(vpath),
                 "--out", str(gate)]) == 0
    g = load_gate(gate, fine_identity(f"endpoint:{random_endpoint}", "coarse-to-fine"))
    assert g.n_labelled == 30 and g.policy.kind == "coarse", g.cv
    # too few labelled traces: a clear error, no file
    write_traces(traces[:10], logs)
    assert main(["fit-gate", str(logs), "--candidates", str(cpath), "--verdicts", str(vpath),
                 "--out", str(tmp_path / "g2.json")]) == 1
    assert "at least 20 labelled traces" in capsys.readouterr().err
    assert not (tmp_path / "g2.json").exists()
