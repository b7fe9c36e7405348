import json
import re
import shutil
from pathlib import Path

import pytest

from astra_cli.main import main
from data_gen.readers import load_traces
from data_gen.stats import STATS_HEADERS

DEV = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Algorithm-Generated"


def test_gen_validate_stats_convert(tmp_path, capsys):
    out = tmp_path / "sim.jsonl"
    assert main(["gen", "--tasks", "30", "--seed", "4", "--out", str(out), "--workers", "1",
                 "--faults", "logic_error,context_loss", "--topologies", "metagpt"]) == 0
    report = load_traces(out)
    assert not report.errors and report.traces
    assert {t.system.topology for t in report.traces} == {"metagpt"}
    assert {t.label.mode for t in report.traces if t.label} <= {"logic_error", "context_loss"}
    assert main(["traces", "validate", str(out)]) == 0
    assert main(["traces", "stats", str(out)]) == 0
    assert "metagpt/fatal" in capsys.readouterr().out
    ww = tmp_path / "ww"
    assert main(["traces", "convert", str(out), "--to", "whowhen", "--layout", "files",
                 "--out", str(ww)]) == 0
    files = sorted(ww.glob("*.json"))
    assert len(files) == len(report.traces)
    assert "history" in json.loads(files[0].read_text())


def test_stats_report_where_labels_sit(capsys):
    """The label-position columns on the development logs, as measured there once: 16% of the
    labels at step 0, 53% on the labelled agent's first step, mean relative position 0.369."""
    assert main(["traces", "stats", str(DEV)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    assert header == list(STATS_HEADERS)
    row = dict(zip(header, re.split(r"\s{2,}", lines[-1].strip())))
    assert row["group"] == "all" and row["labelled"] == "126"
    got = [float(row[h]) for h in ("label at step 0", "label on agent's 1st step",
                                   "label rel. pos.")]
    assert got == pytest.approx([0.159, 0.532, 0.369], abs=5e-4)


def test_validate_reports_bad_files_and_exits_nonzero(tmp_path, capsys):
    shutil.copy(DEV / "5.json", tmp_path / "5.json")
    (tmp_path / "6.json").write_text('{"history": []}')
    assert main(["traces", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "6.json" in out and "no steps" in out
    assert out.strip().splitlines()[-1].split() == ["1", "1", "0"]


def test_gen_rejects_unknown_fault_mode(capsys):
    try:
        main(["gen", "--faults", "typo_error", "--out", "x.jsonl"])
    except SystemExit as e:
        assert e.code == 2
    assert "choose from" in capsys.readouterr().err


def test_gen_llm_mode_against_loopback_endpoint(chat_server, tmp_path):
    out = tmp_path / "llm.jsonl"
    assert main(["gen", "--tasks", "2", "--max-tools", "2", "--out", str(out), "--workers", "1",
                 "--llm-url", chat_server.url, "--llm-model", "tiny"]) == 0
    traces = load_traces(out).traces
    assert traces and all(t.source.get("text") == "llm" for t in traces)
    assert chat_server.count == sum(len(t.steps) for t in traces)


@pytest.mark.parametrize("command", [["train", "x.jsonl", "--out", "r"], ["cv", "x", "--out", "r"],
                                     ["demo"]])
@pytest.mark.parametrize("weight", ["0", "1", "1.5", "-0.2", "half"])
def test_a_real_weight_outside_0_and_1_is_refused_before_any_work(command, weight, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--real-weight", weight])
    assert e.value.code == 2
    assert "--real-weight" in capsys.readouterr().err


@pytest.mark.parametrize("weight", ["0", "1", "2.5"])
def test_a_real_weight_outside_0_and_1_is_refused_by_the_library_and_by_set(weight, capsys):
    from astra_jax.configs import TrainConfig
    with pytest.raises(ValueError, match="real_weight"):
        TrainConfig(real_weight=float(weight))
    assert main(["train", "x.jsonl", "--out", "r", "--set", f"real_weight={weight}"]) == 2
    err = capsys.readouterr().err
    assert f"setting 'real_weight={weight}'" in err and "strictly between 0 and 1" in err
