"""Evaluation, the `astra run` pipeline, and the HTML reports as a browser shows them."""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from astra_eval.scoring import (FIRST_INVOCATION, area_under_risk_coverage, baseline_verdicts,
                                evaluate, expected_calibration_error, first_invocation,
                                risk_coverage)
from data_gen.readers import load_traces, write_traces
from data_gen.sim.generate import GenConfig, generate
from data_gen.trace import AgentSpec, Label, Step, System, Task, Trace
from browser import render
from conftest import send_completion
from test_coarse import DEV, TINY, _sim


def _trace(tid, agents, label):
    steps = tuple(Step(i, a, f"step {i} by {a}") for i, a in enumerate(agents))
    return Trace(tid, Task("q"), steps, label=Label(*label))


def _v(tid, agent, step, conf=None):
    return {"schema": "astra.verdict/v1", "trace_id": tid, "agent": agent, "step": step,
            "confidence": conf}


TRACES = [_trace("a", ["X", "Y", "X", "Y"], ("X", 2)), _trace("b", ["X", "Y", "Y"], ("Y", 2)),
          _trace("c", ["P", "Q Expert"], ("Q Expert", 1)), _trace("d", ["X", "Y"], ("X", 0))]


def test_strict_scoring_counts_every_labelled_trace():
    verdicts = {"a": _v("a", "X", 2, 0.9),             # right
                "b": _v("b", "Y", 1, 0.8),             # agent right, step one off
                "c": _v("c", "  q   EXPERT ", 1, 0.3)}  # case and whitespace only: right
    rep = evaluate(TRACES, {"ours": verdicts}, {})   # "d" has no verdict: wrong, still counted
    s = rep["overall"]["ours"]
    assert s["n"] == 4 and s["missing"] == 1
    assert (s["agent_acc"], s["step_acc"], s["step_acc_pm1"]) == (0.75, 0.5, 0.75)
    assert s["topk_agent_recall"] is None  # no candidates: nothing to recall
    assert [r["correct"] for r in rep["records"]] == [True, False, True, False]
    # "Q Expert" vs "QExpert" differs by more than whitespace: strict scoring says no
    assert evaluate(TRACES[2:3], {"o": {"c": _v("c", "QExpert", 1)}}, {}
                    )["overall"]["o"]["agent_acc"] == 0.0


def test_the_coarse_verdict_takes_the_likeliest_agent_and_backs_off_to_its_first_step():
    from data_gen.stage_files import FIRST_STEP_RATIO, coarse_choice

    def cands(*agents):
        return {"trace_id": "t", "agents": [{"agent": a, "score": p, "steps": [
            {"step": s, "score": q} for s, q in steps]} for a, p, steps in agents]}
    # a sharply peaked step of the less likely agent does not take the verdict
    assert coarse_choice(cands(("A", 0.6, [(5, 0.3), (2, 0.3)]), ("B", 0.4, [(3, 0.9)]))
                         )[:2] == ("A", 2)
    # the first step when it scores at least FIRST_STEP_RATIO of the likeliest step ...
    at = FIRST_STEP_RATIO * 0.8
    assert coarse_choice(cands(("A", 1.0, [(7, 0.8), (1, at)])))[:2] == ("A", 1)
    # ... the likeliest step when it does not
    agent, step, conf = coarse_choice(cands(("A", 1.0, [(7, 0.8), (1, at * 0.9)])))
    assert (agent, step) == ("A", 7) and conf == pytest.approx(0.8)
    assert coarse_choice(cands(("A", 1.0, [(7, 0.8), (1, 0.1)])), first_step_ratio=0.0
                         )[:2] == ("A", 1)
    # equal agents: the first listed; an agent without steps is never named
    assert coarse_choice(cands(("A", 0.5, [(0, 1.0)]), ("B", 0.5, [(1, 1.0)])))[0] == "A"
    assert coarse_choice(cands(("A", 0.9, []), ("B", 0.1, [(1, 1.0)])))[:2] == ("B", 1)
    with pytest.raises(ValueError, match="name no step"):
        coarse_choice(cands(("A", 0.9, [])))


def test_threshold_gives_coverage_and_selective_accuracy():
    verdicts = {"a": _v("a", "X", 2, 0.9), "b": _v("b", "Y", 1, 0.8), "c": _v("c", "P", 0, 0.3),
                "d": _v("d", "X", 0, 0.2)}
    s = evaluate(TRACES, {"o": verdicts}, {}, threshold=0.5)["overall"]["o"]
    assert s["coverage"] == 0.5 and s["selective_acc"] == 0.5  # a right, b wrong above 0.5
    assert s["step_acc"] == 0.5  # abstention never changes the strict figures


def test_calibration_and_risk_coverage_by_hand():
    conf = [0.95, 0.95, 0.55, 0.15]
    right = [True, False, True, False]
    # bins: [0.9,1.0): conf .95 acc .5 (n 2); [0.5,0.6): .55 vs 1 (n 1); [0.1,0.2): .15 vs 0
    assert expected_calibration_error(conf, right) == pytest.approx(
        (2 * 0.45 + 0.45 + 0.15) / 4)
    pts = risk_coverage(conf, right)
    # the two 0.95 answers enter together; one threshold cannot split a tie
    assert [(p["coverage"], p["accuracy"]) for p in pts] == [(0.5, 0.5), (0.75, 2 / 3),
                                                            (1.0, 0.5)]
    assert area_under_risk_coverage(pts) == pytest.approx(0.5 * 0.5 + 0.25 / 3 + 0.25 * 0.5)


def test_baselines_follow_their_rules():
    b = baseline_verdicts(TRACES, {"b": _v("b", "x", 0)}, seed=1)
    mf = b["most frequent agent, its first step"]
    assert (mf["a"]["agent"], mf["a"]["step"]) == ("X", 0)   # tie X/Y: the first to speak
    assert (mf["b"]["agent"], mf["b"]["step"]) == ("Y", 1)
    pf = b["predicted agent, its first step"]
    assert set(pf) == {"b"} and (pf["b"]["agent"], pf["b"]["step"]) == ("X", 0)
    for t in TRACES:  # random: an agent of the run and one of its own steps
        r = b["random"][t.trace_id]
        assert t.steps[r["step"]].agent == r["agent"]
    fi = b[FIRST_INVOCATION]  # no code, no tool: the team's first step
    assert (fi["a"]["agent"], fi["a"]["step"]) == ("X", 0)


def test_the_first_invocation_baseline_skips_the_environment():
    """The first step that runs code or calls a tool, by a team agent: the executor's own
    reports (exit codes) never count, and neither does a step before the first invocation."""
    code = "```python\nprint(42)\n```"
    t = Trace("c", Task("q"), (
        Step(0, "Computer_terminal", "exitcode: 1 (execution failed)"),
        Step(1, "Planner", "plan: compute the answer"),
        Step(2, "Coder", f"Here is the code:\n{code}"),
        Step(3, "Computer_terminal", "exitcode: 0 (execution succeeded)\nCode output: 42"),
        Step(4, "Planner", f"Check it again:\n{code}")), label=Label("Coder", 2))
    assert first_invocation(t) == 2
    # nothing is invoked, so only the format can say the terminal is a tool (as Who&When's
    # system_prompt does: data_gen/marks.py); the entity marks carry it
    quiet = Trace("d", Task("q"), (Step(0, "Computer_terminal", "exitcode: 0"),
                                   Step(1, "Planner", "the answer is 4"),
                                   Step(2, "Computer_terminal", "exitcode: 1")),
                  system=System(agents=(AgentSpec("Computer_terminal", kind="tool"),)),
                  label=Label("Planner", 1))
    assert first_invocation(quiet) == 1  # nothing invoked: the team's first step
    b = baseline_verdicts([t, quiet], {}, seed=0)[FIRST_INVOCATION]
    assert (b["c"]["agent"], b["c"]["step"], b["d"]["agent"]) == ("Coder", 2, "Planner")


def test_eval_cli_reports_bad_lines_and_scores_the_rest(tmp_path, capsys):
    from astra_cli.main import main
    p = tmp_path / "v.jsonl"
    good = _v("1", "Excel_Expert", 0, 0.7)
    p.write_bytes(json.dumps(good).encode() + b"\n{not json\n"
                  + json.dumps({**_v("2", "X", "seven"), "confidence": 0.5}).encode() + b"\n"
                  + json.dumps(_v("3", "X", 1, 1.7)).encode() + b"\n" + b"\xff\xfe bad\n")
    rc = main(["eval", str(DEV / "1.json"), str(DEV / "2.json"), "--verdicts", str(p),
               "--json", str(tmp_path / "e.json"), "--md", str(tmp_path / "e.md")])
    err = capsys.readouterr().err
    assert rc == 0
    assert f"{p}:2:" in err and f"{p}:3: field 'step' must be an integer" in err
    assert f"{p}:4: field 'confidence'" in err and f"{p}:5: not UTF-8" in err
    rep = json.loads((tmp_path / "e.json").read_text())
    ours = rep["overall"][rep["method"]]
    assert ours["n"] == 2 and ours["missing"] == 1 and ours["agent_acc"] == 0.5
    md = (tmp_path / "e.md").read_text()
    assert "| set | method | n | agent | step |" in md and "most frequent agent" in md


class OracleOfTheLastQuote(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that names the last step quoted in the prompt."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        steps = re.findall(r"<<<STEP (\d+) \| agent=([^>|]+?)[>|]", body["messages"][-1]["content"])
        step, agent = steps[-1]
        text = json.dumps({"agent": agent.strip(), "step": int(step), "reason": "last quoted"})
        send_completion(self, text, 100, 20)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def coarse_run(tmp_path_factory):
    from astra_jax.features import HashingEmbedder, featurise
    from astra_jax.train import train
    out = tmp_path_factory.mktemp("coarse") / "run"
    tr, va = _sim(30, 21), [t for t in _sim(8, 22) if t.variant == "fatal"]
    emb = HashingEmbedder()
    train(TINY, tr, featurise(tr, emb), va, featurise(va, emb), out, progress=False)
    return out


@pytest.fixture(scope="module")
def pipeline_run(coarse_run, tmp_path_factory):
    """`astra run` on three development logs and a hostile trace, coarse only."""
    from astra_cli.main import main
    d = tmp_path_factory.mktemp("pipe")
    hostile = Trace("evil<1>", Task("q"), (
        Step(0, "Planner", "plan: fetch data"),
        Step(1, "Coder", "<script>document.body.setAttribute('data-pwned','1')</script>"
                         "<img src=x onerror=\"document.title='pwned'\"> ```bad```"),
        Step(2, "Planner", "done </pre></div><b>not bold</b>")), label=Label("Coder", 1))
    long = max((t for r in generate(GenConfig(n_tasks=4, seed=29, min_tools=24, workers=1))
                for t in r.traces if t.variant == "fatal"), key=lambda t: t.label.step)
    assert 16 * long.label.step > 1600  # off the window: the page must scroll to the step
    write_traces([hostile, long], d / "hostile.jsonl")
    inputs = [str(DEV / "1.json"), str(DEV / "2.json"), str(DEV / "3.json"),
              str(d / "hostile.jsonl")]
    assert main(["run", *inputs, "--coarse", str(coarse_run), "--out", str(d / "out"),
                 "--threshold", "0.2"]) == 0
    return d, inputs


def test_run_writes_every_stage_and_restarts_from_each(pipeline_run, tmp_path, capsys):
    from astra_cli.main import main
    d, inputs = pipeline_run
    out = d / "out"
    cands = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    verdicts = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    assert [c["trace_id"] for c in cands][:4] == ["1", "2", "3", "evil<1>"]
    for c, v in zip(cands, verdicts):  # coarse only: the top agent and its own top step
        assert (v["agent"], v["step"], v["source"]) == (
            c["agents"][0]["agent"], c["agents"][0]["steps"][0]["step"], "gnn")
        assert v["latency_s"] == c["latency_s"] > 0
    rep = json.loads((out / "eval.json").read_text())
    assert rep["n_labelled"] == 5 and "ASTRA-JAX coarse" in rep["overall"]
    long = load_traces(d / "hostile.jsonl").traces[1]
    assert set(rep["subsets"]) == {"whowhen-algorithm", "native",
                                   f"astra-gen/{long.system.topology}"}
    assert (out / "report" / "index.html").exists()
    assert len(list((out / "report" / "traces").glob("*.html"))) == 5

    # fine stage from the coarse stage's file, against a real loopback endpoint
    srv = ThreadingHTTPServer(("127.0.0.1", 0), OracleOfTheLastQuote)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    fine = tmp_path / "fine"
    fine.mkdir()
    (fine / "candidates.jsonl").write_text((out / "candidates.jsonl").read_text())
    before = (fine / "candidates.jsonl").stat().st_mtime_ns
    try:
        assert main(["run", *inputs, "--from", "fine", "--out", str(fine), "--llm-url",
                     f"http://127.0.0.1:{srv.server_port}/v1", "--no-html"]) == 0
    finally:
        srv.shutdown()
        srv.server_close()
    assert (fine / "candidates.jsonl").stat().st_mtime_ns == before  # reused, not rewritten
    vs = [json.loads(x) for x in (fine / "verdicts.jsonl").read_text().splitlines()]
    assert len(vs) == 5 and all(v["source"] == "llm" and v["tokens"]["prompt"] == 100
                                for v in vs)
    assert all(v["latency_s"] > c["latency_s"] for v, c in zip(vs, cands))  # both stages
    rep = json.loads((fine / "eval.json").read_text())
    assert list(rep["overall"])[:2] == [f"ASTRA-JAX coarse→fine (endpoint:http://127.0.0.1:"
                                        f"{srv.server_port}/v1)", "ASTRA-JAX coarse only"]

    # report only, from the files; a stage file missing is a clear error
    assert main(["run", *inputs, "--from", "report", "--out", str(fine), "--no-html"]) == 0
    empty = tmp_path / "empty"
    assert main(["run", *inputs, "--from", "fine", "--out", str(empty)]) == 2
    assert "needs" in capsys.readouterr().err


def test_a_run_builds_each_trace_graph_once(coarse_run, tmp_path, monkeypatch):
    """Features, the baselines' first tool call and the report share one DHCG per trace."""
    import shutil

    from astra_cli import pipeline_commands
    from astra_cli.main import main
    from astra_eval import html_report, scoring
    from astra_jax import features
    from data_gen import dhcg

    built = []

    def counted(trace):
        built.append(trace.trace_id)
        return dhcg.build_dhcg(trace)

    for module in (features, scoring, html_report, pipeline_commands):
        monkeypatch.setattr(module, "build_dhcg", counted)
    run = tmp_path / "run"  # no feature cache: every graph is built in this run
    shutil.copytree(coarse_run, run, ignore=shutil.ignore_patterns("feature_cache"))
    logs = [str(DEV / f"{i}.json") for i in (1, 2, 3)]
    assert main(["run", *logs, "--coarse", str(run), "--out", str(tmp_path / "out")]) == 0
    # (loading a run's checkpoints featurises a one-step shape-only trace, "sample")
    assert sorted(b for b in built if b != "sample") == ["1", "2", "3"]
    built.clear()
    assert main(["run", *logs, "--from", "report", "--out", str(tmp_path / "out")]) == 0
    assert sorted(built) == ["1", "2", "3"]
    assert len(list((tmp_path / "out" / "report" / "traces").glob("*.html"))) == 3


def _check_page(page: Path, png: Path):
    r = render(page, png)
    assert r.body_attr("data-ready") == "1", "the page's script did not finish"
    assert r.body_attr("data-errors") is None, r.body_attr("data-errors")
    assert "Uncaught" not in r.console, r.console[-2000:]
    return r


def _red_pixels(png: Path, box: tuple[int, int, int, int]) -> int:
    from PIL import Image
    x, y, w, h = box
    px = np.asarray(Image.open(png).convert("RGB").crop((x - 2, y - 2, x + w + 2, y + h + 2)),
                    dtype=int)
    return int(((px[..., 0] > 180) & (px[..., 1] < 90) & (px[..., 2] < 90)).sum())


def test_trace_pages_render_in_chromium_with_the_step_highlighted(pipeline_run, tmp_path):
    from astra_cli.main import main
    d, inputs = pipeline_run
    # the long trace's verdict moved to its labelled step, far right of the window, and the
    # report redrawn from the stage files: the page has to bring that step into view
    out = tmp_path / "late"
    out.mkdir()
    (out / "candidates.jsonl").write_text((d / "out" / "candidates.jsonl").read_text())
    long = load_traces(d / "hostile.jsonl").traces[1]
    verdicts = {v["trace_id"]: v for v in map(
        json.loads, (d / "out" / "verdicts.jsonl").read_text().splitlines())}
    verdicts[long.trace_id].update(agent=long.label.agent, step=long.label.step)
    (out / "verdicts.jsonl").write_text("".join(json.dumps(v) + "\n" for v in verdicts.values()))
    assert main(["run", *inputs, "--from", "report", "--out", str(out)]) == 0
    index = out / "report" / "index.html"
    links = dict(re.findall(r'<a href="(traces/[^"]+)">([^<]+)</a>', index.read_text()))
    assert sorted(links.values())[:4] == ["1", "2", "3", "evil&lt;1&gt;"] and len(links) == 5
    for href, tid in links.items():
        tid = tid.replace("&lt;", "<").replace("&gt;", ">")
        r = _check_page(out / "report" / href, tmp_path / f"{len(tid)}-{tid[:3]}.png")
        step = verdicts[tid]["step"]
        assert r.body_attr("data-highlighted") == str(step)
        assert f'id="step-{step}" class="step attributed' in r.dom or \
            re.search(rf'class="step attributed[^"]*" id="step-{step}"', r.dom)
        box = tuple(int(v) for v in r.body_attr("data-highlight-box").split(","))
        assert box[2] > 0 and box[3] > 0
        assert _red_pixels(r.screenshot, box) > 20, "the attributed step is not outlined in red"
        assert 'id="dhcg"' in r.dom and 'id="timeline"' in r.dom and "node-tool" in r.dom
        if tid == "evil<1>":  # the log's markup is shown as text, never run
            assert r.body_attr("data-pwned") is None and "<title>pwned" not in r.dom
            assert "&lt;script&gt;" in r.dom and "<b>not bold</b>" not in r.dom


def test_run_page_renders_in_chromium(pipeline_run, tmp_path):
    d, _ = pipeline_run
    r = _check_page(d / "out" / "report" / "index.html", tmp_path / "index.png")
    for part in ('id="accuracy"', 'id="risk-coverage"', 'id="reliability"', 'id="confusion"',
                 'id="traces"', "most frequent agent, its first step"):
        assert part in r.dom
    from PIL import Image
    px = np.asarray(Image.open(r.screenshot).convert("RGB").resize((64, 64))).reshape(-1, 3)
    assert len(np.unique(px, axis=0)) > 8  # drew something, not a blank page
