import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from astra_jax import RunDirError
from astra_jax.batching import (SMALLEST_BUCKET, labels_of, ladder_level, pack_batch,
                                plan_batches, run_bucket, trace_sizes)
from data_gen.dhcg import EDGE_TYPES, build_dhcg
from astra_jax.configs import TrainConfig
from astra_jax.features import HashingEmbedder, featurise
from astra_jax.model import ModelConfig
from astra_jax.state import learning_rate, schedule_args
from astra_jax.train import COMPILES, train
from data_gen.readers import load_traces
from data_gen.sim.generate import GenConfig, generate
from data_gen.trace import Step, Task, Trace

DEV = Path(__file__).resolve().parent.parent / "data" / "who_and_when" / "Algorithm-Generated"
TINY = TrainConfig(model=ModelConfig(d_model=32, heads=2, spatial_layers=1, temporal_layers=1,
                                     experts=2), epochs=2, batch_size=8, warmup_steps=2)
# TINY's model on the command line, and TINY itself: tests that train share its programs
TINY_MODEL_SETS = [a for f in ("heads", "spatial_layers", "temporal_layers", "experts")
                   for a in ("--set", f"model.{f}={getattr(TINY.model, f)}")]
TINY_ARGS = ["--d-model", str(TINY.model.d_model), "--batch-size", str(TINY.batch_size),
             *TINY_MODEL_SETS]


def _sim(n, seed, **kw):
    return [t for r in generate(GenConfig(n_tasks=n, seed=seed, max_tools=6, workers=1, **kw))
            for t in r.traces]


def test_dhcg_rules_on_a_real_log():
    t = load_traces(DEV / "1.json").traces[0]
    g = build_dhcg(t)
    kinds = {EDGE_TYPES[e] for e in g.edge_type}
    assert {"invoke", "return", "reference", "temporal", "affect"} <= kinds
    assert len(g.step_node) == len(t.steps) and (g.senders < len(g.node_type)).all()
    # R3: Computer_terminal's "exitcode:" step receives a return edge from the python tool
    term = g.step_node[1]
    ret = [s for s, r, e in zip(g.senders, g.receivers, g.edge_type)
           if r == term and EDGE_TYPES[e] == "return"]
    assert ret
    # R4: step 1 prints a number that later steps reuse → a reference edge out of step 1's node
    refs = {(s, r) for s, r, e in zip(g.senders, g.receivers, g.edge_type)
            if EDGE_TYPES[e] == "reference"}
    assert any(s in g.step_node for s, _ in refs)


def test_the_environment_is_never_a_candidate():
    """R6: on real logs, AutoGen's Computer_terminal (exit codes and "no code to execute"
    notices) is the environment and gets no agent score; a label on it would still count."""
    devs = load_traces([DEV / f"{i}.json" for i in range(1, 21)]).traces
    for t in devs:
        g = build_dhcg(t)
        assert [a for a, e in zip(g.agents, g.agent_is_env) if e] == (
            ["Computer_terminal"] if "Computer_terminal" in t.agents else [])
    t = next(t for t in devs if "Computer_terminal" in t.agents)
    term = t.agents.index("Computer_terminal")
    f = featurise([t], HashingEmbedder())
    assert pack_batch(f, [labels_of(t)], 2).agent_mask[term] == 0.0
    step = next(s.index for s in t.steps if s.agent == "Computer_terminal")
    assert pack_batch(f, [(step, term, 1, -1, 1)], 2).agent_mask[term] == 1.0
    solo = Trace("solo", Task("q"), (Step(0, "Tool", "exitcode: 0"),
                                     Step(1, "Tool", "exitcode: 1")))
    assert not build_dhcg(solo).agent_is_env.any()  # a log of one reporter still has a suspect


def test_an_empty_step_is_never_a_candidate():
    """R7: a bare TERMINATE (as AutoGen logs end) or an empty message gets no step score, on the
    development logs too; a label on it would still count."""
    devs = load_traces([DEV / f"{i}.json" for i in range(1, 30)]).traces
    t = next(t for t in devs if t.steps[-1].content.strip() == "TERMINATE")
    g = build_dhcg(t)
    assert g.step_is_empty.tolist() == [s.content.strip() == "TERMINATE" for s in t.steps]
    f = featurise([t], HashingEmbedder())
    last = g.step_node[-1]
    assert pack_batch(f, [labels_of(t)], 2).step_mask[last] == 0.0
    agent = t.agents.index(t.steps[-1].agent)
    assert pack_batch(f, [(len(t.steps) - 1, agent, 1, -1, 1)], 2).step_mask[last] == 1.0
    mixed = Trace("m", Task("q"), (Step(0, "A", "The answer is 4."), Step(1, "B", ""),
                                   Step(2, "A", "terminate."), Step(3, "B", "TERMINATE is next")))
    assert build_dhcg(mixed).step_is_empty.tolist() == [False, True, True, False]
    blank = Trace("b", Task("q"), (Step(0, "A", "TERMINATE"), Step(1, "B", " ")))
    assert not build_dhcg(blank).step_is_empty.any()  # a log of empty steps still has suspects


def test_dhcg_follows_exact_refs_of_simulated_traces():
    t = _sim(3, 1)[0]
    g = build_dhcg(t)
    edges = {(s, r) for s, r, e in zip(g.senders, g.receivers, g.edge_type)
             if EDGE_TYPES[e] == "reference"}
    for s in t.steps:
        for r in s.refs:
            assert (g.step_node[r], g.step_node[s.index]) in edges


def test_features_are_cached_by_content(tmp_path):
    traces = _sim(4, 2)
    emb = HashingEmbedder()
    a = featurise(traces, emb, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == len(traces)
    b = featurise(traces, emb, tmp_path)
    assert all(np.array_equal(x.step_text, y.step_text) for x, y in zip(a, b))


def test_packing_pads_to_buckets_and_keeps_targets():
    traces = [t for t in _sim(12, 3) if t.variant == "fatal"][:5]
    feats = featurise(traces, HashingEmbedder())
    b = pack_batch(feats, [labels_of(t) for t in traces], batch_size=8)
    n = b.graph.nodes["type"].shape[0]
    # a rung of the ladder (512 * 2**k or 1.5 times it), all nodes owned
    assert n == ladder_level(n, 512) and b.graph.n_node.sum() == n
    assert b.graph_mask.sum() == 5 and b.label_mask.sum() == 5
    offset = 0
    for gi, (t, f) in enumerate(zip(traces, feats)):
        assert b.target_node[gi] == offset + f.graph.step_node[t.label.step]
        offset += len(f.graph.node_type)


def test_a_run_plans_batches_of_one_size_that_fit_and_keep_the_order():
    traces = _sim(30, 3)
    feats = featurise(traces, HashingEmbedder())
    each = trace_sizes(feats)
    sizes = run_bucket(each, 4)
    need = np.maximum(4 * each.mean(0), each.max(0)) + 1
    # room for 4 average traces, and at most a half step more (or the smallest size)
    assert all(n <= s and (s <= 1.5 * n or s == lo)
               for n, s, lo in zip(need, sizes, SMALLEST_BUCKET))
    order = np.random.default_rng(0).permutation(len(feats))
    batches = plan_batches(each, order, 4, sizes)
    assert [j for b in batches for j in b] == order.tolist()  # every trace once, in order
    for b in batches:
        assert 1 <= len(b) <= 4 and (each[b].sum(0) < np.array(sizes)).all()
    # a batch ends early only when the next trace would not fit
    for b, nxt in zip(batches, batches[1:]):
        assert len(b) == 4 or (each[b].sum(0) + each[nxt[0]] >= np.array(sizes)).any()
    small = (int(each[:, 0].max()), 10**6, 10**6, 10**6)
    try:
        plan_batches(each, order, 4, small)
    except ValueError as e:
        assert str(small) in str(e)
    else:
        raise AssertionError("a trace larger than the batch size was planned")


def test_the_size_ladder_has_half_steps():
    assert [ladder_level(x, 512) for x in (1, 512, 513, 768, 769, 1025, 1537, 5000)] == [
        512, 512, 768, 768, 1024, 1536, 2048, 6144]


def test_training_learns_compiles_few_times_and_resumes(tmp_path):
    tr = _sim(60, 4, topologies=("magentic-one", "metagpt"))
    va = [t for t in _sim(30, 5) if t.variant == "fatal"]
    emb = HashingEmbedder()
    ftr, fva = featurise(tr, emb), featurise(va, emb)
    before = dict(COMPILES)
    res = train(TINY, tr, ftr, va, fva, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 2 and log[1]["train_loss"] < log[0]["train_loss"]
    assert all(np.isfinite(v) for v in log[-1].values() if isinstance(v, float))
    assert COMPILES["train"] - before["train"] <= 1  # one batch size for the whole run
    # a longer run in the same directory resumes after epoch 2 instead of starting over
    longer = TrainConfig(**{**TINY.__dict__, "epochs": 3})
    train(longer, tr, ftr, va, fva, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert res["best"]["val_n"] == len(va)


def test_the_schedule_as_an_argument_is_optax_warmup_cosine():
    """The train step reads its learning rate from an argument, so one program serves every
    schedule; compiled, the rate must be the optax schedule's to the bit, as it was when each
    run compiled its schedule in."""
    import jax
    import jax.numpy as jnp
    import optax
    for lr, warmup, total in ((2e-3, 50, 1280), (1e-2, 50, 30), (5e-4, 0, 7), (1e-3, 3, 1)):
        sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(warmup, total // 2),
                                                   max(total, 2), lr * 0.05)
        counts = jnp.arange(total + 3, dtype=jnp.int32)
        want = jax.jit(jax.vmap(sched))(counts)
        got = jax.jit(jax.vmap(learning_rate, (None, 0)))(
            schedule_args(TrainConfig(lr=lr, warmup_steps=warmup), total), counts)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_checkpoints_hold_the_state_packed_and_older_ones_still_restore(tmp_path):
    """A checkpoint holds one vector per dtype (orbax's cost is per leaf); restoring gives the
    state back exactly, and a checkpoint of the whole tree (earlier versions) restores too."""
    import jax
    import orbax.checkpoint as ocp
    from astra_jax.checkpoints import (checkpoint_manager, packed_state, restore_state,
                                       unpacked_state)
    from astra_jax.state import init_state

    t = load_traces(DEV / "1.json").traces[0]
    state = init_state(TINY, pack_batch(featurise([t], HashingEmbedder()), [labels_of(t)], 1))
    packed = packed_state(state)
    assert sorted(packed) == ["float32", "int32", "uint32"]
    leaves = jax.tree_util.tree_leaves(state)
    assert sum(v.size for v in packed.values()) == sum(np.size(x) for x in leaves)
    for layout, saved in (("packed", packed), ("tree", state)):
        mngr = checkpoint_manager(tmp_path / layout)
        mngr.save(1, args=ocp.args.StandardSave(saved), metrics={"val_step_acc": 0.0, "epoch": 1})
        mngr.wait_until_finished()
        back = restore_state(mngr, 1, state)
        mngr.close()
        for a, b in zip(leaves, jax.tree_util.tree_leaves(back)):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    wrong = dict(packed, float32=np.zeros(packed["float32"].size + 1, np.float32))
    with pytest.raises(RunDirError, match="another model"):
        unpacked_state(wrong, state)


def test_the_host_drawn_initial_state_follows_flax_init():
    """The initial parameters are drawn with NumPy by Flax's rules (astra_jax.initialise), not
    by compiling model.init: same tree, shapes and dtypes as model.init's, constants equal and
    random leaves of the same spread, and the optimiser's state equal to its own init."""
    import jax
    import pytest
    from astra_jax.initialise import draw_leaf
    from astra_jax.state import _abstract_init, init_state, model_and_tx

    t = load_traces(DEV / "1.json").traces[0]
    sample = pack_batch(featurise([t], HashingEmbedder()), [labels_of(t)], 1)
    cfg = TrainConfig()  # the default model: every kind of layer it has
    init, seed, empty = _abstract_init(cfg, sample)
    flax_state = jax.jit(init)(seed, empty)
    state = init_state(cfg, sample)
    assert jax.tree.structure(state) == jax.tree.structure(flax_state)
    names = set()
    for (path, ours), theirs in zip(jax.tree_util.tree_leaves_with_path(state.params),
                                    jax.tree.leaves(flax_state.params)):
        theirs = np.asarray(theirs)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, path
        name = jax.tree_util.keystr(path[-1:], simple=True)
        names.add(name)
        if name in ("bias", "scale"):
            np.testing.assert_array_equal(ours, theirs)
        else:  # random: same spread and bound as Flax's draw
            assert abs(ours.std() / theirs.std() - 1) < 0.1 + 3 / np.sqrt(ours.size), path
            assert np.abs(ours).max() <= np.abs(theirs).max() * 1.5 + 1e-6, path
    assert names == {"kernel", "bias", "scale", "embedding"}
    _, tx = model_and_tx(cfg.model, 1.0, 1.0)
    for ours, theirs in zip(jax.tree.leaves(state.opt_state),
                            jax.tree.leaves(tx.init(state.params))):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(state.rng, flax_state.rng)
    assert int(state.step) == 0
    # another seed draws other numbers; an unknown kind of leaf is an error naming it
    other = init_state(dataclasses.replace(cfg, seed=1), sample)
    assert not np.allclose(jax.tree.leaves(other.params)[1], jax.tree.leaves(state.params)[1])
    with pytest.raises(ValueError, match="head/gamma"):
        draw_leaf("gamma", (2,), np.float32, np.random.default_rng(0), "head/gamma")


def test_without_validation_data_a_short_run_checkpoints_its_end(tmp_path):
    """No epoch can be the best one without validation data: a run of short epochs saves the
    last one only, logs every epoch, and is not trained again when asked once more."""
    tr = [t for t in _sim(10, 8) if t.variant == "fatal"]
    feats = featurise(tr, HashingEmbedder())
    cfg = TrainConfig(**{**TINY.__dict__, "epochs": 3})
    train(cfg, tr, feats, [], [], tmp_path / "r", progress=False)
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["3"]
    log = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1, 2, 3]
    train(cfg, tr, feats, [], [], tmp_path / "r", progress=False)
    assert len((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()) == 3


def test_no_nan_on_one_step_traces_and_unlabelled_batches(tmp_path):
    one = Trace("one", Task("q"), (Step(0, "A", "hello"),))
    two = Trace("two", Task("q"), (Step(0, "A", "x"), Step(1, "B", "y 123")))
    tr = [one, two] * 4
    feats = featurise(tr, HashingEmbedder())
    res = train(TrainConfig(**{**TINY.__dict__, "epochs": 1}), tr, feats, tr, feats,
                tmp_path / "r", progress=False)
    assert np.isfinite(res["best"]["train_loss"])


def test_cli_train_predict_attribute(tmp_path, capsys):
    from astra_cli.main import main
    from data_gen.readers import write_traces

    write_traces(_sim(40, 6), tmp_path / "tr.jsonl")
    write_traces([t for t in _sim(12, 7) if t.variant == "fatal"], tmp_path / "va.jsonl")
    assert main(["train", str(tmp_path / "tr.jsonl"), "--val", str(tmp_path / "va.jsonl"),
                 "--out", str(tmp_path / "run"), "--epochs", "1", *TINY_ARGS]) == 0
    assert main(["predict", str(DEV / "1.json"), str(DEV / "2.json"), "--run",
                 str(tmp_path / "run"), "--top-k", "2", "--out", str(tmp_path / "c.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [r["trace_id"] for r in rows] == ["1", "2"]
    for r in rows:
        assert r["schema"] == "astra.candidates/v1" and len(r["agents"]) == 2
        assert 0 <= r["failure_prob"] <= 1 and r["agents"][0]["steps"]
        assert r["agents"][0]["score"] >= r["agents"][1]["score"]
    assert main(["attribute", str(DEV / "1.json"), "--run", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "who:" in out and "when: step" in out and "label: Excel_Expert at step 0" in out
    # fine-tuning on real logs without validation data, under other training regularisation
    # (the architecture is the same): the summary shows no validation scores it does not have
    assert main(["train", *[str(DEV / f"{i}.json") for i in range(1, 9)], "--init",
                 str(tmp_path / "run"), "--out", str(tmp_path / "tuned"), "--epochs", "1",
                 *TINY_ARGS, "--set", "model.dropout=0.2"]) == 0
    out = capsys.readouterr().out
    assert "final train loss" in out and "val agent acc" not in out


def test_an_ensemble_averages_its_members(tmp_path, capsys):
    import pytest

    from astra_cli.coarse_commands import predict_traces
    from astra_cli.main import main
    from astra_jax import RunDirError
    from astra_jax.ensembles import train_ensemble
    from astra_jax.run_dirs import member_dirs

    tr = _sim(24, 8, topologies=("magentic-one", "metagpt"))
    va = [t for t in _sim(10, 9) if t.variant == "fatal"]
    emb = HashingEmbedder()
    ftr, fva = featurise(tr, emb), featurise(va, emb)
    one = TrainConfig(**{**TINY.__dict__, "epochs": 1})
    run = tmp_path / "ens"
    res = train_ensemble(one, 2, tr, ftr, va, fva, run, progress=False)
    dirs = member_dirs(run)
    assert [d.name for d in dirs] == ["member-1", "member-2"] and len(res) == 2
    seeds = [json.loads((d / "config.json").read_text())["seed"] for d in dirs]
    assert seeds == [0, 1]
    # members share compiled code: one more model on the same data compiles nothing
    compiled = COMPILES["train"]
    train(one, tr, ftr, va, fva, tmp_path / "single", progress=False)
    assert COMPILES["train"] == compiled
    # a finished member is not trained again, and still reports its best epoch
    again = train_ensemble(one, 2, tr, ftr, va, fva, run, progress=False)
    assert [r["best"]["epoch"] for r in again] == [1, 1]
    assert len((dirs[0] / "metrics.jsonl").read_text().splitlines()) == 1

    logs = load_traces([DEV / "1.json", DEV / "2.json"]).traces
    k = 10  # every agent, so that each member scores all of them
    ens = predict_traces(run, logs, k)
    parts = [predict_traces(d, logs, k) for d in dirs]
    # two members trained at once are the same models as one after the other
    train_ensemble(one, 2, tr, ftr, va, fva, tmp_path / "ens2", progress=False, jobs=2)
    for e, e2 in zip(ens, predict_traces(tmp_path / "ens2", logs, k)):
        assert (e["agents"], e["failure_prob"]) == (e2["agents"], e2["failure_prob"])
    for e, a, b in zip(ens, *parts):
        score = {x["agent"]: x["score"] for x in e["agents"]}
        for x, y in zip(sorted(a["agents"], key=lambda x: x["agent"]),
                        sorted(b["agents"], key=lambda x: x["agent"])):
            assert abs(score[x["agent"]] - (x["score"] + y["score"]) / 2) < 1e-5
        assert abs(e["failure_prob"] - (a["failure_prob"] + b["failure_prob"]) / 2) < 1e-5
        assert [m["checkpoint"] for m in e["model"]["members"]] == [str(d) for d in dirs]
    assert any(a["agents"][0]["score"] != b["agents"][0]["score"] for a, b in zip(*parts))

    with pytest.raises(RunDirError, match="holds a single model"):
        train_ensemble(one, 2, tr, ftr, va, fva, dirs[0], progress=False)
    with pytest.raises(RunDirError, match="holds an ensemble"):
        train_ensemble(one, 1, tr, ftr, va, fva, run, progress=False)
    (tmp_path / "nothing").mkdir()  # a directory without a model (a missing path: test_export)
    assert main(["predict", str(DEV / "1.json"), "--run", str(tmp_path / "nothing"),
                 "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "nothing: no trained model here" in capsys.readouterr().err


def test_path_dropout_leaves_a_real_log_to_the_linear_evidence_path():
    """With path dropout, a dropped real log's step scores in training come from the step's own
    metadata alone (its text, which reaches only the graph layers, changes nothing); simulated
    traces always train the graph layers, and evaluation always adds the graph term."""
    import jax

    from astra_jax.model import AstraMoE

    traces = [t for t in _sim(8, 6) if t.variant == "fatal"][:3]
    feats = featurise(traces, HashingEmbedder())
    model = AstraMoE(dataclasses.replace(TINY.model, path_dropout=1.0))
    rngs = {"dropout": jax.random.PRNGKey(1), "router": jax.random.PRNGKey(2)}
    params = None
    for real in (1, 0):
        b = pack_batch(feats, [labels_of(t)[:4] + (real,) for t in traces], 4)
        nodes = b.graph.nodes
        other = b._replace(graph=b.graph._replace(nodes={**nodes, "text": -nodes["text"]}))
        params = params or model.init({"params": jax.random.PRNGKey(0)}, b)["params"]
        train_out = [model.apply({"params": params}, x, deterministic=False,
                                 rngs=rngs).step_logit for x in (b, other)]
        eval_out = [model.apply({"params": params}, x).step_logit for x in (b, other)]
        steps = b.step_mask > 0
        train_gap = np.abs(train_out[0][steps] - train_out[1][steps]).max()
        assert (train_gap < 1e-5) if real else (train_gap > 1e-4)
        assert np.abs(eval_out[0][steps] - eval_out[1][steps]).max() > 1e-4


def test_concurrent_trainings_stop_starting_after_a_failure():
    """Folds and members run two at a time; when one fails, those not yet started are dropped
    and the error is raised once the running ones end."""
    import threading
    import time

    import pytest
    from astra_jax.ensembles import concurrently

    started, lock = [], threading.Lock()

    def job(i):
        with lock:
            started.append(i)
        if i == 0:
            raise FloatingPointError("fold 1 diverged")
        time.sleep(1.0)  # long enough for the failure to cancel what is queued
        return i

    with pytest.raises(FloatingPointError, match="fold 1 diverged"):
        concurrently(job, 6, jobs=2)
    assert 0 in started and 1 in started and len(started) <= 3  # 3 at most: 0's worker moved on
    assert concurrently(lambda i: i * i, 4, jobs=2) == [0, 1, 4, 9]  # results in order
