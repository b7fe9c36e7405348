"""Model files: export round trip, the shipped model, the recipe that makes it, bad files."""
import dataclasses
import json

import numpy as np
import pytest
from flax import serialization

from astra_cli.coarse_commands import predict_traces
from astra_cli.main import main
from astra_jax.export import (DEFAULT_MODEL, PRETRAINED_MODEL, compatibility, load_model,
                              read_header)
from astra_jax.features import HashingEmbedder, featurise
from astra_jax.ensembles import train_ensemble
from data_gen.readers import load_traces
from tests.test_coarse import DEV, TINY, _sim


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    tr = _sim(16, 11, topologies=("metagpt",)) + load_traces(
        [DEV / f"{i}.json" for i in range(1, 9)]).traces
    feats = featurise(tr, HashingEmbedder())
    train_ensemble(dataclasses.replace(TINY, epochs=1), 2, tr, feats, [], [], out / "run",
                   progress=False)
    return out


def _scores(cands):
    return [(a["agent"], a["score"], [(s["step"], s["score"]) for s in a["steps"]])
            for c in cands for a in c["agents"]] + [c["failure_prob"] for c in cands]


def test_an_exported_model_predicts_what_its_run_does(ensemble, capsys):
    run, model = ensemble / "run", ensemble / "model.msgpack"
    cv = ensemble / "eval.json"
    cv.write_text(json.dumps({"method": "m", "overall": {"m": {"n": 3, "agent_acc": 0.5,
                                                               "step_acc": 0.25}}}))
    assert main(["export", str(run), "--out", str(model), "--eval", str(cv),
                 "--command", "astra train x"]) == 0
    assert "2 member(s)" in capsys.readouterr().out
    logs = load_traces([DEV / f"{i}.json" for i in range(20, 26)]).traces
    a, b = predict_traces(run, logs, 10), predict_traces(model, logs, 10)
    for (na, sa, sta), (nb, sb, stb) in zip(_scores(a)[:-6], _scores(b)[:-6]):
        assert na == nb and abs(sa - sb) < 1e-6
        assert [s for s, _ in sta] == [s for s, _ in stb]
        assert np.allclose([p for _, p in sta], [p for _, p in stb], atol=1e-6)
    assert np.allclose(_scores(a)[-6:], _scores(b)[-6:], atol=1e-6)
    header, _ = read_header(model)
    assert header["members"] == 2 and header["command"] == "astra train x"
    assert [m["seed"] for m in header["training"]] == [0, 1]
    assert header["evaluation"]["overall"]["m"]["step_acc"] == 0.25
    assert header["evaluation"]["source"] == "eval.json"  # beside the run, not this machine's path
    # half precision halves the file and stays close
    half = ensemble / "half.msgpack"
    assert main(["export", str(run), "--out", str(half), "--dtype", "float16"]) == 0
    assert half.stat().st_size < 0.6 * model.stat().st_size
    c = predict_traces(half, logs, 10)
    assert np.allclose(_scores(a)[-6:], _scores(c)[-6:], atol=1e-2)


def test_bad_model_files_are_clear_errors(ensemble, capsys):
    model = ensemble / "model.msgpack"
    if not model.exists():
        assert main(["export", str(ensemble / "run"), "--out", str(model)]) == 0
    log = str(DEV / "1.json")
    cases = {}
    cases["truncated"] = model.read_bytes()[: model.stat().st_size // 2]
    cases["foreign"] = serialization.msgpack_serialize({"weights": np.zeros(3)})
    header, members = read_header(model)
    for key, value in (("featuriser_version", "0"), ("format", "astra.model/v0")):
        body = {"header": json.dumps({**header, key: value}), "members": members}
        cases[key] = serialization.msgpack_serialize(body)
    expect = {"truncated": "not a readable model file", "foreign": "not an ASTRA-JAX model file",
              "featuriser_version": "made for featuriser_version '0'",
              "format": "format 'astra.model/v0'"}
    for name, data in cases.items():
        bad = ensemble / f"{name}.msgpack"
        bad.write_bytes(data)
        assert main(["attribute", log, "--run", str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and expect[name] in err, (name, err)
    assert main(["predict", log, "--run", str(ensemble / "missing.msgpack"), "--out",
                 str(ensemble / "c.jsonl")]) == 2
    assert "missing.msgpack: no such file or directory" in capsys.readouterr().err


def test_the_shipped_model_loads_and_attributes_without_a_run(capsys):
    cfg, members, header = load_model(DEFAULT_MODEL)
    assert header["members"] == len(members) >= 1
    assert all(header[k] == v for k, v in compatibility(cfg).items())
    assert DEFAULT_MODEL.stat().st_size < 12e6  # a few MB
    assert header["evaluation"]["cv"]["folds"] >= 2 and header["command"].startswith("astra demo")
    assert main(["attribute", str(DEV / "12.json")]) == 0
    out = capsys.readouterr().out
    assert "who:" in out and "when: step" in out


def test_the_shipped_pretraining_has_seen_no_real_log():
    """`astra adapt` starts from it, so cross-validation on any real logs stays honest."""
    cfg, members, header = load_model(PRETRAINED_MODEL)
    assert all(header[k] == v for k, v in compatibility(cfg).items())
    assert header["members"] == len(members) == 1 and header["command"] == "make pretrained"
    ids = [i for m in header["training"] for i in m["train_ids"]]
    real = {t.trace_id for t in load_traces(DEV.parent).traces}
    assert len(ids) > 1000 and not set(ids) & real
    assert all(m["init"] == "" for m in header["training"])


def test_the_recipe_is_reproducible(tmp_path):
    """The shipped model's recipe at a small size, twice: the same seeds give the same
    cross-validated table (`make model` rebuilds the full one and compares it with the header)."""
    from astra_cli.recipe import Recipe, build_coarse_model, replay_sample

    sim = _sim(8, 12, topologies=("metagpt",))
    real = load_traces([DEV / f"{i}.json" for i in range(1, 11)]).traces
    recipe = Recipe(members=1, sim_epochs=1, real_epochs=2, folds=2, replay=3,
                    real_only_epochs=2)
    replay = [t.trace_id for t in replay_sample(sim, 3)]
    assert len(set(replay)) == 3
    tables = []
    for name in ("a", "b"):
        built = build_coarse_model(recipe, sim, sim[:4], real, tmp_path / name, progress=False,
                                   say=lambda *_: None, base=TINY)
        cv = built["cv"]["overall"]
        tables.append({m: (s["agent_acc"], s["step_acc"]) for m, s in cv.items()})
        # the final model and every fold replay the same simulated traces beside the real
        # logs; the member paired with each trains on the real logs alone
        data = lambda *p: json.loads((tmp_path / name).joinpath(*p, "data.json").read_text())  # noqa
        ids = [t.trace_id for t in real]
        assert data("coarse", "member-1")["train"] == replay + ids
        assert data("coarse", "member-2")["train"] == ids
        assert json.loads((tmp_path / name / "coarse" / "member-2" / "config.json").read_text(
            ))["init"] == ""
        folds = json.loads((tmp_path / name / "cv" / "folds.json").read_text())
        for f in folds:
            fine, alone = (data("cv", f"fold-{f['fold']}", f"member-{m}") for m in (1, 2))
            assert fine["train"][:3] == replay and sorted(fine["train"][3:]) == sorted(f["train"])
            assert sorted(alone["train"]) == sorted(f["train"])  # never a test log, no sim
        assert built["cv"]["cv"]["real_only_members"] == 1
    assert tables[0] == tables[1]


def test_the_recipe_mixes_each_fold_as_it_mixes_the_final_model():
    """Cross-validation stands for the final model only if each fold's fine-tuning repeats its
    logs as the final model's does: with the recipe's replay and real weight, every training
    set of a 5-fold split of the 126 development logs and the whole set get the same repeats."""
    from types import SimpleNamespace

    from astra_cli.recipe import Recipe
    from astra_jax.batch_plans import real_repeats

    recipe = Recipe()
    sim = [SimpleNamespace(variant="fatal")] * recipe.replay
    repeats = {real_repeats(sim + [SimpleNamespace(variant=None)] * n, recipe.real_weight)
               for n in (100, 101, 126)}
    assert len(repeats) == 1
