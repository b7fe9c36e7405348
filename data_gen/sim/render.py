"""Text for simulated steps, in the manner of each framework's real logs.

Values are rendered from the executed run, so a step that uses an earlier output shows the same
string the earlier step showed, and a faulty step shows a different one: the same signal a reader
of a real log relies on. Phrasings are drawn from several templates per action, with optional
padding (screenshot descriptions, page excerpts, stack traces) so lengths vary like real logs.
"""
from __future__ import annotations

import json
import random

from data_gen.sim.engine import N_TOPICS, Fault, Plan, Run, misread, perturb
from data_gen.sim.teams import Team

TOPICS = ("museum attendance", "river length", "album release", "Olympic medal table",
          "city population", "bus route timetable", "paper citations", "bird census",
          "stock split history", "film box office", "chess tournament", "award winners",
          "rainfall record", "train ridership", "library holdings", "vaccine trial enrolment")
assert len(TOPICS) == N_TOPICS  # a question's value names its topic and year through N_TOPICS
DOMAINS = ("en.wikipedia.org", "www.census.gov", "arxiv.org", "www.imdb.com", "data.worldbank.org",
           "www.nature.com", "github.com", "www.bls.gov", "archive.org", "www.usgs.gov")
NAMES = ("Ada Lovelace", "Carl Linnaeus", "Mary Somerville", "Alan Turing", "Rosalind Franklin",
         "Niels Bohr", "Grace Hopper", "Emmy Noether", "Santiago Calatrava", "Wangari Maathai",
         "Hedy Lamarr", "Satyendra Bose", "Chien-Shiung Wu", "Tu Youyou", "Kurt Godel")
WORDS = ("the", "report", "lists", "annual", "figures", "for", "each", "region", "and", "notes",
         "that", "values", "were", "revised", "after", "survey", "published", "in", "table",
         "section", "source", "data", "estimate", "total", "count", "average", "per", "year")
VERB = {"web_search": "search the web for", "formulate_query": "write a search query for",
        "open_page": "open the most relevant result among", "extract_table": "extract the table from",
        "find_entity": "identify the person named in", "lookup_date": "look up the key date for",
        "read_file": "read the attached file for", "load_dataset": "load",
        "filter_rows": "filter the rows of", "table_to_dataset": "turn into a dataframe",
        "run_analysis": "run the analysis on", "aggregate": "aggregate",
        "convert_units": "convert the units of", "date_difference": "compute the elapsed time from",
        "write_prd": "write the PRD for", "design_api": "design the API from",
        "implement_module": "implement the module from", "run_tests": "run the test suite on",
        "fix_failures": "fix the failures reported in", "measure_metric": "measure the metric of"}


def show(kind: str, v: int | None) -> str:
    if v is None:
        return "<no output>"
    if kind == "question":
        return f"the {TOPICS[v % N_TOPICS]} for {1950 + v // N_TOPICS % 70}"
    if kind == "query":
        return f'"{TOPICS[v % len(TOPICS)]} {1950 + v % 70} site:{DOMAINS[v % len(DOMAINS)]}"'
    if kind == "urls":
        return f"https://{DOMAINS[v % len(DOMAINS)]}/wiki/item_{v % 100000}"
    if kind == "page":
        return f"'{TOPICS[v % len(TOPICS)].title()} ({1950 + v % 70})' [page {v % 100000}]"
    if kind == "table":
        return f"| year | count |\n|---|---|\n| {1990 + v % 30} | {v % 9973} |"
    if kind == "entity":
        return NAMES[v % len(NAMES)]
    if kind == "date":
        return f"{1800 + v % 220}-{1 + v % 12:02d}-{1 + v % 28:02d}"
    if kind == "file":
        return f"data_{v % 90000}.csv"
    if kind == "dataset":
        return f"dataframe with {v % 5000} rows x {3 + v % 9} columns"
    if kind == "numbers":
        return f"[{v % 997}, {v % 883}, {v % 761}]"
    if kind == "spec":
        return f"PRD-{v % 10000} (must-have features: {2 + v % 6})"
    if kind == "design":
        return f"API design rev {v % 1000} with {3 + v % 8} endpoints"
    if kind == "module":
        return f"module build {v % 100000:05d}"
    if kind == "test_report":
        return f"{v % 60} passed, {v % 4} failed"
    return f"{v % 1000000 / 100:.2f}"


def _filler(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + "."


def _kind_of(plan: Plan, artifact: int) -> str:
    """The kind of an artifact: the question, or the plan's restatement of it, or a tool output."""
    p = plan.producer[artifact]
    return "question" if p < 0 or plan.actions[p].tool is None else plan.actions[p].tool.produces


def _plan_text(rng: random.Random, team: Team, plan: Plan, run: Run, fault: Fault | None,
               question_text: str) -> str:
    """The opening plan: the question, the task as the planner restates it (what later steps
    work on), the steps, and, where the plan asserts the first tool's result, that value."""
    a, fw = plan.actions[0], team.framework
    task = show("question", run.values[a.output])
    delegated = [y for y in plan.actions if y.op == "instruct"]
    steps = [f"{n + 1}. {VERB[x.tool.name].capitalize()} {x.tool.consumes[0]}"
             for n, x in enumerate(delegated or [y for y in plan.actions if y.op == "call"])]
    if fault is not None and fault.step == 0 and fault.mode == "plan_asserts_value":
        first = plan.actions[a.call]
        kind = first.tool.produces.replace("_", " ")
        claimed = show(first.tool.produces, run.values[first.output])
        steps.append(rng.choice((f"The {kind} we need first is already known: {claimed}. "
                                 f"Use it directly.",
                                 f"No tool is needed to {VERB[first.tool.name]} the "
                                 f"{first.tool.consumes[0]}; the {kind} is {claimed}.")))
    head = rng.choice(("Here is the plan to follow:", "Plan for solving the task:",
                       "We will proceed as follows.", "Initial plan:"))
    if fw == "magentic-one":
        return (f"Initial plan:\n\nWe are working to address the following user request:\n\n"
                f"{question_text}\n\nTo answer this request we have assembled the following "
                f"team:\n\n" + "\n".join(f"{k}: {v}" for k, v in team.roles.items())
                + f"\n\nHere is the initial fact sheet:\n\n1. GIVEN OR VERIFIED FACTS\n"
                f"   - The request concerns {task}.\n\n" + "\n".join(steps))
    if fw == "metagpt":
        return (f"[{team.coordinator}] ## Task breakdown for: {question_text}\nGoal: determine {task}.\n"
                + "\n".join(steps))
    return (f"# Task\n{question_text}\n\n## Task description\nDetermine {task} and report the "
            f"resulting figure.\n\n## {head}\n" + "\n".join(steps)
            + "\n\n## Constraints\n- Use verified sources.\n- Report the final value.")


def result_text(rng: random.Random, style: str, tool: str, out: str, err: str | None) -> str:
    """A tool's output (or its error) as one of RESULT_STYLES writes it; `history` is written
    as plain text here, the caller puts the transcript in front."""
    if style == "exitcode":
        if err:
            return (f"exitcode: 1 (execution failed)\nCode output: Traceback (most recent call "
                    f"last):\n  File \"main.py\", line {rng.randint(3, 40)}, in <module>\n{err}")
        return f"exitcode: 0 (execution succeeded)\nCode output: {out}"
    if style == "observation":
        return f"Observation: {err or out}"
    if style == "json":
        key = rng.choice(("output", "result", "content", "data"))
        body = {"error": err} if err else {key: out}
        if rng.random() < 0.5:
            body = {"tool": tool, "status": "error" if err else "ok", **body}
        return json.dumps(body)
    if style == "tagged":
        return f"<tool_response name=\"{tool}\">\n{err or out}\n</tool_response>"
    return f"Error: {err}" if err else out  # plain, history


def render_step(rng: random.Random, team: Team, plan: Plan, run: Run, i: int,
                fault: Fault | None, question_text: str) -> tuple[str, dict | None]:
    """Text of step i and its tool call record (or None)."""
    a = plan.actions[i]
    fw = team.framework
    faulty = fault is not None and fault.step == i
    val = lambda j: show(_kind_of(plan, j), run.values[j])  # noqa: E731
    if a.op == "plan":
        return _plan_text(rng, team, plan, run, fault, question_text), None
    if a.op == "ledger":
        nxt = team.coordinator
        return ('{\n  "is_request_satisfied": {"reason": "' + _filler(rng, 4, 10) +
                '", "answer": false},\n  "is_progress_being_made": {"reason": "We have partial '
                'results.", "answer": true},\n  "next_speaker": {"answer": "' + nxt + '"}\n}'), None
    if a.op == "chat":
        return rng.choice(("Thanks, please continue.", "Noted. Keep going with the next item.",
                           f"Good. {a.to}, stand by for the next instruction.",
                           "Let's keep the intermediate results in mind.")), None
    if a.op == "instruct":
        args = ", ".join(val(j) for j in a.inputs)
        if faulty:  # role_violation: does the executor's work itself and asserts a result
            claimed = show(a.tool.produces, run.values[plan.actions[a.call].output])
            return rng.choice((
                f"No need to {VERB[a.tool.name]} {args}; I can answer this myself. The result is "
                f"{claimed}. {a.to}, just use it.",
                f"I'll skip the tool and do it directly: {VERB[a.tool.name]} {args} gives "
                f"{claimed}. {a.to}, take that as given.")), None
        text = rng.choice((f"{a.to}, please {VERB[a.tool.name]} {args}.",
                           f"Next step: {a.to} should {VERB[a.tool.name]} {args} and report back.",
                           f"{a.to}: {VERB[a.tool.name]} {args}. Be precise.",
                           f"Please {VERB[a.tool.name]} {args}, {a.to}."))
        if fw == "crewai":
            text = f"Delegate work to coworker\nAction Input: {{\"task\": \"{text}\", \"coworker\": \"{a.to}\"}}"
        return text, None
    if a.op == "call":
        shown = [run.values[j] for j in a.inputs]
        if faulty and fault.mode in ("parameter_error", "context_loss"):
            shown[0] = perturb(shown[0] if shown[0] is not None else 0)
        elif faulty and fault.mode == "task_misreading":
            shown[0] = misread(shown[0])
        args = [show(_kind_of(plan, j), v) for j, v in zip(a.inputs, shown)]
        out = show(a.tool.produces, run.values[a.output])
        tool = {"name": a.tool.name, "arguments": {"input": args[0]},
                "status": "error" if run.status[i] == "error" else "ok"}
        if run.status[i] == "skipped":
            return f"Using the value given: {out}.", tool
        pre = ""
        if _kind_of(plan, a.inputs[0]) == "question":  # restates the task it works on
            pre = rng.choice((f"The task asks for {args[0]}. ", f"So we need {args[0]}. ",
                              f"Restating the task: we are looking for {args[0]}. "))
        if faulty and fault.mode == "context_loss":
            pre = rng.choice(("Going back to what the task asked for earlier, ",
                              "As I recall the original requirement, "))
        if faulty and fault.mode == "logic_error":
            body = (f"```python\n# {VERB[a.tool.name]} {args[0]}\nvalues = load({args[0]!r})\n"
                    f"result = sum(v for v in values if v < threshold) / (len(values) - 1)\n"
                    f"print(result)\n```")
        elif a.tool.skill in ("code", "compute", "build"):
            body = (f"```python\n# {VERB[a.tool.name]} {args[0]}\nvalues = load({args[0]!r})\n"
                    f"result = {a.tool.name}(values)\nprint(result)\n```")
        elif fw == "crewai":
            body = f"Thought: I need to {VERB[a.tool.name]} it.\nAction: {a.tool.name}\nAction Input: {{\"input\": \"{args[0]}\"}}"
        elif fw == "single-agent" and a.tool.skill != "web":
            body = rng.choice((
                f"I will {VERB[a.tool.name]} {args[0]}.",
                json.dumps({"name": a.tool.name, "arguments": {"input": args[0]}}),
                f"Thought: I should {VERB[a.tool.name]} {args[0]}.\nAction: {a.tool.name}\n"
                f"Action Input: {json.dumps({'input': args[0]})}"))
        elif a.tool.skill == "web":
            body = rng.choice((f"I typed {args[0]} into the browser search bar.",
                               f"I navigated to {args[0]}.", f"I clicked on {args[0]}."))
            body += f"\n\nThe viewport shows {rng.randint(10, 100)}% of the webpage. {_filler(rng, 8, 40)}"
        else:
            body = f"I will {VERB[a.tool.name]} {args[0]}."
        if team.env_agent and a.tool.skill in team.env_skills:
            return pre + body, tool
        status = "failed" if run.status[i] == "error" else "done"
        return (pre + body + f"\n\nResult ({status}): {out}"), tool
    if a.op == "result":
        out = show(a.tool.produces, run.values[a.output])
        err = None
        if run.status[i] == "error":
            err = rng.choice(("TimeoutError: the request took longer than 60 seconds",
                              "HTTPError: 503 Service Unavailable",
                              "ConnectionResetError: [Errno 104] Connection reset by peer"))
        status = "error" if err else "ok"
        return result_text(rng, team.result_style, a.tool.name, out, err), {"name": a.tool.name,
                                                                           "status": status}
    if a.op == "handoff":
        out = show(a.tool.produces, run.values[a.output])
        if run.status[i] == "withheld":
            return rng.choice(("Done. I found what we need on that step, moving on.",
                               "I have extracted the relevant information.",
                               "Task completed; the output is ready for the next step.")), None
        if run.status[i] == "fabricated":
            return rng.choice((f"The tool returned nothing useful, but the answer should be {out}.",
                               f"Despite the error, I am confident the result is {out}.")), None
        text = rng.choice((f"I found it: {out}.", f"The result is {out}.",
                           f"Here is the output: {out}. {_filler(rng, 0, 20)}",
                           f"Completed. {a.tool.produces.replace('_', ' ').capitalize()}: {out}."))
        if fw == "metagpt":
            text = f"[{a.agent}] ## {a.tool.name}\n{text}"
        return text, None
    if a.op == "verify":
        got = show(_kind_of(plan, a.inputs[0]), run.values[a.inputs[0]])
        fixed = show(_kind_of(plan, a.output), run.values[a.output])
        if run.status[i] == "caught":
            return (f"I re-ran {a.tool.name} to check: {got} is wrong, the correct value is "
                    f"{fixed}. Please use {fixed} from now on."), None
        if a.diligent:
            return f"I re-ran {a.tool.name} to check: {fixed} is confirmed.", None
        return rng.choice((f"The result {got} looks correct to me.",
                           f"I reviewed {got}; it is consistent with the task.",
                           f"Verified: {got}.")), None
    if a.op == "final":
        ans = show(_kind_of(plan, a.inputs[0]), run.final)
        tail = "\n\nTERMINATE" if fw == "autogen-captainagent" else ""
        return f"FINAL ANSWER: {ans}{tail}", None
    raise ValueError(f"unknown action op {a.op!r}")
