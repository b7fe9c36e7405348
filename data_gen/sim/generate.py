"""ASTRA-Gen: golden / fatal / healed triplets of the same task, deterministic for a seed.

For each task seed: pick a topology, walk the tool graph, build the plan, draw a fault kind and an
eligible step, execute. A fatal trace is kept only if its run fails, the run without the fault
succeeds, and a replay finds a step whose correction makes it succeed; that earliest step is the
label. The healed trace is the same run with a diligent verifier after the faulty step, kept only
if it succeeds. Tasks that meet none of this are reported as rejected, never relabelled.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator

from data_gen.sim.engine import (LABEL_MODE, PLAN_FAULTS, Fault, Plan, Run, build_plan,
                                 decisive_step, draw_choices, eligible_steps, execute, first_steps)
from data_gen.sim.render import TOPICS, render_step, show
from data_gen.sim.teams import TEAMS, Team, draw_team
from data_gen.sim.tools import random_walk
from data_gen.stats import TOOL_ROLE  # AgentSpec.role of every tool entity in simulated traces
from data_gen.trace import (FAULT_MODES, VARIANTS, AgentSpec, Label, Outcome, Step, System, Task,
                            ToolCall, Trace)


MAX_STEPS = 300  # the longest log; a plan over it is cut back by whole tools


@dataclass(frozen=True)
class GenConfig:
    """What each task draws from. Tool chains are `min_tools` to `max_tools` long, drawn
    log-uniformly, so short logs are common and long ones (up to MAX_STEPS) a minority.
    Where the fault sits is drawn wide on purpose, so that no framework's habit is the prior:
    `plan_fault_rate` of tasks get a fault in the opening plan (label at step 0),
    `misreading_rate` a first call that misreads the question (the agent's first step); the
    rest draw from `modes`, and with probability `first_step_bias` such a fault goes to an
    agent's first step where one is eligible, otherwise to the eligible step nearest a
    relative position drawn uniformly over the log. Names, team sizes and the rendering of
    tool output are drawn per task (`teams.draw_team`)."""
    n_tasks: int = 100
    seed: int = 0
    topologies: tuple[str, ...] = tuple(TEAMS)
    modes: tuple[str, ...] = FAULT_MODES
    variants: tuple[str, ...] = VARIANTS
    min_tools: int = 1
    max_tools: int = 64
    workers: int = 0  # 0: all cores
    plan_fault_rate: float = 0.08
    misreading_rate: float = 0.08
    first_step_bias: float = 0.25
    canonical_names: float = 0.2  # share of teams that keep their framework's canonical names


@dataclass
class TaskResult:
    traces: list[Trace] = field(default_factory=list)
    rejected: str | None = None


def draw_fault_kind(rng: random.Random, cfg: GenConfig,
                    possible: Callable[[str], bool] = lambda kind: True) -> str:
    """A faulty plan, a misreading or one of `cfg.modes`, at the configured rates; kinds whose
    label mode is not in `cfg.modes` are not drawn, nor kinds `possible` rules out (a single
    agent delegates nothing, so it cannot overstep a delegation)."""
    u = rng.random()
    if u < cfg.plan_fault_rate:
        pool = PLAN_FAULTS
    elif u < cfg.plan_fault_rate + cfg.misreading_rate:
        pool = ("task_misreading",)
    else:
        pool = cfg.modes
    pool = tuple(k for k in pool if LABEL_MODE[k] in cfg.modes and possible(k)) or tuple(
        k for k in cfg.modes if possible(k)) or cfg.modes
    return pool[rng.randrange(len(pool))]


def draw_n_tools(rng: random.Random, lo: int, hi: int) -> int:
    """Log-uniform on [lo, hi]: many short chains, few long ones."""
    lo = max(lo, 1)
    hi = max(hi, lo)
    return min(hi, int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))))


def _reason(mode: str, agent: str, tool: str | None, step: int) -> str:
    what = {
        "parameter_error": f"called {tool} with an argument that does not match the earlier output",
        "context_loss": f"forgot the earlier result and called {tool} with a stale value",
        "logic_error": f"wrote faulty logic for {tool}, so its result is wrong",
        "information_withholding": f"did not pass on the result of {tool}, so it had to be guessed",
        "environment_failure": f"ignored the failure of {tool} and reported a made-up result",
        "role_violation": f"answered {tool} itself instead of delegating it, asserting a wrong value",
        "plan_misstates_task": "set every later step on the wrong question by restating the "
                               "task with a wrong year in the plan",
        "plan_asserts_value": f"asserted a wrong result of {tool} in the plan instead of having "
                              "it computed",
        "task_misreading": f"misread the question (a wrong year) and ran {tool} on it",
    }[mode]
    return f"{agent} {what} at step {step}."


def _trace(team: Team, plan: Plan, run: Run, fault: Fault | None, label: Label | None,
           variant: str, trace_id: str, question: str, golden_final: int, seed: int) -> Trace:
    rng = random.Random(seed * 7 + VARIANTS.index(variant))
    steps: list[Step] = []
    instruct_of = {a.call: i for i, a in enumerate(plan.actions) if a.op == "instruct"}
    for i, a in enumerate(plan.actions):
        content, tool = render_step(rng, team, plan, run, i, fault, question)
        if a.op == "result" and team.result_style == "history":
            content = _with_history(steps, question, content)
        refs = {plan.producer[j] for j in a.inputs if plan.producer[j] >= 0}
        if i in instruct_of:
            refs.add(instruct_of[i])
        if team.framework == "magentic-one":
            role = f"{a.agent} (thought)" if a.kind == "thought" else (
                f"{a.agent} (-> {a.to})" if a.to else a.agent)
        elif a.op == "result":
            role = "tool" if team.framework == "single-agent" else "user"
        else:
            role = "assistant"
        steps.append(Step(index=i, agent=a.agent, content=content, kind=a.kind, to=a.to, role=role,
                          tool=ToolCall(tool["name"], tool.get("arguments", {}), tool["status"])
                          if tool else None, refs=tuple(sorted(refs))))
    tool_entities: dict[str, list[str]] = {}
    for a in plan.actions:
        if a.op == "result":
            tool_entities.setdefault(a.agent, [])
            if a.tool.name not in tool_entities[a.agent]:
                tool_entities[a.agent].append(a.tool.name)
    specs = [AgentSpec(name=n, role=team.roles.get(n)) for n in team.agents]
    specs += [AgentSpec(name=n, role=TOOL_ROLE, tools=tuple(ts)) for n, ts in tool_entities.items()]
    final_kind = plan.actions[plan.producer[plan.actions[-1].inputs[0]]].tool.produces
    return Trace(
        trace_id=trace_id,
        task=Task(question=question, ground_truth=show(final_kind, golden_final)),
        steps=tuple(steps),
        system=System(framework=team.framework, topology=team.topology,
                      agents=tuple(specs)),
        outcome=Outcome(success=run.success, final_answer=show(final_kind, run.final)),
        label=label, variant=variant, source={"format": "astra-gen", "seed": seed})


HISTORY_STEPS = 12  # a history-repeating harness: how many earlier turns each tool turn repeats
HISTORY_CHARS = 160  # and how much of each


def _with_history(steps: list[Step], question: str, content: str) -> str:
    """A tool turn of a harness that sends the whole conversation again with each new output
    (cut to its last HISTORY_STEPS turns so that long logs stay small)."""
    shown = steps[-HISTORY_STEPS:]
    lines = [f"user: {question}"] if len(shown) == len(steps) else ["..."]
    lines += [f"{s.agent}: {s.content[:HISTORY_CHARS]}" for s in shown]
    return "Conversation so far:\n" + "\n".join(lines) + f"\n\nNew tool output:\n{content}"


def simulate_task(seed: int, cfg: GenConfig) -> TaskResult:
    rng = random.Random(seed)
    team = draw_team(rng, TEAMS[cfg.topologies[rng.randrange(len(cfg.topologies))]],
                     cfg.canonical_names)
    walk = random_walk(rng, set(team.executors), draw_n_tools(rng, cfg.min_tools, cfg.max_tools))
    if not walk:
        return TaskResult(rejected="empty walk")
    choices = draw_choices(rng, len(walk))
    seed_value = rng.randrange(1, 1_000_000)
    question = (f"Using public sources, determine {show('question', seed_value)} and report the "
                f"resulting figure. {rng.choice(TOPICS).capitalize()} records may be incomplete.")
    plan = build_plan(team, walk, choices, seed_value)
    while len(plan.actions) > MAX_STEPS - 1 and len(walk) > 1:  # room for a healing check
        walk, choices = walk[:-1], choices[:-1]
        plan = build_plan(team, walk, choices, seed_value)
    golden = execute(plan)
    out = TaskResult()
    tid = f"sim-{team.topology}-{cfg.seed}-{seed}"
    if "golden" in cfg.variants:
        out.traces.append(_trace(team, plan, golden, None, None, "golden", f"{tid}-golden",
                                 question, golden.final, seed))
    if not {"fatal", "healed"} & set(cfg.variants):
        return out
    mode = draw_fault_kind(rng, cfg, lambda kind: bool(eligible_steps(plan, kind, team)))
    candidates = eligible_steps(plan, mode, team)
    rng.shuffle(candidates)
    if rng.random() < cfg.first_step_bias:
        firsts = first_steps(plan)
        candidates.sort(key=lambda i: i not in firsts)  # stable: still shuffled within each
    else:  # near a position drawn uniformly over the log
        target = rng.random() * (len(plan.actions) - 1)
        candidates.sort(key=lambda i: abs(i - target))
    for step in candidates[:4]:
        fault = Fault(step, mode)
        run = execute(plan, fault, golden_final=golden.final)
        if run.success:
            continue  # the fault did not matter on this run; try another step
        decisive = decisive_step(plan, fault, golden.final, team.env_agent)
        if decisive is None:
            continue
        act = plan.actions[decisive]
        agent = act.agent
        tool = act.tool if act.op != "plan" else plan.actions[act.call].tool  # its first tool
        label = Label(agent=agent, step=decisive, mode=LABEL_MODE[mode],
                      reason=_reason(mode, agent, tool.name if tool else None, decisive))
        if "fatal" in cfg.variants:
            out.traces.append(_trace(team, plan, run, fault, label, "fatal", f"{tid}-fatal",
                                     question, golden.final, seed))
        if "healed" in cfg.variants:
            # a plan fault is caught, if at all, by a check of the first tool's result
            healed_plan = build_plan(team, walk, choices, seed_value,
                                     heal_chunk=max(plan.actions[step].chunk, 0))
            healed = execute(healed_plan, fault, golden_final=golden.final)
            if healed.success:
                out.traces.append(_trace(team, healed_plan, healed, fault, label, "healed",
                                         f"{tid}-healed", question, golden.final, seed))
        return out
    out.rejected = f"no fatal {mode} fault found"
    return out


def _work(args: tuple[int, GenConfig, Callable[[Trace], str] | None]) -> TaskResult:
    seed, cfg, encode = args
    res = simulate_task(seed, cfg)
    if encode is not None:  # encode in the worker: strings are cheap to send back
        res.traces = [encode(t) for t in res.traces]
    return res


def task_seeds(cfg: GenConfig) -> list[int]:
    base = random.Random(cfg.seed)
    return [base.randrange(2**31) for _ in range(cfg.n_tasks)]


def generate(cfg: GenConfig, encode: Callable[[Trace], str] | None = None
             ) -> Iterator[TaskResult]:
    """Results in task order; uses a process pool when more than one worker is asked for.
    With `encode` (a module-level function), results carry encoded strings instead of traces.
    Workers are spawned, never forked: the caller may have started JAX, whose threads a fork
    would copy in the middle of their work (JAX warns that this can deadlock)."""
    jobs = [(s, cfg, encode) for s in task_seeds(cfg)]
    workers = cfg.workers or mp.cpu_count()
    if workers <= 1 or len(jobs) < 64:
        yield from map(_work, jobs)
        return
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(_work, jobs, chunksize=32)
