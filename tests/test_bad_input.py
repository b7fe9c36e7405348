import copy
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from data_gen.files import RawRecord
from data_gen.readers import load_traces, read_record
from data_gen.trace import TraceError

DEV = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Algorithm-Generated"
GOOD = json.loads((DEV / "1.json").read_text())


def _error_for(tmp_path: Path, name: str, payload: bytes) -> TraceError:
    f = tmp_path / name
    f.write_bytes(payload)
    report = load_traces(f)
    assert report.traces == [] and len(report.errors) == 1
    err = report.errors[0]
    assert str(f) in str(err)  # every error names its file
    return err


def _with(**changes) -> bytes:
    rec = copy.deepcopy(GOOD)
    for k, v in changes.items():
        if v is None:
            rec.pop(k)
        else:
            rec[k] = v
    return json.dumps(rec).encode()


def test_malformed_json_names_line_and_column(tmp_path):
    err = _error_for(tmp_path, "bad.json", b'{"history": [1, 2,, 3]}')
    assert "malformed JSON" in str(err) and "line 1" in str(err)


def test_missing_field(tmp_path):
    rec = copy.deepcopy(GOOD)
    del rec["history"][2]["name"]
    err = _error_for(tmp_path, "m.json", json.dumps(rec).encode())
    assert err.field == "history" and "mix styles" in err.message
    rec["history"][2]["name"] = 7
    err = _error_for(tmp_path, "t.json", json.dumps(rec).encode())
    assert err.field == "history[2].name" and "expected str, got int" in err.message


def test_label_step_out_of_range_and_not_a_number(tmp_path):
    err = _error_for(tmp_path, "r.json", _with(mistake_step="99"))
    assert err.field == "label.step" and "outside the log" in err.message
    err = _error_for(tmp_path, "n.json", _with(mistake_step="three"))
    assert err.field == "mistake_step"


def test_label_agent_absent_from_log(tmp_path):
    err = _error_for(tmp_path, "a.json", _with(mistake_agent="Ghost_Expert"))
    assert err.field == "label.agent" and "Ghost_Expert" in err.message


def test_empty_history(tmp_path):
    err = _error_for(tmp_path, "e.json", _with(history=[]))
    assert err.field == "history" and "no steps" in err.message


def test_multi_megabyte_content_is_refused_by_name(tmp_path):
    rec = copy.deepcopy(GOOD)
    rec["history"][1]["content"] = "x" * 3_000_000
    err = _error_for(tmp_path, "big.json", json.dumps(rec).encode())
    assert err.field == "history[1].content" and "exceeds the limit" in err.message


def test_non_utf8_bytes(tmp_path):
    payload = json.dumps(GOOD).encode()
    payload = payload[:100] + b"\xff\xfe" + payload[100:]
    err = _error_for(tmp_path, "u.json", payload)
    assert "not valid UTF-8" in err.message and "offset 100" in err.message


def test_jsonl_bad_lines_are_reported_and_the_rest_read(tmp_path):
    lines = [json.dumps(GOOD), "{not json", json.dumps(dict(GOOD, mistake_agent="Nobody")),
             json.dumps(GOOD)]
    (tmp_path / "mix.jsonl").write_text("\n".join(lines))
    report = load_traces(tmp_path / "mix.jsonl")
    assert len(report.traces) == 2
    assert sorted(e.record for e in report.errors) == [2, 3]
    assert all("mix.jsonl: record" in str(e) for e in report.errors)


def test_directory_reports_bad_files_and_carries_on(tmp_path):
    for name in ("1.json", "2.json", "10.json"):
        (tmp_path / name).write_bytes((DEV / name).read_bytes())
    (tmp_path / "3.json").write_bytes(b"\x80garbage")
    report = load_traces(tmp_path)
    assert [t.trace_id for t in report.traces] == ["1", "2", "10"]  # natural order
    assert len(report.errors) == 1 and "3.json" in str(report.errors[0])


def test_missing_path():
    report = load_traces("/nonexistent/dir")
    assert report.traces == [] and "no such file" in str(report.errors[0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                  max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json_value_reads_or_fails_cleanly(value):
    try:
        read_record(RawRecord("fuzz.json", None, value))
    except TraceError as e:
        assert "fuzz.json" in str(e)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["question", "history", "mistake_agent", "mistake_step", "mistake_reason",
                        "system_prompt", "ground_truth"]), json_values)
def test_mutated_records_read_or_fail_naming_a_field(key, value):
    rec = dict(GOOD, **{key: value})
    try:
        trace, _ = read_record(RawRecord("m.json", None, rec))
    except TraceError as e:
        assert e.field and str(e).startswith("m.json")
        return
    if trace.label is not None:  # whatever was accepted is consistent with the log
        assert 0 <= trace.label.step < len(trace.steps)
        assert trace.label.agent in trace.agents


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 9), st.sampled_from(["content", "name", "role"]), json_values)
def test_mutated_history_items(i, key, value):
    rec = copy.deepcopy(GOOD)
    if i < len(rec["history"]):
        rec["history"][i][key] = value
    try:
        trace, _ = read_record(RawRecord("h.json", None, rec))
    except TraceError as e:
        assert e.field and "h.json" in str(e)
        return
    assert len(trace.steps) == len(rec["history"])
