"""Team shapes modelled on real frameworks, with agent names drawn per task.

A team names its coordinator (who plans and delegates), its executors by skill, its verifier and
the tool entity that returns tool output (None where executors report their own output). The
entries of `TEAMS` are the canonical shapes; `draw_team` gives each task its own names (from wide
pools, in several naming styles, sometimes the canonical ones), its own rendering of tool output
and, for single-agent runs, whether each tool answers under its own name, so that neither a name
nor a rendering is a cue for who is at fault.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace


# how tool output is written: the prefixes two frameworks use, bare JSON, plain text, a tag, and
# a harness that repeats the whole history in every user turn
RESULT_STYLES = ("exitcode", "observation", "json", "plain", "tagged", "history")


@dataclass(frozen=True)
class Team:
    topology: str
    framework: str
    coordinator: str
    executors: dict[str, str]  # skill -> agent
    verifier: str
    env_agent: str | None
    roles: dict[str, str]
    env_skills: frozenset[str] = frozenset()  # skills whose output the env agent returns
    result_style: str = "exitcode"
    per_tool_entity: bool = False  # each tool's output is a step of an entity named after the tool

    @property
    def agents(self) -> list[str]:
        """The deciding agents (never the tool entity)."""
        return list(dict.fromkeys([self.coordinator, *self.executors.values(), self.verifier]))

    def tool_entity(self, tool_name: str) -> str | None:
        """Who a tool result step belongs to."""
        if self.env_agent is None:
            return None
        return tool_name if self.per_tool_entity else self.env_agent


CAPTAIN_AGENT = Team(
    topology="captain-agent", framework="autogen-captainagent", coordinator="Planning_Expert",
    executors={"web": "WebResearch_Expert", "file": "DataAnalysis_Expert",
               "code": "DataAnalysis_Expert", "compute": "Statistics_Expert"},
    verifier="Verification_Expert", env_agent="Computer_terminal",
    roles={"Planning_Expert": "breaks the task down and assigns it",
           "WebResearch_Expert": "finds information online",
           "DataAnalysis_Expert": "analyses data with code",
           "Statistics_Expert": "computes statistics",
           "Verification_Expert": "checks results before the answer is given",
           "Computer_terminal": "executes code blocks"},
    env_skills=frozenset({"web", "file", "code", "compute"}))

TEAMS: dict[str, Team] = {
    "magentic-one": Team(
        topology="magentic-one", framework="magentic-one", coordinator="Orchestrator",
        executors={"web": "WebSurfer", "file": "FileSurfer", "code": "Coder", "compute": "Coder"},
        verifier="Orchestrator", env_agent="ComputerTerminal",
        roles={"Orchestrator": "plans, delegates and tracks progress in a ledger",
               "WebSurfer": "browses the web", "FileSurfer": "reads local files",
               "Coder": "writes Python", "ComputerTerminal": "runs code and returns its output"},
        env_skills=frozenset({"code", "compute"})),
    "captain-agent": CAPTAIN_AGENT,
    # Who&When's CaptainAgent logs open with the task and plan under the name of an expert who
    # then does hands-on work; that opener can then be the faulty agent
    "captain-agent-lead": replace(
        CAPTAIN_AGENT, topology="captain-agent-lead", coordinator="DataAnalysis_Expert",
        roles={"DataAnalysis_Expert": "leads the task and analyses data with code",
               **{k: v for k, v in CAPTAIN_AGENT.roles.items()
                  if k not in ("Planning_Expert", "DataAnalysis_Expert")}}),
    "metagpt": Team(
        topology="metagpt", framework="metagpt", coordinator="Team Leader",
        executors={"spec": "Product Manager", "design": "Architect", "build": "Engineer",
                   "test": "QA Engineer", "web": "Product Manager", "compute": "Engineer"},
        verifier="QA Engineer", env_agent=None,
        roles={"Team Leader": "assigns tasks", "Product Manager": "writes the PRD",
               "Architect": "designs the system", "Engineer": "writes the code",
               "QA Engineer": "tests the code"}),
    "crewai-hierarchical": Team(
        topology="crewai-hierarchical", framework="crewai", coordinator="Crew Manager",
        executors={"web": "Senior Researcher", "file": "Data Analyst", "code": "Data Analyst",
                   "compute": "Data Analyst"},
        verifier="Quality Reviewer", env_agent="Tool",
        roles={"Crew Manager": "delegates work to the crew",
               "Senior Researcher": "researches sources", "Data Analyst": "analyses data",
               "Quality Reviewer": "reviews the final report", "Tool": "tool execution"},
        env_skills=frozenset({"web", "file", "code", "compute"})),
    # one model that decides everything and calls tools; every call is answered by a tool step
    "single-agent": Team(
        topology="single-agent", framework="single-agent", coordinator="Assistant",
        executors={"web": "Assistant", "file": "Assistant", "code": "Assistant",
                   "compute": "Assistant"},
        verifier="Assistant", env_agent="tool",
        roles={"Assistant": "plans, calls tools and answers", "tool": "returns tool output"},
        env_skills=frozenset({"web", "file", "code", "compute"}), result_style="json"),
}

# words a role is called by, across frameworks and hand-written teams
ROLE_WORDS: dict[str, tuple[str, ...]] = {
    "coordinator": ("Orchestrator", "Planner", "Manager", "Coordinator", "Lead", "Supervisor",
                    "Captain", "Director", "Router", "Dispatcher", "Host", "Chief", "Admin",
                    "Conductor", "Project Manager", "Team Leader", "Task Planner", "Boss",
                    "Moderator", "Strategist"),
    "web": ("Web Surfer", "Researcher", "Browser", "Searcher", "Web Researcher", "Scout",
            "Navigator", "Investigator", "Librarian", "Fact Finder", "Search Agent", "Crawler"),
    "file": ("File Surfer", "File Reader", "Document Analyst", "Reader", "Archivist",
             "Data Clerk", "Doc Agent", "Parser"),
    "code": ("Coder", "Programmer", "Developer", "Data Analyst", "Scientist", "Python Expert",
             "Analyst", "Scripter", "Data Scientist", "Code Writer"),
    "compute": ("Statistician", "Calculator", "Mathematician", "Quant", "Math Expert",
                "Number Cruncher", "Solver", "Estimator"),
    "verifier": ("Verifier", "Reviewer", "Critic", "Checker", "Auditor", "Validator", "Judge",
                 "Inspector", "Proofreader", "Fact Checker"),
    "spec": ("Product Manager", "Requirements Analyst", "Product Owner", "Spec Writer",
             "Business Analyst"),
    "design": ("Architect", "Designer", "System Designer", "Tech Lead", "Solution Architect"),
    "build": ("Engineer", "Developer", "Programmer", "Implementer", "Software Engineer",
              "Backend Dev"),
    "test": ("QA Engineer", "Tester", "Test Engineer", "Quality Assurance", "SDET",
             "Test Lead"),
    "env": ("Computer Terminal", "Tool", "Executor", "Terminal", "Sandbox", "Python REPL",
            "Bash", "Code Executor", "Tool Runner", "Environment", "Shell", "Interpreter",
            "Functions", "Tool Executor", "Runtime"),
    "single": ("Assistant", "Agent", "Research Agent", "ReAct Agent", "Solver", "Helper",
               "Worker", "Copilot", "Operator", "Task Agent", "Web Agent", "Analyst"),
}
PERSONAS = ("Alice", "Bob", "Chen", "Dana", "Emeka", "Farah", "Goro", "Hana", "Ivan", "Jade",
            "Kofi", "Lena", "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq")


def _styled(words: str, style: str) -> str:
    parts = words.split()
    if style in ("expert", "agent") and ("Agent" in parts or "Expert" in parts):
        style = "camel"
    if style == "camel":
        return "".join(p[:1].upper() + p[1:] for p in parts)
    if style == "snake":
        return "_".join(p.lower() for p in parts)
    if style == "expert":
        return "".join(p[:1].upper() + p[1:] for p in parts) + "_Expert"
    if style == "kebab":
        return "-".join(p.lower() for p in parts)
    if style == "agent":
        return "".join(p[:1].upper() + p[1:] for p in parts) + "Agent"
    return words  # "title"


def _slots(team: Team) -> dict[str, str]:
    """Canonical name -> the kind of role it plays, which picks its pool of words."""
    if len(team.agents) == 1:
        slots = {team.coordinator: "single"}
    else:
        slots = {team.coordinator: "coordinator"}
        for skill, name in team.executors.items():
            slots.setdefault(name, skill)
        slots.setdefault(team.verifier, "verifier")
    if team.env_agent:
        slots[team.env_agent] = "env"
    return slots


def draw_team(rng: random.Random, base: Team, canonical_share: float = 0.2) -> Team:
    """`base` with this task's names, rendering of tool output and tool naming.

    One naming style per team (as a framework would use), now and then a persona's name; the
    canonical names are kept with probability `canonical_share`."""
    style = rng.choice(("title", "camel", "snake", "expert", "kebab", "agent"))
    result_style = rng.choice(RESULT_STYLES)
    per_tool = base.framework == "single-agent" and rng.random() < 0.5
    team = replace(base, result_style=result_style, per_tool_entity=per_tool)
    if rng.random() < canonical_share:
        return team
    names: dict[str, str] = {}
    taken: set[str] = set()
    for old, kind in _slots(base).items():
        for _ in range(20):
            if kind != "env" and rng.random() < 0.1:
                new = rng.choice(PERSONAS)
            else:
                new = _styled(rng.choice(ROLE_WORDS[kind]),
                              "camel" if kind == "env" and style in ("expert", "agent") else style)
            if new.lower() not in taken:
                break
        else:
            new = f"{new}_{len(taken)}"
        names[old] = new
        taken.add(new.lower())
    return replace(
        team, coordinator=names[base.coordinator],
        executors={s: names[a] for s, a in base.executors.items()},
        verifier=names[base.verifier],
        env_agent=names[base.env_agent] if base.env_agent else None,
        roles={names[k]: v for k, v in base.roles.items() if k in names})
