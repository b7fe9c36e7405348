"""`astra adapt`: from a starting model to a model file of the team's own logs, cross-validated,
resumable; and fine-tuning from a model file."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from astra_cli.main import main
from astra_jax.export import export_model, load_model, read_header
from astra_jax.checkpoints import init_members
from astra_jax.train import train
from tests.test_coarse import DEV, TINY, _sim

LOGS = [str(DEV / f"{i}.json") for i in range(1, 13)]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A tiny simulated-only model as a two-member model file, standing in for the shipped
    pre-training (same code path, a fraction of its size)."""
    from astra_cli.coarse_commands import load_coarse
    from astra_jax.features import HashingEmbedder, featurise
    root = tmp_path_factory.mktemp("start")
    sim = _sim(4, 7, topologies=("captain-agent",))
    feats = featurise(sim, HashingEmbedder())
    params = []
    for seed in (0, 1):
        cfg = dataclasses.replace(TINY, epochs=1, seed=seed)
        train(cfg, sim, feats, [], [], root / f"run-{seed}", progress=False)
        params.append(load_coarse(root / f"run-{seed}")[1][0])
    path = root / "start.msgpack"
    export_model(dataclasses.replace(TINY, epochs=1), params, path, {"command": "test"})
    return path


def test_adapt_cross_validates_exports_and_resumes(start, tmp_path, capsys):
    out = tmp_path / "mine.msgpack"
    args = ["adapt", *LOGS, "--init", str(start), "--out", str(out), "--epochs", "1",
            "--replay", "6", "--folds", "3"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "3-fold cross-validation on your logs" in printed.out
    assert "expected on your next runs" in printed.out
    header = read_header(out)[0]
    table = header["evaluation"]["overall"]
    assert set(table) >= {"ASTRA-JAX coarse, 3-fold CV", "predicted agent, its first step",
                          "first tool call or code block", "random"}
    assert all(s["n"] == 12 for s in table.values())
    assert header["command"].startswith("astra adapt ") and "--folds 3" in header["command"]
    # no fold scored a log it trained on; the final model trained on every log and the replay
    work = tmp_path / "mine.work"
    for f in json.loads((work / "cv" / "folds.json").read_text()):
        trained = json.loads((work / "cv" / f"fold-{f['fold']}" / "data.json").read_text())
        assert not set(f["test"]) & set(trained["train"])
    final = json.loads((work / "model" / "data.json").read_text())["train"]
    assert len(final) == 6 + 12
    cfg = json.loads((work / "model" / "config.json").read_text())
    assert cfg["init"] == f"{start.resolve()}#0" and cfg["epochs"] == 1
    # the model file answers like any other
    assert main(["attribute", LOGS[0], "--run", str(out)]) == 0
    assert "agent" in capsys.readouterr().out
    # a rerun trains nothing again: every run resumes at its last epoch
    log_lines = (work / "model" / "metrics.jsonl").read_text()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("resuming from epoch 1") == 4  # three folds and the final model
    assert (work / "model" / "metrics.jsonl").read_text() == log_lines
    # other settings or labels never resume into the same directory
    assert main([*args[:-2], "--folds", "2"]) == 2
    assert "holds a run with other folds" in capsys.readouterr().err
    assert main([*args, "--epochs", "2", "--labels", str(relabel(tmp_path))]) == 2
    assert "holds a run with other epochs, logs" in capsys.readouterr().err


def relabel(tmp_path):
    """A labels file that moves one log's label."""
    from data_gen.readers import load_traces
    trace = load_traces(LOGS[0]).traces[0]
    step = next(s for s in trace.steps if s.agent != trace.label.agent)
    path = tmp_path / "labels.jsonl"
    path.write_text(json.dumps({"schema": "astra.labels/v1", "trace_id": trace.trace_id,
                                "agent": step.agent, "step": step.index}) + "\n")
    return path


def test_adapt_fine_tunes_each_member_from_its_own_member_of_the_file(start, tmp_path):
    assert init_members(str(start)) == [f"{start}#0", f"{start}#1"]
    out = tmp_path / "two.msgpack"
    assert main(["adapt", *LOGS, "--init", str(start), "--out", str(out), "--epochs", "1",
                 "--replay", "0", "--no-cv", "--members", "2"]) == 0
    work = tmp_path / "two.work" / "model"
    inits = [json.loads((work / f"member-{i}" / "config.json").read_text())["init"]
             for i in (1, 2)]
    assert inits == [f"{start.resolve()}#0", f"{start.resolve()}#1"]
    header = read_header(out)[0]
    assert header["members"] == 2 and "evaluation" not in header
    before, after = load_model(start)[1], load_model(out)[1]
    def leaf(params):
        return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(params)])
    assert not np.allclose(leaf(before[0]), leaf(before[1]))  # the two seeds differ
    for b, a in zip(before, after):  # each member moved from where it started, not far
        d = np.abs(leaf(a) - leaf(b))
        assert d.max() > 0 and np.median(d) < np.median(np.abs(leaf(before[0]) - leaf(before[1])))


def test_adapt_refuses_too_few_logs_and_a_missing_start(start, tmp_path, capsys):
    assert main(["adapt", *LOGS[:4], "--init", str(start), "--out",
                 str(tmp_path / "few.msgpack")]) == 2
    assert "4 usable labelled logs; adapting needs at least 10" in capsys.readouterr().err
    assert main(["adapt", *LOGS, "--init", str(tmp_path / "none.msgpack"), "--out",
                 str(tmp_path / "x.msgpack")]) == 2
    assert "none.msgpack: no model to start from" in capsys.readouterr().err
    assert not (tmp_path / "x.msgpack").exists()
