"""Team topologies modelled on real frameworks.

A team names its coordinator (who plans and delegates), its executors by skill, its verifier and
the environment agent that returns tool output (None where executors report their own output).
"""
from __future__ import annotations

from dataclasses import dataclass, replace


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

    @property
    def agents(self) -> list[str]:
        names = [self.coordinator, *self.executors.values(), self.verifier]
        if self.env_agent:
            names.append(self.env_agent)
        return list(dict.fromkeys(names))


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
    # then does hands-on work; that opener is the labelled agent in about half of them
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
}
