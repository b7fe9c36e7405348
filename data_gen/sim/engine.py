"""Plans, execution with injected faults, and counterfactual replay.

A plan is the list of actions a team takes to solve a task (a random walk over the tool graph):
the coordinator instructs an executor, the executor calls a tool, the environment returns the
output, the executor hands the result on, now and then a verifier checks it. Executing a plan
computes a value for every artifact, so the final answer is a real function of every step on the
chain. A fault changes what one action does; whether it is fatal is found by executing, and the
label is found by replay: the earliest step of an agent (the environment is not an agent) whose
correction makes the run succeed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from data_gen.sim.teams import Team
from data_gen.sim.tools import TOOL_INDEX, Tool

MOD = 1_000_003
FAULT_OPS = {
    "parameter_error": ("call",),
    "context_loss": ("call",),
    "logic_error": ("call",),
    "information_withholding": ("handoff",),
    "environment_failure": ("handoff",),
    "role_violation": ("instruct",),
}


@dataclass
class Action:
    agent: str
    op: str  # plan | instruct | call | result | handoff | verify | ledger | chat | final
    kind: str  # message | thought | tool_call | tool_result
    tool: Tool | None = None
    inputs: tuple[int, ...] = ()  # artifact ids read
    output: int | None = None  # artifact id written
    to: str | None = None
    call: int | None = None  # the call this instruct/handoff/verify is about
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
    latest = {"question": 0}

    def new_artifact() -> int:
        producer.append(len(actions))
        return len(producer) - 1

    actions.append(Action(team.coordinator, "plan", "thought" if team.framework == "magentic-one"
                          else "message", inputs=(0,), chunk=-1))
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
        out = new_artifact()
        actions.append(Action(executor, "call", "tool_call", tool=tool, inputs=inputs, output=out,
                              chunk=k))
        if team.env_agent and tool.skill in team.env_skills:
            res = new_artifact()
            actions.append(Action(team.env_agent, "result", "tool_result", tool=tool,
                                  inputs=(out,), output=res, call=call_index, chunk=k))
            out = res
        handoff_out = new_artifact()
        actions.append(Action(executor, "handoff", "message", tool=tool, inputs=(out,),
                              output=handoff_out, to=team.verifier if lead else team.coordinator,
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
        if a.op == "instruct" and faulty:
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
    return steps


def decisive_step(plan: Plan, fault: Fault, golden_final: int, env_agent: str | None) -> int | None:
    """The earliest agent step whose correction makes the faulty run succeed, by replay."""
    for t, a in enumerate(plan.actions):
        if a.agent == env_agent:
            continue
        if execute(plan, fault, corrected=t, golden_final=golden_final).success:
            return t
    return None
