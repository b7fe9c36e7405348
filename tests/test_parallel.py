"""Data parallelism and crash recovery, each in real `astra train` processes: 8 fake CPU devices
must give the losses of 1, and a run killed mid-way must resume onto the same curve, with the
programs an earlier run stored."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_gen.readers import write_traces
from data_gen.sim.generate import GenConfig, generate
from tests.test_coarse import TINY, TINY_MODEL_SETS

SETTINGS = ["--set", "shards=8", "--set", "warmup_steps=2", *TINY_MODEL_SETS]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("par")
    traces = [t for r in generate(GenConfig(n_tasks=40, seed=11, max_tools=6, workers=1))
              for t in r.traces]
    write_traces(traces[:96], d / "tr.jsonl")
    write_traces([t for t in traces[96:] if t.variant == "fatal"], d / "va.jsonl")
    return d


def _train(data: Path, out: Path, devices: int, epochs: int, **env_vars: str
           ) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", **env_vars)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    cmd = [sys.executable, "-m", "astra_cli.main", "train", str(data / "tr.jsonl"), "--val",
           str(data / "va.jsonl"), "--out", str(out), "--epochs", str(epochs), "--d-model",
           str(TINY.model.d_model), "--batch-size", "16", *SETTINGS]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _finish(p: subprocess.Popen) -> None:
    out, _ = p.communicate(timeout=600)
    assert p.returncode == 0, out


def test_eight_devices_match_one_and_a_killed_run_resumes(data, tmp_path):
    cache = {"ASTRA_COMPILE_CACHE": str(tmp_path / "programs")}
    one = _train(data, tmp_path / "one", 1, 3, **cache)
    eight = _train(data, tmp_path / "eight", 8, 3, **cache)
    _finish(one)
    _finish(eight)
    a, b = _log(tmp_path / "one"), _log(tmp_path / "eight")
    assert [r["devices"] for r in a] == [1] * 3 and [r["devices"] for r in b] == [8] * 3
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_step_ce", "val_loss", "val_step_acc"):
            assert rb[k] == pytest.approx(ra[k], rel=2e-3, abs=2e-4), k

    # on eight devices again: the programs the first eight-device run stored are loaded onto
    # the same devices in the same order (the initialiser onto one of them, the steps onto all)
    run = tmp_path / "killed"
    p = _train(data, run, 8, 3, **cache)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "1").is_dir() and time.time() < deadline:
        assert p.poll() is None, p.communicate()[0]
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    killed_at = len(_log(run))
    assert killed_at < 3
    resumed = _train(data, run, 8, 3, **cache)
    _finish(resumed)
    c = _log(run)
    assert [r["epoch"] for r in c] == [1, 2, 3]
    assert c[-1]["xla_cache_hits"] >= 3 and c[-1]["compiles"] == {"train": 0, "eval": 0}
    for ra, rc in zip(b, c):
        assert rc["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
        assert rc["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5)

