"""Labels beside the logs (`astra.labels/v1`): the reader, its bad input, `--labels` on the
commands that read labelled logs, and labelling in the HTML report in headless Chromium."""
import dataclasses
import json
import re
from pathlib import Path


from data_gen.labels import (LABELS_SCHEMA, SidecarLabel, apply_labels, read_labels, same_file,
                             write_labels)
from data_gen.readers import load_traces, write_traces
from data_gen.trace import Label, Step, Task, Trace
from test_coarse import DEV, TINY, TINY_ARGS, TINY_MODEL_SETS

HAND = DEV.parent / "Hand-Crafted"


def _line(**kw) -> str:
    return json.dumps({"schema": LABELS_SCHEMA, **kw})


def _unlabelled(paths) -> list[Trace]:
    """Real logs with their labels taken away, as a team's own unlabelled runs are."""
    return [dataclasses.replace(t, label=None) for t in load_traces(paths).traces]


def test_the_reader_uses_good_lines_and_names_every_bad_one(tmp_path):
    p = tmp_path / "labels.jsonl"
    lines = [_line(trace_id="1", agent="Excel_Expert", step=3, reason="r", labelled_by="ann",
                   at="2026-12-07T01:30:00.000Z"),             # 1 good
             "{not json",                                       # 2
             json.dumps({"schema": "astra.verdict/v1", "trace_id": "1"}),  # 3 wrong schema
             _line(trace_id="2", step=1),                       # 4 no agent
             _line(trace_id="2", agent="A", step="1"),          # 5 step not a number
             _line(trace_id="2", failed=False, step=1),         # 6 not failed, yet a step
             _line(trace_id="2", agent="A", step=1, mode="typo"),  # 7 unknown mode
             _line(trace_id="2", agent="A", step=1, at="yesterday"),  # 8 not a time
             "[1, 2]",                                          # 9 not an object
             _line(agent="A", step=1),                          # 10 no trace id
             _line(trace_id="3", failed=False),                 # 11 good
             _line(trace_id="4", agent="A", step=-1)]           # 12 negative step
    p.write_bytes(("\n".join(lines) + "\n\n").encode() + b"\xff\xfe\n")  # 14: not UTF-8
    labels, problems = read_labels([p, tmp_path / "missing.jsonl"])
    assert [(x.trace_id, x.failed, x.agent, x.step, x.line) for x in labels] == [
        ("1", True, "Excel_Expert", 3, 1), ("3", False, None, None, 11)]
    assert labels[0].reason == "r" and labels[0].labelled_by == "ann"
    where = [re.match(r"(.*?:\d+): ", q).group(1) for q in problems[:-1]]
    assert where == [f"{p}:{n}" for n in (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14)]
    text = "\n".join(problems)
    for part in ("not JSON", "field 'schema' is 'astra.verdict/v1'", "field 'agent' is missing",
                 "field 'step' must be a whole number", "\"failed\": false with field 'step'",
                 "field 'mode' is 'typo'", "not an ISO 8601 time", "must hold a JSON object",
                 "field 'trace_id' is missing", "must be 0 or more", "not UTF-8",
                 f"{tmp_path / 'missing.jsonl'}: cannot read"):
        assert part in text, part


def test_a_file_that_is_not_jsonl_or_is_empty_is_named(tmp_path):
    doc = tmp_path / "pretty.json"
    doc.write_text(json.dumps([{"schema": LABELS_SCHEMA, "trace_id": "1", "agent": "A",
                                "step": 0}], indent=2))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    labels, problems = read_labels([doc, empty])
    assert labels == []
    assert problems == [f"{doc}: one JSON document over several lines, not JSONL; write one "
                        f"{LABELS_SCHEMA} object per line",
                        f"{empty}: no labels (the file is empty)"]


def test_writer_and_reader_round_trip(tmp_path):
    labels = [SidecarLabel("a", agent="X", step=2, mode="logic_error", reason="ü", source="f.json",
                           labelled_by="me", at="2026-01-01T00:00:00+00:00"),
              SidecarLabel("b", failed=False, reason="it answered right")]
    assert write_labels(labels, tmp_path / "l" / "labels.jsonl") == 2
    back, problems = read_labels([tmp_path / "l" / "labels.jsonl"])
    assert problems == []
    assert [dataclasses.replace(x, file="<memory>", line=0) for x in back] == labels


def test_labels_override_add_and_mark_runs_that_did_not_fail(tmp_path):
    dev = load_traces([DEV / "1.json", DEV / "2.json"]).traces
    bare = Trace("mine", Task("q"), (Step(0, "Planner", "plan"), Step(1, "Coder", "code"),
                                     Step(2, "Planner", "done")))
    traces = dev + [bare]
    labels = [SidecarLabel("1", agent="  excel_EXPERT ", step=1, reason="mine", file="f", line=1),
              SidecarLabel("mine", agent="Coder", step=1, file="f", line=2),
              SidecarLabel("2", failed=False, file="f", line=3)]
    out, problems = apply_labels(traces, labels)
    assert problems == []
    assert out[0].label == Label("Excel_Expert", 1, None, "mine")  # the log's spelling
    assert out[0].source["label_from"] == "f:1" and out[0].failed
    assert out[2].label == Label("Coder", 1) and out[2].failed
    assert out[1].label is None and out[1].outcome.success is True and not out[1].failed
    assert [t.trace_id for t in out] == ["1", "2", "mine"] and traces[0].label.step == 0


def test_labels_that_do_not_fit_are_listed_and_the_rest_used():
    dev = load_traces([DEV / "1.json", DEV / "2.json", DEV / "3.json", DEV / "4.json"]).traces
    labels = [SidecarLabel("1", agent="Nobody", step=1, file="f", line=1),
              SidecarLabel("4", agent=dev[3].steps[0].agent, step=99, file="f", line=2),
              SidecarLabel("404", agent="A", step=0, file="f", line=3),
              SidecarLabel("3", agent="Verification_Expert", step=1, file="f", line=4),
              SidecarLabel("3", failed=False, file="g", line=7),
              SidecarLabel("2", agent="Verification_Expert", step=1, reason="old", file="f",
                           line=5),
              SidecarLabel("2", agent="verification_expert", step=1, reason="new", file="g",
                           line=8)]
    out, problems = apply_labels(dev, labels)
    assert problems[0].startswith("f:1: agent 'Nobody' never speaks in trace '1'")
    assert problems[1].startswith("f:2: step 99 is outside trace '4'")
    assert problems[2] == "f:3: trace_id '404' matches no log given"
    assert problems[3].startswith("f:4: trace '3' is labelled differently (f:4 says "
                                  "Verification_Expert at step 1; g:7 says it did not fail)")
    assert problems[4].startswith("g:7: trace '3' is labelled differently")
    assert len(problems) == 5
    assert out[0] is dev[0] and out[2] is dev[2] and out[3] is dev[3]  # left as they were
    assert out[1].label == Label("Verification_Expert", 1, None, "new")  # agreeing: the last


def test_source_says_which_of_two_logs_with_one_id():
    both = load_traces([DEV / "1.json", HAND / "1.json"]).traces
    assert [t.trace_id for t in both] == ["Algorithm-Generated/1", "Hand-Crafted/1"]
    hand_agent = both[1].steps[0].agent
    labels = [SidecarLabel("1", agent=hand_agent, step=0, source="Hand-Crafted/1.json",
                           file="f", line=1),
              SidecarLabel("1", agent="Excel_Expert", step=0, file="f", line=2),
              SidecarLabel("1", agent="Excel_Expert", step=0, source="elsewhere/1.json",
                           file="f", line=3)]
    out, problems = apply_labels(both, labels)
    assert out[1].label.agent == hand_agent and out[1].label.step == 0 and out[0] is both[0]
    assert problems[0].startswith("f:2: trace_id '1' names 2 logs") and "give 'source'" in \
        problems[0]
    assert problems[1].startswith("f:3: trace '1' was read from") and len(problems) == 2
    assert same_file("12.json", "data/x/12.json") and same_file(str(DEV / "1.json"),
                                                                "data/who_and_when/../who_and_when/"
                                                                "Algorithm-Generated/1.json")
    assert not same_file("Hand-Crafted/1.json", str(DEV / "1.json"))


def test_a_simulated_golden_trace_cannot_take_a_fault_label():
    from test_coarse import _sim
    golden = next(t for t in _sim(2, 3) if t.variant == "golden")
    out, problems = apply_labels([golden], [SidecarLabel(golden.trace_id, agent=golden.agents[0],
                                                         step=0, file="f", line=1)])
    assert out[0] is golden and "a golden trace carries no fault label" in problems[0]


def test_eval_with_labels_scores_them_and_exits_2_when_none_is_usable(tmp_path, capsys):
    from astra_cli.main import main
    verdicts = tmp_path / "v.jsonl"
    verdicts.write_text("".join(json.dumps({"schema": "astra.verdict/v1", "trace_id": t,
                                            "agent": "Excel_Expert", "step": 5,
                                            "confidence": 0.5}) + "\n" for t in ("1", "2")))
    labels = tmp_path / "l.jsonl"
    labels.write_text(_line(trace_id="1", agent="Excel_Expert", step=5) + "\n"
                      + _line(trace_id="nope", agent="X", step=0) + "\n")
    logs = [str(DEV / "1.json"), str(DEV / "2.json")]
    assert main(["eval", *logs, "--verdicts", str(verdicts),
                 "--json", str(tmp_path / "a.json")]) == 0
    assert main(["eval", *logs, "--verdicts", str(verdicts), "--labels", str(labels),
                 "--json", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert f"{labels}:2: trace_id 'nope' matches no log given" in err
    assert "labels: 1 trace(s) labelled from 1 file(s) (1 replacing the log's own label" in err
    before, after = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    ours = lambda r: r["overall"][r["method"]]  # noqa: E731
    assert ours(before)["step_acc"] == 0.0 and ours(after)["step_acc"] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_line(trace_id="nope", agent="X", step=0) + "\n")
    assert main(["eval", *logs, "--verdicts", str(verdicts), "--labels", str(bad)]) == 2
    assert "error: no usable label in" in capsys.readouterr().err


def _kinds(out: str) -> dict[tuple[str, str], int]:
    """The counts of `astra train`'s table of what it learns from: (data, kind) → traces."""
    rows = re.findall(r"^\s*(training|validation|simulated)\s+(real|simulated)\s+(\w[\w ]*?)\s+"
                      r"(\d+)\s*$", out, re.M)
    return {(d, k): int(n) for d, _, k, n in rows}


def test_labels_on_train_cv_run_and_predict(tmp_path, capsys):
    from astra_cli.main import main
    logs = tmp_path / "mine.jsonl"
    write_traces(_unlabelled([DEV / f"{i}.json" for i in range(1, 7)]), logs)
    traces = load_traces(logs).traces
    labels = tmp_path / "labels.jsonl"
    write_labels([SidecarLabel(t.trace_id, agent=t.steps[1].agent, step=1, source=str(logs))
                  for t in traces[:5]] + [SidecarLabel(traces[5].trace_id, failed=False)], labels)
    args = ["--epochs", "1", *TINY_ARGS]
    assert main(["train", str(logs), "--out", str(tmp_path / "bare"), *args]) == 0
    assert _kinds(capsys.readouterr().out) == {("training", "unlabelled failure"): 6}
    assert main(["train", str(logs), "--labels", str(labels), "--out", str(tmp_path / "run"),
                 *args]) == 0
    out = capsys.readouterr().out
    assert _kinds(out) == {("training", "labelled failure"): 5,
                           ("training", "successful run"): 1}, out
    assert main(["cv", str(logs), "--labels", str(labels), "--folds", "2", "--jobs", "1",
                 "--out", str(tmp_path / "cv"), "--epochs", "1", *TINY_MODEL_SETS,
                 "--set", f"model.d_model={TINY.model.d_model}",
                 "--set", f"batch_size={TINY.batch_size}"]) == 0
    folds = json.loads((tmp_path / "cv" / "folds.json").read_text())
    assert sorted(x for f in folds for x in f["test"]) == sorted(t.trace_id for t in traces[:5])
    assert main(["run", str(logs), "--labels", str(labels), "--coarse", str(tmp_path / "run"),
                 "--out", str(tmp_path / "r"), "--no-html"]) == 0
    rep = json.loads((tmp_path / "r" / "eval.json").read_text())
    assert rep["n_labelled"] == 5
    assert {r["trace_id"]: (r["label_agent"], r["label_step"]) for r in rep["records"]} == {
        t.trace_id: (t.steps[1].agent, 1) for t in traces[:5]}
    assert main(["predict", str(logs), "--labels", str(labels), "--run", str(tmp_path / "run"),
                 "--out", str(tmp_path / "c.jsonl")]) == 0
    assert "labelled" in capsys.readouterr().out


# --- labelling in the report, in headless Chromium ------------------------------------------

def test_label_in_the_report_save_and_train_on_it(tmp_path, capsys):
    from astra_cli.main import main
    from astra_eval.html_report import write_reports
    from browser import Browser, chromium
    chromium()
    logs = tmp_path / "mine.jsonl"
    write_traces(_unlabelled([DEV / "1.json", DEV / "2.json", DEV / "3.json"]), logs)
    traces = load_traces(logs).traces
    conf = {"1": 0.9, "2": 0.1, "3": 0.4}
    verdicts = {t.trace_id: {"trace_id": t.trace_id, "agent": t.steps[0].agent, "step": 0,
                             "confidence": conf[t.trace_id], "source": "gnn"} for t in traces}
    index = write_reports(tmp_path / "report", traces, {}, verdicts, None, 0.0, progress=False)
    html = index.read_text()
    rows = re.findall(r'<tr data-trace="(\d+)"><td><a href="([^"]+)">([^<]+)</a>', html)
    assert [tid for _, _, tid in rows] == ["2", "3", "1"]  # least certain first
    pages = {tid: index.parent / href for _, href, tid in rows}

    downloads = tmp_path / "downloads"
    b = Browser(downloads)
    try:
        b.open(pages["2"])
        assert b.js("document.body.getAttribute('data-ready')") == "1"
        agent = traces[1].steps[3].agent
        b.type_into("#mark-by", "ann")
        b.type_into("#mark-reason", "made up the data <b>")
        b.click('[data-mark-step="3"]')
        assert b.js("document.body.getAttribute('data-mark')") == f"{agent}@3"
        assert b.js("document.getElementById('step-3').classList.contains('marked')")
        b.click("#mark-save")
        one = Path(b.wait_for("Browser.downloadProgress", state="completed")["filePath"])
        b.open(pages["3"])
        b.click("#mark-not-failed")
        assert b.js("document.body.getAttribute('data-mark')") == "not-failed"
        b.open(index)
        assert b.js("document.body.getAttribute('data-marks')") == "2"
        assert b.js("document.getElementById('to-label-count').textContent") == "1"
        b.click("#mark-save-all")
        every = Path(b.wait_for("Browser.downloadProgress", state="completed")["filePath"])
        assert b.js("document.body.getAttribute('data-errors')") is None
    finally:
        b.close()
    assert one.parent == downloads and every.name == "labels.jsonl"

    mine, problems = read_labels([one])
    assert problems == [] and len(mine) == 1
    m = mine[0]
    assert (m.trace_id, m.agent, m.step, m.reason, m.labelled_by, m.source) == (
        "2", agent, 3, "made up the data <b>", "ann", str(logs))
    labels, problems = read_labels([every])
    assert problems == [] and [(x.trace_id, x.failed) for x in labels] == [("2", True),
                                                                           ("3", False)]
    out, unused = apply_labels(traces, labels)
    assert unused == []
    assert out[1].label == Label(agent, 3, None, "made up the data <b>")
    assert out[2].outcome.success is True and out[0].label is None

    # the saved file goes straight into training, nothing lost
    assert main(["train", str(logs), "--labels", str(every), "--out", str(tmp_path / "run"),
                 "--epochs", "1", *TINY_ARGS]) == 0
    captured = capsys.readouterr()
    assert _kinds(captured.out) == {("training", "labelled failure"): 1,
                                    ("training", "successful run"): 1,
                                    ("training", "unlabelled failure"): 1}, captured.out
    assert "skipped label" not in captured.err
