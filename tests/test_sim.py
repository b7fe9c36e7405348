import random
import re
from collections import Counter

import pytest

from data_gen.sim.engine import (PLAN_FAULTS, Fault, build_plan, decisive_step, draw_choices,
                                 eligible_steps, execute, first_steps)
from data_gen.sim.generate import MAX_STEPS, GenConfig, generate, simulate_task
from data_gen.sim.render import render_step
from data_gen.sim.teams import RESULT_STYLES, TEAMS
from data_gen.sim.tools import TOOLS, random_walk
from data_gen.stats import STATS_HEADERS, TOOL_ROLE, label_positions, n_agents, stats_rows
from data_gen.trace import FAULT_MODES, check_trace

YEAR = re.compile(r"\b(?:19|20)\d\d\b")


@pytest.fixture(scope="module")
def traces():
    return [t for r in generate(GenConfig(n_tasks=240, seed=11, workers=1)) for t in r.traces]


def test_same_seed_same_traces():
    a = [t.to_dict() for t in simulate_task(123, GenConfig()).traces]
    b = [t.to_dict() for t in simulate_task(123, GenConfig()).traces]
    assert a == b and len(a) == 3


def test_parallel_generation_equals_serial():
    serial = [t.trace_id for r in generate(GenConfig(n_tasks=80, seed=2, workers=1))
              for t in r.traces]
    parallel = [t.trace_id for r in generate(GenConfig(n_tasks=80, seed=2, workers=2))
                for t in r.traces]
    assert serial == parallel and len(serial) > 150


def test_coverage_of_topologies_modes_variants_and_lengths(traces):
    fatal = [t for t in traces if t.variant == "fatal"]
    assert {t.system.topology for t in traces} == set(TEAMS)
    assert {t.label.mode for t in fatal} == set(FAULT_MODES)
    assert Counter(t.variant for t in traces)["healed"] > 0
    lengths = [len(t.steps) for t in traces]
    assert min(lengths) <= 8 and max(lengths) >= 100
    for t in traces:
        check_trace(t)


def test_triplets_share_the_task_and_outcomes_match_variants(traces):
    by_task = {}
    for t in traces:
        by_task.setdefault(t.trace_id.rsplit("-", 1)[0], []).append(t)
    for group in by_task.values():
        assert len({t.task.question for t in group}) == 1
        for t in group:
            assert t.outcome.success == (t.variant != "fatal")
            if t.variant == "fatal":
                assert t.outcome.final_answer != t.task.ground_truth
            else:
                assert t.outcome.final_answer == t.task.ground_truth


def test_refs_point_back_and_tool_steps_depend_on_earlier_outputs(traces):
    for t in traces:
        for s in t.steps:
            assert all(r < s.index for r in s.refs)
        calls = [s for s in t.steps if s.kind == "tool_call"]
        assert calls and all(s.refs for s in calls)


def test_a_lead_who_works_itself_can_be_the_faulty_agent():
    ts = [t for r in generate(GenConfig(n_tasks=80, seed=9, workers=1,
                                        topologies=("captain-agent-lead",)))
          for t in r.traces if t.variant == "fatal"]
    # names are drawn per task: the lead is whoever opens the log
    assert any(s.agent == t.steps[0].agent and s.kind == "tool_call" for t in ts for s in t.steps)
    assert all(s.to != s.agent for t in ts for s in t.steps)  # never addresses itself
    on_lead = sum(t.label.agent == t.steps[0].agent for t in ts) / len(ts)
    assert 0.2 < on_lead < 0.8  # blamed often, as the opener is in real logs, but not always


def _plan(seed):
    rng = random.Random(seed)
    team = TEAMS["captain-agent"]
    walk = random_walk(rng, set(team.executors), 6)
    return team, build_plan(team, walk, draw_choices(rng, len(walk)), 4242)


def test_walk_consumes_what_was_produced_before():
    rng = random.Random(0)
    for _ in range(50):
        walk = random_walk(rng, {"web", "file", "code", "compute"}, 10)
        have = {"question"}
        for tool in walk:
            assert set(tool.consumes) <= have
            have.add(tool.produces)
    assert len({t.name for t in TOOLS}) == len(TOOLS)


@pytest.mark.parametrize("mode", FAULT_MODES)
def test_label_is_the_earliest_correction_that_fixes_the_run(mode):
    """Replay each fatal trace: fixing the label step succeeds, fixing any earlier step fails."""
    for seed in range(40):
        team, plan = _plan(seed)
        golden = execute(plan)
        steps = eligible_steps(plan, mode, team)
        if not steps:
            continue
        fault = Fault(steps[-1], mode)
        run = execute(plan, fault, golden_final=golden.final)
        if run.success:
            continue
        assert execute(plan, fault, corrected=fault.step, golden_final=golden.final).success
        for t in range(fault.step):
            assert not execute(plan, fault, corrected=t, golden_final=golden.final).success
        return
    pytest.fail(f"no fatal {mode} fault in 40 plans")


def test_generated_labels_survive_replay(traces):
    """The stored label of each fatal trace is the step where the fault sits, by construction
    and by replay in the generator; healed traces show the verifier catching it."""
    fatal = [t for t in traces if t.variant == "fatal"]
    healed = {t.trace_id.rsplit("-", 1)[0]: t for t in traces if t.variant == "healed"}
    for t in fatal:
        step = t.steps[t.label.step]
        assert step.agent == t.label.agent
        h = healed.get(t.trace_id.rsplit("-", 1)[0])
        if h is not None:
            assert any("is wrong, the correct value is" in s.content for s in h.steps)


def _fatal_early_fault(kind):
    """A plan of the captain-agent team where a fault of `kind` is fatal, with its golden run."""
    for seed in range(40):
        team, plan = _plan(seed)
        golden = execute(plan)
        steps = eligible_steps(plan, kind, team)
        if steps and not execute(plan, Fault(steps[0], kind), golden_final=golden.final).success:
            return team, plan, golden, Fault(steps[0], kind)
    pytest.fail(f"no fatal {kind} fault in 40 plans")


@pytest.mark.parametrize("kind", PLAN_FAULTS + ("task_misreading",))
def test_plan_faults_and_misreadings_are_verified_and_labelled_where_they_sit(kind):
    team, plan, golden, fault = _fatal_early_fault(kind)
    label = decisive_step(plan, fault, golden.final, team.env_agent)
    assert label == fault.step
    assert execute(plan, fault, corrected=label, golden_final=golden.final).success
    assert all(not execute(plan, fault, corrected=t, golden_final=golden.final).success
               for t in range(label))
    if kind in PLAN_FAULTS:
        assert label == 0 and plan.actions[0].op == "plan"
    else:  # the first call, and the first time its agent speaks
        assert label == plan.actions[0].call and label in first_steps(plan) and label > 0


@pytest.mark.parametrize("kind", ("plan_misstates_task", "task_misreading"))
def test_a_misstated_task_shows_only_a_wrong_year_in_the_faulty_step(kind):
    """Rendered with the same random choices, the faulty step differs from the correct one in
    the year it restates and nowhere else: no marker phrase gives the fault away."""
    team, plan, golden, fault = _fatal_early_fault(kind)
    run = execute(plan, fault, golden_final=golden.final)
    question = "Using public sources, determine the question."
    good, _ = render_step(random.Random(0), team, plan, golden, fault.step, None, question)
    bad, _ = render_step(random.Random(0), team, plan, run, fault.step, fault, question)
    assert good != bad and YEAR.sub("YEAR", good) == YEAR.sub("YEAR", bad)


def test_generated_traces_carry_the_new_faults_visibly(traces):
    fatal = [t for t in traces if t.variant == "fatal"]
    plans = [t for t in fatal if t.label.step == 0]
    assert {t.label.mode for t in plans} == {"logic_error", "role_violation"}
    for t in plans:
        assert t.label.agent == t.steps[0].agent
        if t.label.mode == "logic_error":  # the plan restates the task with another year
            assert set(YEAR.findall(t.steps[0].content)) - set(YEAR.findall(t.task.question))
        else:  # the plan asserts the value that the first call then takes as given
            used = next(s for s in t.steps if s.kind == "tool_call").content
            assert used.startswith("Using the value given: ")
            assert used.removeprefix("Using the value given: ").rstrip(".") in t.steps[0].content
    misread = [t for t in fatal if "misread" in t.label.reason]
    assert misread
    for t in misread:
        step = t.steps[t.label.step]
        assert step.kind == "tool_call" and t.label.mode == "parameter_error"
        assert all(s.agent != t.label.agent for s in t.steps[:t.label.step])
        assert set(YEAR.findall(step.content)) - set(YEAR.findall(t.task.question))


def test_label_positions_and_lengths_are_drawn_wide(traces):
    """No framework's habit is the prior: some labels at step 0 and on an agent's first step,
    most not, relative positions over the whole log; lengths from 5 up to MAX_STEPS with long
    logs a minority."""
    fatal = [t for t in traces if t.variant == "fatal"]
    got = label_positions(fatal)
    assert 0.03 < got.at_step0 < 0.2 and 0.15 < got.on_first_step < 0.5
    rel = sorted(t.label.step / (len(t.steps) - 1) for t in fatal)
    assert rel[len(rel) // 10] < 0.15 and rel[9 * len(rel) // 10] > 0.75
    lengths = [len(t.steps) for t in traces]
    assert min(lengths) == 5 and max(lengths) <= MAX_STEPS and max(lengths) > 150
    assert sum(n > 150 for n in lengths) < 0.15 * len(lengths) and sum(lengths) / len(lengths) < 80


def test_agent_names_are_drawn_from_wide_pools(traces):
    coordinators = {t.system.topology: set() for t in traces}
    for t in traces:
        coordinators[t.system.topology].add(t.steps[0].agent)
    canonical = {topo: TEAMS[topo].coordinator for topo in TEAMS}
    assert all(len(names) >= 8 for names in coordinators.values())
    assert any(canonical[topo] in names for topo, names in coordinators.items())
    for t in traces:  # names within a team are distinct and every step's author is listed
        names = [a.name.lower() for a in t.system.agents]
        assert len(names) == len(set(names)) and {s.agent.lower() for s in t.steps} <= set(names)


def test_tool_output_is_a_step_of_the_tool_and_never_labelled(traces):
    for t in traces:
        tools = {a.name for a in t.system.agents if a.role == TOOL_ROLE}
        for s in t.steps:
            assert (s.kind == "tool_result") == (s.agent in tools)
            if s.kind == "tool_result":
                assert s.tool is not None and s.tool.name
        if t.label:
            assert t.label.agent not in tools and t.steps[t.label.step].kind != "tool_result"


def test_single_agent_runs_have_one_decider_and_many_renderings():
    ts = [t for r in generate(GenConfig(n_tasks=60, seed=4, workers=1,
                                        topologies=("single-agent",))) for t in r.traces]
    assert ts and all(n_agents(t) == 1 for t in ts)
    fatal = [t for t in ts if t.variant == "fatal"]
    assert fatal and all(t.label.agent == t.steps[0].agent for t in fatal)
    results = [s for t in ts for s in t.steps if s.kind == "tool_result"]
    starts = Counter("exitcode" if s.content.startswith("exitcode:") else
                     "observation" if s.content.startswith("Observation:") else
                     "json" if s.content.startswith("{") else
                     "tagged" if s.content.startswith("<tool_response") else
                     "history" if s.content.startswith("Conversation so far:") else "plain"
                     for s in results)
    assert set(starts) == set(RESULT_STYLES)
    assert max(starts.values()) < 0.5 * len(results)  # no rendering dominates
    # a tool answers under one shared name or under its own
    assert any(s.agent == s.tool.name for s in results)
    assert any(s.agent != s.tool.name for s in results)
    assert all(s.role == "tool" for s in results)


def test_stats_show_the_ranges(traces):
    rows = {r[0]: dict(zip(STATS_HEADERS, r)) for r in stats_rows(traces)}
    everything = rows["all"]
    assert everything["team shapes"] == len(TEAMS)
    assert everything["steps min"] == 5 and everything["steps max"] > 150
    lo, hi = map(float, rows["all/fatal"]["rel. pos. p10-p90"].split("-"))
    assert lo < 0.15 and hi > 0.75
    assert rows["single-agent/golden"]["agents min-max"] == "1-1"
