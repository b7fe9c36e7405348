"""Learning from real labels: failed-run detection, step evidence, mixing, cross-validation."""
import dataclasses
import json

import numpy as np
import pytest

from astra_jax.batching import is_real, labels_of, training_use
from astra_jax.batch_plans import epoch_order, real_repeats
from data_gen.evidence import EVIDENCE_COLUMNS, step_evidence
from data_gen.files import RawRecord
from data_gen.readers import encode_native, load_traces, read_record, to_whowhen
from data_gen.trace import Outcome, Step, Task, Trace, trace_from_dict
from tests.test_coarse import DEV, TINY, _sim


def _read(rec: dict, name: str = "x.json") -> Trace:
    return read_record(RawRecord(name, None, rec))[0]


def test_a_labelled_record_without_outcome_is_a_failed_run():
    history = [{"content": "plan", "name": "A", "role": "user", "step": 0},
                {"content": "answer 42", "name": "B", "role": "assistant", "step": 1}]
    tracer = _read({"question": "q", "history": history, "mistake_agent": "B",
                    "mistake_step": "1"})
    assert tracer.outcome.success is None and tracer.failed
    assert labels_of(tracer)[:3] == (1, 1, 1)  # step 1, agent B, failed: the label is kept
    hand = [{"content": "plan", "role": "Orchestrator (thought)"},
            {"content": "go", "role": "WebSurfer"}]
    failed = _read({"question": "q", "history": hand, "is_corrected": False,
                    "mistake_agent": "WebSurfer", "mistake_step": "1"})
    assert failed.outcome.success is False and labels_of(failed)[0] == 1
    ok = _read({"question": "q", "history": hand, "is_corrected": True})
    assert ok.outcome.success is True and not ok.failed
    # a healed simulated run carries a label but succeeded
    healed = next(t for t in _sim(20, 1) if t.variant == "healed")
    assert not healed.failed and labels_of(healed)[0] == -1
    assert training_use(healed)[0] == "healed run"
    bare = Trace("bare", Task("q"), (Step(0, "A", "hi"),))
    assert training_use(bare) == ("unusable", "no label and no outcome: nothing to learn from it")
    assert training_use(dataclasses.replace(bare, outcome=Outcome(success=False)))[1]


def _col(ev: np.ndarray, name: str) -> list[float]:
    return ev[:, EVIDENCE_COLUMNS.index(name)].tolist()


def test_step_evidence_rules():
    steps = (
        Step(0, "Planner", "Plan: B finds the population, then C checks it."),
        Step(1, "B", "As I recall, the population of Springfield is 30720, no need to search."),
        Step(2, "B", "```python\nprint(open('data.csv').read())\n```"),
        Step(3, "Terminal", "exitcode: 1 (execution failed)\nTraceback: FileNotFoundError"),
        Step(4, "C", "C, please verify: population is 30721 per the census."),
        Step(5, "C", "That is incorrect: 30720 should be 30721. Final answer: 30721"),
    )
    t = Trace("t", Task("q"), steps, outcome=Outcome(success=False, final_answer="30721"))
    ev = step_evidence(t)
    assert ev.shape == (6, len(EVIDENCE_COLUMNS))
    assert _col(ev, "own_first") == [1, 1, 0, 1, 1, 0]
    assert _col(ev, "own_last") == [1, 0, 1, 1, 0, 1]
    assert _col(ev, "opening") == [1, 0, 0, 0, 0, 0]
    assert _col(ev, "next_error") == [0, 0, 1, 0, 0, 0]  # B's code made the terminal fail
    assert _col(ev, "failure_words")[3] == 1
    assert _col(ev, "unsupported")[1] == 1 and _col(ev, "unsupported_count")[1] == pytest.approx(np.log1p(2))
    assert sum(_col(ev, "unsupported")) == 1
    assert _col(ev, "answer_first") == [0, 0, 0, 0, 1, 0]  # 30721 first stated at step 4
    assert _col(ev, "contradicted")[1] == 1  # "population is 30720", later 30721
    assert _col(ev, "corrected_later")[4] == 1 or _col(ev, "corrected_later")[1] == 1
    assert _col(ev, "since_instruction")[4] == pytest.approx(np.log1p(4))  # step 0 names C


def test_key_values_find_what_the_full_pattern_finds_over_the_whole_text():
    """The windowed matcher against `findall` of the one pattern: real and simulated steps,
    corner cases, and random texts of separators, spaces, digits and key letters."""
    import random

    from data_gen import evidence
    texts = [s.content for t in load_traces(DEV).traces + _sim(20, 9) for s in t.steps] + [
        "Total cost\n= $1,200.50", "x is -3", "The answer:7", "isotope 5", "Price is", "a=b",
        "Population equals 12 and area was 3.5", "Rate\t:\t$ 4", "ab" * 30 + " is 5",
        "  : 5 value: 6", "is 4 island is 7", "a" * 50 + "=1"]
    rng = random.Random(0)
    atoms = ["a", "Z", " ", "  ", "\n", "\t", "_", "-", ":", "=", "is", " is ", "was", "are",
             "equals", "$", "1", "23", ",", ".", "4.5", "island", "Total value", "\u00a0", "é"]
    texts += ["".join(rng.choice(atoms) for _ in range(rng.randint(1, 80)))
              for _ in range(5000)]
    for text in texts:
        assert evidence.key_value_matches(text) == evidence._KEY_VALUE.findall(text), text
        want = [(frozenset(w for w in k.lower().replace("_", " ").split() if len(w) >= 4),
                 n.replace(",", "")) for k, n in evidence._KEY_VALUE.findall(text)]
        assert evidence.key_values(text) == [x for x in want if x[0]], text


def test_first_character_lookaheads_change_no_match():
    """Each evidence and graph pattern opening with a lookahead on its first character finds
    what it finds without it, and file names are looked for only where an extension is: in real
    and simulated steps, in upper case, and with letters that case-fold oddly."""
    import re

    from data_gen import dhcg, evidence
    steps = [s.content for t in load_traces(DEV).traces + _sim(20, 9) for s in t.steps]
    texts = steps + [x.upper() for x in steps[:300]] + [
        "HTTP Error 404", "Status Code: 503", "503 Service", "ſtatus 500", "\u017fhould be",
        "İ believe", "\u212aeep", "DID NOT WORK", "Couldn't", "x=5", "area is 3", "EQUALS 4",
        "-12,000.5 and 7", "data.CSV", "a/b/report.final.pdf.", "1.2.3 4,5"]
    patterns = [v for m in (dhcg, evidence) for v in vars(m).values()
                if isinstance(v, re.Pattern) and v.pattern.startswith("(?=")]
    assert len(patterns) == 7
    for rx in patterns:
        plain = re.compile(rx.pattern[rx.pattern.index(")") + 1:], rx.flags)
        for text in texts:
            assert rx.findall(text) == plain.findall(text), (rx.pattern[:30], text[:80])
    for text in texts:
        assert bool(dhcg._FILE.findall(text)) <= bool(dhcg._EXTENSION.search(text)), text
        assert bool(evidence._HTTP.search(text)) <= bool(evidence._HTTP_CODE.search(text)), text


def test_evidence_is_the_same_whatever_format_a_log_came_in():
    for path in sorted(DEV.glob("*.json"))[:15]:
        t = load_traces(path).traces[0]
        ev = step_evidence(t)
        native = trace_from_dict(json.loads(encode_native(t)))
        hand = _read(to_whowhen(t, style="handcrafted"))
        for other in (native, hand):
            assert [s.content for s in other.steps] == [s.content for s in t.steps]
            np.testing.assert_array_equal(step_evidence(other), ev)


def test_real_logs_are_repeated_to_their_share_of_each_epoch():
    sim = _sim(10, 2)
    real = load_traces([DEV / f"{i}.json" for i in (1, 2, 3)]).traces
    assert not any(map(is_real, sim)) and all(map(is_real, real))
    mixed = sim + real
    r = real_repeats(mixed, 0.5)
    assert r == round(len(sim) / len(real))
    order = epoch_order(mixed, dataclasses.replace(TINY, real_weight=0.5), 0)
    counts = np.bincount(order, minlength=len(mixed))
    assert (counts[:len(sim)] == 1).all() and (counts[len(sim):] == r).all()
    assert real_repeats(real, 0.5) == 1 and real_repeats(mixed, 0.0) == 1
    again = epoch_order(mixed, dataclasses.replace(TINY, real_weight=0.5), 0)
    assert (order == again).all()  # a resumed run sees the same order


def test_cross_validation_never_tests_on_training_logs(tmp_path, capsys):
    from astra_cli.cv_command import cross_validate, kfold
    from astra_cli.main import main
    from astra_eval.folds import stratified_folds

    logs = load_traces([DEV / f"{i}.json" for i in range(1, 13)]).traces
    sim = [t for t in _sim(6, 3, topologies=("metagpt",))][:8]
    cfg = dataclasses.replace(TINY, epochs=1)
    report = cross_validate(logs, sim, cfg, kfold(logs, 3, 0), 1, tmp_path / "cv",
                            progress=False)
    folds = json.loads((tmp_path / "cv" / "folds.json").read_text())
    tested = [tid for f in folds for tid in f["test"]]
    assert sorted(tested) == sorted(t.trace_id for t in logs)  # each log tested exactly once
    for f in folds:
        trained = json.loads((tmp_path / "cv" / f"fold-{f['fold']}" / "data.json").read_text())
        assert not set(f["test"]) & set(trained["train"] + trained["val"])
        assert set(f["train"]) <= set(trained["train"])
        assert {t.trace_id for t in sim} <= set(trained["train"])
    assert report["n_labelled"] == 12 and len(report["folds"]) == 3
    methods = report["cv"]["methods"]
    assert "predicted agent, its first step" in methods and "random" in methods
    ours = methods["ASTRA-JAX coarse, 3-fold CV"]["step_acc"]
    fold_steps = [f["ours"]["step_acc"] for f in report["folds"]]
    assert ours["mean"] == pytest.approx(np.mean(fold_steps))
    assert "### Spread over 3 folds" in (tmp_path / "cv" / "eval.md").read_text()
    cands = (tmp_path / "cv" / "candidates.jsonl").read_text().splitlines()
    assert len(cands) == 12
    # the folds trained two at once (the default) score exactly as one at a time
    cross_validate(logs, sim, cfg, kfold(logs, 3, 0), 1, tmp_path / "serial", progress=False,
                   jobs=1)
    assert (tmp_path / "serial" / "candidates.jsonl").read_text().splitlines() == [
        c.replace(str(tmp_path / "cv"), str(tmp_path / "serial")) for c in cands]

    # folds are stratified by the labelled agent and reproducible
    all_logs = load_traces(DEV).traces
    a, b = stratified_folds(all_logs, 5, 0), stratified_folds(all_logs, 5, 0)
    assert a == b and max(map(len, a)) - min(map(len, a)) <= 1
    verif = [sum(all_logs[i].label.agent == "Verification_Expert" for i in f) for f in a]
    assert max(verif) - min(verif) <= 1

    # fewer labelled logs than folds, and unlabelled logs, are clear errors naming themselves
    assert main(["cv", str(DEV / "1.json"), str(DEV / "2.json"), "--folds", "3", "--out",
                 str(tmp_path / "few")]) == 2
    assert "2 labelled logs cannot make 3 folds" in capsys.readouterr().err
    unlabelled = tmp_path / "u.json"
    rec = json.loads((DEV / "1.json").read_text())
    del rec["mistake_agent"], rec["mistake_step"], rec["mistake_reason"]
    unlabelled.write_text(json.dumps(rec))
    assert main(["cv", str(unlabelled), str(DEV / "2.json"), "--folds", "2", "--out",
                 str(tmp_path / "few")]) == 2
    err = capsys.readouterr().err
    assert f"skipped (no label, cannot be scored): {unlabelled}" in err
    assert main(["cv", str(DEV), "--folds", "2", "--out", str(tmp_path / "neg"),
                 "--real-only-epochs", "-1"]) == 2
    assert "real-only epochs must be 0 or more, not -1" in capsys.readouterr().err


def test_leave_one_framework_out_never_scores_a_framework_it_trained_on(tmp_path, capsys):
    from astra_cli.cv_command import framework_folds, repeat_over_seeds
    from astra_cli.main import main
    from astra_eval.folds import framework_of

    hand = DEV.parent / "Hand-Crafted"
    logs = load_traces([DEV / f"{i}.json" for i in range(1, 5)] +
                       [hand / f"{i}.json" for i in (1, 2, 3, 4)]).traces
    bare = Trace("no-framework", Task("q"), (Step(0, "A", "hi"), Step(1, "B", "42")),
                 label=logs[0].label.__class__("A", 0))
    small = dataclasses.replace(logs[0], trace_id="tracer",
                                system=dataclasses.replace(logs[0].system, framework="metagpt"))
    named, folds = framework_folds(logs + [bare, small], min_logs=3)
    err = capsys.readouterr().err
    assert "skipped (framework unknown: set system.framework): no-framework" in err
    assert "not held out (only 1 logs of metagpt" in err
    assert [f.name for f in folds] == ["autogen-captainagent", "magentic-one"]
    assert all({framework_of(named[j]) for j in f.test} == {f.name} for f in folds)
    assert "tracer" in {t.trace_id for t in named}  # trained on by both folds

    cfg = dataclasses.replace(TINY, epochs=1)
    report = repeat_over_seeds(named, [], cfg, folds, 2, 1, tmp_path / "lofo", progress=False)
    for fold_file in (tmp_path / "lofo").glob("seed-*/folds.json"):
        for f in json.loads(fold_file.read_text()):
            trained = json.loads((fold_file.parent / f"fold-{f['fold']}" / "data.json")
                                 .read_text())["train"]
            assert not {t for t in trained if framework_of(
                next(x for x in named if x.trace_id == t)) == f["name"]}
            assert "tracer" in trained
    assert set(report["subsets"]) == {"autogen-captainagent", "magentic-one"}
    spread = report["seeds"]["sets"]["magentic-one"]
    ours = spread["ASTRA-JAX coarse, leave-one-framework-out"]
    assert ours["n"] == 4 and len(ours["step_acc"]["per_seed"]) == 2
    assert ours["step_acc"]["mean"] == pytest.approx(np.mean(ours["step_acc"]["per_seed"]))
    assert "predicted agent, its first step" in spread and "random" in spread
    assert "## Mean over seeds 0, 1" in (tmp_path / "lofo" / "eval.md").read_text()

    # logs of one framework cannot be held out by framework
    assert main(["cv", str(DEV / "1.json"), str(DEV / "2.json"), "--by-framework", "--out",
                 str(tmp_path / "one")]) == 2
    assert "needs logs of at least two frameworks" in capsys.readouterr().err


def test_a_fold_may_train_on_a_chosen_part_of_the_other_logs(tmp_path):
    from astra_cli.cv_command import Fold, cross_validate

    logs = load_traces([DEV / f"{i}.json" for i in range(1, 9)]).traces
    fold = Fold("learning curve point", test=(0, 1, 2), train=(3, 4))
    assert fold.train_indices(len(logs)) == [3, 4]
    assert Fold("all others", (0, 1)).train_indices(4) == [2, 3]
    with pytest.raises(ValueError, match="trains on logs it scores: \\[1\\]"):
        Fold("bad", (0, 1), (1, 5)).train_indices(8)
    cross_validate(logs, [], dataclasses.replace(TINY, epochs=1), [fold], 1, tmp_path / "cv",
                   progress=False)
    trained = json.loads((tmp_path / "cv" / "fold-1" / "data.json").read_text())["train"]
    assert set(trained) == {logs[3].trace_id, logs[4].trace_id}
    split = json.loads((tmp_path / "cv" / "folds.json").read_text())[0]
    assert split["train"] == [logs[3].trace_id, logs[4].trace_id]
