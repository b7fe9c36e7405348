"""Plans, execution with injected faults, and counterfactual replay.

A plan is the list of actions a team takes to solve a task (a random walk over the tool graph):
the coordinator instructs an executor, the executor calls a tool, the environment returns the
output, the executor hands the result on, now and then a verifier checks it. Executing a plan
computes a value for every artifact, so the final answer is a real function of every step on the
chain. A fault changes what one action does; whether it is fatal is found by executing, and the
label is found by replay: the earliest step of an agent (a tool entity is not an agent) whose
correction makes the run succeed.

The opening plan restates the task, and the calls that work on the question read that
restatement, so a plan that misstates the task is a real, fatal fault at step 0; so is a plan
that asserts the first tool's result instead of having it computed. A misreading is the first
acting agent's first call working on a wrong restatement of the question.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from data_gen.sim.teams import Team
from data_gen.sim.tools import TOOL_INDEX, Tool
from data_gen.trace import FAULT_MODES

MOD = 1_000_003
N_TOPICS = 16  # a question value v names topic v % N_TOPICS and year 1950 + (v // N_TOPICS) % 70
YEAR_SLIPS = (1, 69, 10, 60)  # misread years: one later, one earlier, a decade later or earlier
FAULT_OPS = {  # fault kind -> the ops it can sit on
    "parameter_error": ("call",),
    "context_loss": ("call",),
    "logic_error": ("call",),
    "information_withholding": ("handoff",),
    "environment_failure": ("handoff",),
    "role_violation": ("instruct",),
    "plan_misstates_task": ("plan",),
    "plan_asserts_value": ("plan",),
    "task_misreading": ("call",),
}
PLAN_FAULTS = ("plan_misstates_task", "plan_asserts_value")
# the fault mode a label reports: a plan that misstates the task is faulty reasoning, a plan that
# asserts a tool's result does the executor's job, a misread question is a wrong tool argument
LABEL_MODE = {**{m: m for m in FAULT_MODES}, "plan_misstates_task": "logic_error",
              "plan_asserts_value": "role_violation", "task_misreading": "parameter_error"}


@dataclass
class Action:
    agent: str
    op: str  # plan | instruct | call | result | handoff | verify | ledger | chat | final
    kind: str  # message | thought | tool_call | tool_result
    tool: Tool | None = None
    inputs: tuple[int, ...] = ()  # artifact ids read
    output: int | None = None  # artifact id written
    to: str | None = None
    call: int | None = None  # the call this plan/instruct/handoff/verify is about
    diligent: bool = False  # a verify that recomputes rather than rubber-stamps
    chunk: int = -1  # which tool of the walk this action serves


@dataclass(frozen=True)
class Fault:
    step: int
    mode: str


@dataclass
class Plan:
    actions: list[Action]
    n_artifacts: int
    producer: list[int] = field(default_factory=list)  # artifact id -> action index (-1: task)
    seed_value: int = 1


@dataclass
class Run:
    values: list[int | None]
    status: list[str]  # per action: ok | corrupt | withheld | error | fabricated | caught | skipped
    final: int | None
    success: bool


def mix(tool: Tool, inputs: list[int]) -> int:
    h = 1_469_598_103 + 7919 * TOOL_INDEX[tool.name]
    for v in inputs:
        h = (h * 1_099_511 + v + 12_345) % MOD
    return h


def perturb(v: int) -> int:
    return (v * 31 + 97) % MOD or 1


def misread(v: int) -> int:
    """The question with its year slipped and its topic kept: a careless reading of the task."""
    return v + N_TOPICS * YEAR_SLIPS[v % len(YEAR_SLIPS)]


@dataclass(frozen=True)
class ChunkChoice:
    ledger: bool
    rubber_verify: bool
    chat: bool


def draw_choices(rng: random.Random, n: int) -> list[ChunkChoice]:
    return [ChunkChoice(rng.random() < 0.3, rng.random() < 0.15, rng.random() < 0.2)
            for _ in range(n)]


def build_plan(team: Team, walk: list[Tool], choices: list[ChunkChoice], seed_value: int,
               heal_chunk: int | None = None) -> Plan:
    """Linearise a walk into actions; `heal_chunk` adds a diligent verify after that tool's chunk."""
    actions: list[Action] = []
    producer = [-1]  # artifact 0 is the question

    def new_artifact() -> int:
        producer.append(len(actions))
        return len(producer) - 1

    opening = Action(team.coordinator, "plan", "thought" if team.framework == "magentic-one"
                     else "message", inputs=(0,), output=new_artifact(), chunk=-1)
    actions.append(opening)
    latest = {"question": opening.output}  # the task as the plan restates it
    for k, (tool, ch) in enumerate(zip(walk, choices)):
        executor = team.executors[tool.skill]
        inputs = tuple(latest[c] for c in tool.consumes)
        if ch.ledger:
            actions.append(Action(team.coordinator, "ledger", "thought", chunk=k))
        lead = executor == team.coordinator  # a coordinator who does this tool itself
        if not lead:
            instruct = Action(team.coordinator, "instruct", "message", tool=tool, inputs=inputs,
                              to=executor, chunk=k)
            actions.append(instruct)
            instruct.call = len(actions)
        call_index = len(actions)
        if opening.call is None:
            opening.call = call_index
        out = new_artifact()
        actions.append(Action(executor, "call", "tool_call", tool=tool, inputs=inputs, output=out,
                              chunk=k))
        if team.env_agent and tool.skill in team.env_skills:
            res = new_artifact()
            actions.append(Action(team.tool_entity(tool.name), "result", "tool_result", tool=tool,
                                  inputs=(out,), output=res, call=call_index, chunk=k))
            out = res
        handoff_out = new_artifact()
        target = team.verifier if lead else team.coordinator
        actions.append(Action(executor, "handoff", "message", tool=tool, inputs=(out,),
                              output=handoff_out, to=target if target != executor else None,
                              call=call_index, chunk=k))
        latest[tool.produces] = handoff_out
        if ch.rubber_verify or heal_chunk == k:
            v_out = new_artifact()
            actions.append(Action(team.verifier, "verify", "message", tool=tool,
                                  inputs=(handoff_out,), output=v_out, call=call_index,
                                  diligent=heal_chunk == k, chunk=k))
            latest[tool.produces] = v_out
        if ch.chat and not lead:
            actions.append(Action(team.coordinator, "chat", "message", to=executor, chunk=k))
    actions.append(Action(team.verifier, "final", "message", inputs=(latest[walk[-1].produces],),
                          chunk=len(walk)))
    return Plan(actions, len(producer), producer, seed_value)


def execute(plan: Plan, fault: Fault | None = None, corrected: int | None = None,
            golden_final: int | None = None) -> Run:
    """Run a plan; `corrected` is a step whose action is done right whatever the fault says."""
    acts = plan.actions
    vals: list[int | None] = [None] * plan.n_artifacts
    vals[0] = plan.seed_value
    status = ["ok"] * len(acts)
    override: dict[int, int] = {}
    env_broken = fault is not None and fault.mode == "environment_failure"

    def read(j: int) -> int:
        v = vals[j]
        return v if v is not None else perturb(j + 7)  # a guess in place of what was withheld

    def redo(call_index: int) -> int:
        c = acts[call_index]
        return mix(c.tool, [read(j) for j in c.inputs])

    final = None
    for i, a in enumerate(acts):
        faulty = fault is not None and fault.step == i and corrected != i
        if a.op == "plan":
            vals[a.output] = vals[0]
            if faulty and fault.mode == "plan_misstates_task":
                vals[a.output], status[i] = misread(vals[0]), "corrupt"
            elif faulty and fault.mode == "plan_asserts_value":
                override[acts[a.call].output] = perturb(redo(a.call))
                status[i] = "corrupt"
        elif a.op == "instruct" and faulty:
            override[acts[a.call].output] = perturb(redo(a.call))
            status[i] = "corrupt"
        elif a.op == "call":
            if a.output in override:
                vals[a.output] = override[a.output]
                status[i] = "skipped"
                continue
            ins = [read(j) for j in a.inputs]
            if faulty and fault.mode in ("parameter_error", "context_loss"):
                ins[0] = perturb(ins[0])
            elif faulty and fault.mode == "task_misreading":
                ins[0] = misread(ins[0])
            v = mix(a.tool, ins)
            if faulty and fault.mode == "logic_error":
                v = perturb(v)
            broken = env_broken and fault.step == i + 1
            vals[a.output] = None if broken else v
            status[i] = "error" if broken else "corrupt" if faulty else "ok"
        elif a.op == "result":
            broken = env_broken and fault.step == i + 1
            vals[a.output] = None if broken else vals[a.inputs[0]]
            status[i] = "error" if broken else "ok"
        elif a.op == "handoff":
            v = vals[a.inputs[0]]
            if faulty and fault.mode == "information_withholding":
                v, status[i] = None, "withheld"
            elif faulty and fault.mode == "environment_failure":
                v, status[i] = perturb(redo(a.call) + 1), "fabricated"
            elif v is None:
                v = redo(a.call)  # done right: the tool is run again
            vals[a.output] = v
        elif a.op == "verify":
            v = vals[a.inputs[0]]
            if a.diligent or corrected == i:
                right = redo(a.call)
                if v != right:
                    status[i] = "caught"
                v = right
            vals[a.output] = v
        elif a.op == "final":
            final = read(a.inputs[0])
    success = golden_final is None or final == golden_final
    return Run(vals, status, final, success)


def eligible_steps(plan: Plan, mode: str, team: Team) -> list[int]:
    ops = FAULT_OPS[mode]
    steps = [i for i, a in enumerate(plan.actions) if a.op in ops]
    if mode == "environment_failure":
        steps = [i for i in steps if plan.actions[i - 1].op in ("result", "call")]
    if mode == "context_loss":
        steps = [i for i in steps if i >= 4]
    if mode == "task_misreading":  # the first call, made by an agent that has not spoken yet
        steps = [i for i in steps if i == plan.actions[0].call and i in first_steps(plan)]
    return steps


def first_steps(plan: Plan) -> set[int]:
    """The steps at which each agent speaks for the first time."""
    seen: dict[str, int] = {}
    for i, a in enumerate(plan.actions):
        seen.setdefault(a.agent, i)
    return set(seen.values())


def decisive_step(plan: Plan, fault: Fault, golden_final: int, env_agent: str | None) -> int | None:
    """The earliest agent step whose correction makes the faulty run succeed, by replay; tool
    result steps are not decisions and never the label."""
    for t, a in enumerate(plan.actions):
        if a.op == "result" or a.agent == env_agent:
            continue
        if execute(plan, fault, corrected=t, golden_final=golden_final).success:
            return t
    return None
