import json
from pathlib import Path

import pytest

from data_gen.files import RawRecord
from data_gen.readers import detect_format, load_traces, parse_role, read_record, to_whowhen
from data_gen.trace import trace_from_dict

DEV = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Algorithm-Generated"


def test_every_development_log_loads_with_its_label_intact():
    report = load_traces(DEV)
    assert report.errors == []
    assert len(report.traces) == 126
    for t in report.traces:
        raw = json.loads(Path(t.source["path"]).read_text())
        assert t.label.agent == raw["mistake_agent"]
        assert t.label.step == int(raw["mistake_step"])
        assert t.label.reason == raw["mistake_reason"]
        assert [s.agent for s in t.steps] == [h["name"] for h in raw["history"]]
        assert to_whowhen(t) == raw  # lossless both ways
    # the three known label quirks are warnings, not errors, and nothing else is
    assert sorted(w.split("/")[-1].split(":")[0] for w in report.warnings) == [
        "14.json", "15.json", "59.json"]


def test_records_of_two_folders_sharing_an_id_are_told_apart_by_folder():
    both = load_traces(DEV.parent)
    ids = [t.trace_id for t in both.traces]
    assert len(ids) == 184 and len(set(ids)) == 184
    assert "Hand-Crafted/1" in ids and "Algorithm-Generated/1" in ids
    assert any("share a trace id" in w for w in both.warnings)
    assert load_traces(DEV.parent).traces[0].trace_id == both.traces[0].trace_id  # stable
    alone = load_traces(DEV / "1.json").traces[0]
    assert alone.trace_id == "1"  # no collision, no renaming


def test_native_round_trip_is_exact():
    t = load_traces(DEV / "30.json").traces[0]
    assert "labels" in t.extra  # record 30's extra key survives
    again = trace_from_dict(json.loads(json.dumps(t.to_dict())))
    assert again == t


@pytest.mark.parametrize("role,expected", [
    ("Orchestrator (-> WebSurfer)", ("Orchestrator", "message", "WebSurfer")),
    ("Orchestrator (thought)", ("Orchestrator", "thought", None)),
    ("WebSurfer", ("WebSurfer", None, None)),
    ("human", ("human", None, None)),
    ("Orchestrator (termination condition)", ("Orchestrator", None, None)),
])
def test_parse_role(role, expected):
    assert parse_role(role) == expected


HANDCRAFTED = {
    "is_correct": False, "question": "How many?", "groundtruth": "3",
    "history": [
        {"content": "How many?", "role": "human"},
        {"content": "Plan: search.", "role": "Orchestrator (thought)"},
        {"content": "Please search for X.", "role": "Orchestrator (-> WebSurfer)"},
        {"content": "I typed X into the search bar.", "role": "WebSurfer"},
        {"content": "FINAL ANSWER: 4", "role": "Orchestrator (termination condition)"},
    ],
    "mistake_agent": "WebSurfer", "mistake_step": "3", "mistake_reason": "wrong page",
}


def test_handcrafted_record_reads_agents_addressees_and_round_trips():
    assert detect_format(HANDCRAFTED) == "whowhen-handcrafted"
    t, warnings = read_record(RawRecord("hc.json", None, HANDCRAFTED))
    assert warnings == []
    assert [s.agent for s in t.steps] == ["human", "Orchestrator", "Orchestrator", "WebSurfer",
                                          "Orchestrator"]
    assert t.steps[2].to == "WebSurfer" and t.steps[1].kind == "thought"
    assert t.task.ground_truth == "3" and t.label.step == 3
    assert to_whowhen(t) == HANDCRAFTED


def test_tracertraj_record_keeps_its_step_field():
    rec = {"question": "Build a CLI", "history": [
        {"content": "Write the PRD", "name": "Team Leader", "role": "user", "step": 0},
        {"content": "## PRD ...", "name": "Product Manager", "role": "assistant", "step": 1}],
        "mistake_agent": "Product Manager", "mistake_step": 1, "mistake_reason": "missed a need"}
    assert detect_format(rec) == "tracertraj"
    t, _ = read_record(RawRecord("tt.jsonl", 4, rec))
    assert t.trace_id == "tt:4" and t.steps[1].extra == {"step": 1}
    assert t.label.step == 1 and to_whowhen(t) == rec


def test_simulated_traces_write_to_whowhen_and_read_back(tmp_path):
    from data_gen.readers import write_traces
    from data_gen.sim.generate import GenConfig, generate

    traces = [t for r in generate(GenConfig(n_tasks=20, seed=3, workers=1)) for t in r.traces]
    n = write_traces(traces, tmp_path / "ww.jsonl", fmt="whowhen")
    back = load_traces(tmp_path / "ww.jsonl")
    assert n == len(traces) and not back.errors and len(back.traces) == n
    for t, b in zip(traces, back.traces):  # order is kept; labels and authors survive
        assert b.task.question == t.task.question
        assert [(s.agent, s.content) for s in b.steps] == [(s.agent, s.content) for s in t.steps]
        assert (b.label and (b.label.agent, b.label.step)) == (t.label and (t.label.agent,
                                                                          t.label.step))
