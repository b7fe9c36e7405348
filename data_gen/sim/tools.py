"""The tool-dependency graph that simulated tasks are random walks over.

Each tool declares the artifact kinds it consumes and the one it produces. A task is a walk that
starts from the question and repeatedly applies a tool whose inputs are available, preferring the
newest artifact, so every later step really depends on earlier outputs.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Tool:
    name: str
    consumes: tuple[str, ...]
    produces: str
    skill: str  # which kind of agent executes it: web, file, code, compute, spec, build, test


TOOLS: tuple[Tool, ...] = (
    Tool("web_search", ("query",), "urls", "web"),
    Tool("formulate_query", ("question",), "query", "web"),
    Tool("open_page", ("urls",), "page", "web"),
    Tool("extract_table", ("page",), "table", "web"),
    Tool("find_entity", ("page",), "entity", "web"),
    Tool("lookup_date", ("entity",), "date", "web"),
    Tool("read_file", ("question",), "file", "file"),
    Tool("load_dataset", ("file",), "dataset", "code"),
    Tool("filter_rows", ("dataset",), "dataset", "code"),
    Tool("table_to_dataset", ("table",), "dataset", "code"),
    Tool("run_analysis", ("dataset",), "numbers", "code"),
    Tool("aggregate", ("numbers",), "value", "compute"),
    Tool("convert_units", ("value",), "value", "compute"),
    Tool("date_difference", ("date",), "value", "compute"),
    Tool("write_prd", ("question",), "spec", "spec"),
    Tool("design_api", ("spec",), "design", "design"),
    Tool("implement_module", ("design",), "module", "build"),
    Tool("run_tests", ("module",), "test_report", "test"),
    Tool("fix_failures", ("test_report",), "module", "build"),
    Tool("measure_metric", ("module",), "value", "test"),
)
TOOL_INDEX = {t.name: i for i, t in enumerate(TOOLS)}


def random_walk(rng: random.Random, skills: set[str], length: int) -> list[Tool]:
    """A chain of `length` tools the team can execute, each consuming something produced before."""
    available = ["question"]
    usable = [t for t in TOOLS if t.skill in skills]
    walk: list[Tool] = []
    for _ in range(length * 4):
        if len(walk) == length:
            break
        newest = available[-1]
        fresh = [t for t in usable if newest in t.consumes]
        ready = [t for t in usable if set(t.consumes) <= set(available)]
        pool = fresh if fresh and rng.random() < 0.85 else ready
        if not pool:
            break
        tool = rng.choice(pool)
        walk.append(tool)
        available.append(tool.produces)
    return walk
