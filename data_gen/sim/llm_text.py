"""LLM-backed ASTRA-Gen: the same simulation, with each step's text rewritten by a chat model.

Structure, values, faults and labels come from the offline simulator; the model only rewrites the
wording in the voice of the agent. A rewrite that drops a value the step must carry (numbers, URLs,
quoted strings) would change what the log says, so it is rejected and the template text is kept;
the count of kept templates is reported. Traces are processed with bounded concurrency and
appended to the output as they finish, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from data_gen.chat_client import ChatConfig, chat
from data_gen.trace import Trace

_VALUE_RE = re.compile(r"https?://\S+|\"[^\"]+\"|\d[\d.,:/-]*\d|\d")

SYSTEM = ("You rewrite one message of a multi-agent log so it reads like the agent wrote it. "
          "Keep every number, URL, quoted string, code block and the addressee exactly as given. "
          "Do not add facts. Reply with the rewritten message only.")


def required_values(text: str) -> list[str]:
    return [m.rstrip(".,") for m in _VALUE_RE.findall(text)]


@dataclass
class RewriteStats:
    traces: int = 0
    steps: int = 0
    kept_template: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def rewrite_trace(trace: Trace, cfg: ChatConfig, stats: RewriteStats) -> Trace:
    steps = []
    framework = trace.system.framework or "agent team"
    for s in trace.steps:
        user = (f"Framework: {framework}\nAgent: {s.agent}\nKind: {s.kind or 'message'}\n"
                f"Message:\n<<<\n{s.content}\n>>>")
        reply = chat(cfg, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}])
        stats.prompt_tokens += reply.prompt_tokens
        stats.completion_tokens += reply.completion_tokens
        stats.steps += 1
        text = reply.text.strip()
        if not text or any(v not in text for v in required_values(s.content)):
            stats.kept_template += 1
            text = s.content
        steps.append(dataclasses.replace(s, content=text))
    src = dict(trace.source, text="llm", model=cfg.model)
    return dataclasses.replace(trace, steps=tuple(steps), source=src)


def done_ids(out: Path) -> set[str]:
    """Ids already written; a torn last line from an interrupted run is dropped and redone."""
    if not out.exists():
        return set()
    ids, good = set(), []
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            ids.add(json.loads(line)["trace_id"])
            good.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    out.write_text("".join(g + "\n" for g in good), encoding="utf-8")
    return ids


def rewrite_all(traces: Iterable[Trace], cfg: ChatConfig, out: Path, concurrency: int = 4,
                on_done: Callable[[Trace], None] | None = None) -> RewriteStats:
    """Rewrite traces not yet in `out` and append them to it (JSONL, native format)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    skip = done_ids(out)
    todo = [t for t in traces if t.trace_id not in skip]
    stats = RewriteStats()
    with out.open("a", encoding="utf-8") as f, ThreadPoolExecutor(max(1, concurrency)) as pool:
        futures = [pool.submit(rewrite_trace, t, cfg, stats) for t in todo]
        for fut in as_completed(futures):
            trace = fut.result()
            f.write(json.dumps(trace.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            stats.traces += 1
            if on_done:
                on_done(trace)
    return stats
