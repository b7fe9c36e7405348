"""Logs too long for the machine's memory are refused up front (astra_cli/size_guard.py); the
limit is faked low instead of building huge logs."""
import json
import shutil
from pathlib import Path

import pytest

from astra_cli import size_guard
from astra_cli.main import main
from data_gen.readers import load_valid_traces

HAND = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Hand-Crafted"
LONG, SHORT = HAND / "1.json", HAND / "24.json"  # 29 and 5 steps


@pytest.fixture(autouse=True)
def no_env_limit(monkeypatch):
    monkeypatch.delenv(size_guard.ENV, raising=False)


def test_the_estimate_grows_with_steps_and_the_limit_follows_memory(monkeypatch):
    assert size_guard.estimate_bytes(100_000) > size_guard.estimate_bytes(1_000) > 0
    monkeypatch.setattr(size_guard, "available_bytes", lambda: 2**30)
    limit = size_guard.step_limit()
    assert limit.steps is not None and 0 < limit.steps < 100_000 and "GB available" in limit.why
    assert size_guard.estimate_bytes(limit.steps) <= 2**30 * size_guard.HEADROOM < \
        size_guard.estimate_bytes(limit.steps + 100)
    monkeypatch.setattr(size_guard, "available_bytes", lambda: 8 * 2**30)
    big = size_guard.step_limit()  # past the point where the batch stops growing
    assert size_guard.estimate_bytes(big.steps) <= 8 * 2**30 * size_guard.HEADROOM < \
        size_guard.estimate_bytes(big.steps + 100)
    monkeypatch.setattr(size_guard, "available_bytes", lambda: 2**30)
    trace = load_valid_traces([LONG])[0]
    assert size_guard.refusal(trace, limit) is None  # 29 steps fit in 1 GiB
    monkeypatch.setattr(size_guard, "available_bytes", lambda: 300 * 2**20)
    assert size_guard.step_limit().steps == 0  # less than the process itself needs
    assert size_guard.available_bytes is not None


def test_the_override_and_the_environment_set_the_limit(monkeypatch):
    trace = load_valid_traces([LONG])[0]
    assert size_guard.step_limit(0).steps is None  # 0: no limit
    why = size_guard.refusal(trace, size_guard.step_limit(10))
    assert "1.json" in why and "29 steps" in why and "GB" in why and "10 steps" in why
    monkeypatch.setenv(size_guard.ENV, "28")
    assert size_guard.step_limit().steps == 28
    assert size_guard.step_limit(100).steps == 100  # the flag wins over the environment
    monkeypatch.setenv(size_guard.ENV, "lots")
    with pytest.raises(SystemExit):
        size_guard.step_limit()


def test_real_memory_is_read():
    avail = size_guard.available_bytes()
    assert avail is None or avail > 0


def test_attribute_refuses_a_log_over_the_limit(capsys, monkeypatch):
    assert main(["attribute", str(LONG), "--max-steps", "10"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "29 steps" in err and "--max-steps" in err
    monkeypatch.setenv(size_guard.ENV, "10")
    assert main(["attribute", str(LONG)]) == 2


def test_run_leaves_out_a_long_log_and_carries_on(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    shutil.copy(LONG, logs / "long.json")
    shutil.copy(SHORT, logs / "short.json")
    out = tmp_path / "out"
    assert main(["run", str(logs), "--out", str(out), "--no-html", "--max-steps", "10"]) == 0
    err = capsys.readouterr().err
    assert "long.json" in err and "29 steps" in err and "short.json" not in err
    rows = [json.loads(x) for x in (out / "candidates.jsonl").read_text().splitlines()]
    assert [r["trace_id"] for r in rows] == ["short"]  # a Who&When file is named by its file
    assert main(["run", str(logs / "long.json"), "--out", str(out), "--no-html",
                 "--max-steps", "10"]) == 2
