"""Per-step evidence that means the same in every framework.

Each column is a number per step computed from the native trace alone (agent, content, `to`,
outcome), so a Who&When log, a TracerTraj log, an OpenTelemetry export and a simulated trace get
the same rule. The coarse model takes them as step-node inputs and learns how much each is worth;
nothing here decides a verdict. Rules, by group (docs/coarse_stage.md § Evidence has the table):

position
  own_index_log     log(1 + i), i = how many steps the author wrote before this one
  own_first         1 on the author's first step
  own_last          1 on the author's last step
  own_rel           i / (the author's step count - 1); 0 for an author with one step
  since_instruction log(1 + steps since the last step addressed to this author, by `to` or by
                    its name in the first line); since the log's start when none was
  opening           1 on step 0 (the opening plan or task statement)
errors
  http_error        an HTTP error status (`404`, `status code 500`, `HTTP Error 403`)
  failure_words     "failed", "unable to", "could not", "cannot", "not found", "did not work"
  next_error        the next step reports an error (Traceback, `Error`, non-zero exit code, ...)
claims
  unsupported       a claim without evidence: "as I recall", "no need to search/verify",
                    "I assume", "let's assume", "hypothetical", "simulated/dummy/placeholder/
                    example data", "based on my knowledge", "I believe", "probably"
  unsupported_count log(1 + number of such phrases)
answer
  answer_first      the first step that states a value the final answer repeats
  answer_repeat     the step states a value the final answer repeats
contradiction
  contradicted      the first step that states `KEY is/=/: NUMBER` for a key that a later step
                    states with another number (keys match when they share a word of 4+
                    letters)
  corrected_later   a later step of another agent says "incorrect", "mistake", "wrong",
                    "discrepancy" or "should be" and repeats a value this step stated (the
                    latest such earlier step)

The final answer is `outcome.final_answer` when the log has one; otherwise the text of the last
step that states any value (the team's closing answer). Values are those of `answer_values`.
"""
from __future__ import annotations

import re

import numpy as np

from data_gen.dhcg import has_error, values_in
from data_gen.trace import Trace

EVIDENCE_GROUPS: dict[str, tuple[str, ...]] = {
    "position": ("own_index_log", "own_first", "own_last", "own_rel", "since_instruction",
                 "opening"),
    "errors": ("http_error", "failure_words", "next_error"),
    "claims": ("unsupported", "unsupported_count"),
    "answer": ("answer_first", "answer_repeat"),
    "contradiction": ("contradicted", "corrected_later"),
}
EVIDENCE_COLUMNS = tuple(c for cols in EVIDENCE_GROUPS.values() for c in cols)

# a pattern that opens with `(?=[...])` names the first characters its matches can start with:
# the same matches, found about twice as fast (tests/test_real_labels.py)
_HTTP = re.compile(
    r"(?=[hsr45])\b(?:HTTP(?: Error)?|status(?: code)?|response)\W{0,3}[45]\d\d\b|"
    r"\b[45]\d\d (?:Client|Server) Error\b|\b(?:404|403|500|502|503) "
    r"(?:Not Found|Forbidden|Internal|Bad Gateway|Service)", re.IGNORECASE)
_HTTP_CODE = re.compile(r"[45]\d\d")  # in every match of _HTTP: a text without one has none
_FAIL = re.compile(r"(?=[fucdn])\b(?:failed|failure|unable to|could not|couldn't|cannot|can't|"
                   r"not found|did not work|didn't work)\b", re.IGNORECASE)
_UNSUPPORTED = re.compile(
    r"(?=[afnilhsdpembw])\b(?:as (?:i|we) recall|from (?:my |general )?memory|no need to "
    r"(?:search|verify|check|look)|i(?:'ll| will)? assume|let'?s assume|assuming (?:that|the)|"
    r"hypothetical(?:ly)?|simulat(?:e|ed|ing) (?:data|the|a|an)|dummy|placeholder|"
    r"(?:example|sample|mock|fake) (?:data|values?|dataset)|based on (?:my|general|common) "
    r"knowledge|i believe|probably|it is (?:likely|commonly known)|without (?:verifying|"
    r"checking|access))", re.IGNORECASE)
_CORRECTION = re.compile(r"(?=[inmwdse])\b(?:incorrect|not correct|mistake|wrong|"
                         r"discrepanc(?:y|ies)|should be|inaccurate|error in)\b", re.IGNORECASE)
_KEY_VALUE = re.compile(r"([A-Za-z][A-Za-z _-]{2,40}?)\s*(?:=|:|\bis\b|\bwas\b|\bare\b|"
                        r"\bequals\b)\s*\$?(-?\d[\d,]*(?:\.\d+)?)")
# what every match of _KEY_VALUE contains from its separator on: the full pattern is tried only
# in a short window before each of these (it costs most of featurising when run over the text)
_KEY_VALUE_END = re.compile(r"(?=[=:iwae])(?:=|:|\bis\b|\bwas\b|\bare\b|\bequals\b)"
                            r"\s*\$?-?\d")
_KEY_MAX = 41  # the longest key _KEY_VALUE allows: a letter and up to 40 more
_NUMBER = re.compile(r"(?=[-\d])(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
_BOLD = re.compile(r"\*\*([^*\n]{1,60})\*\*|\"([^\"\n]{2,60})\"")


def answer_values(text: str) -> set[str]:
    """Values an answer can repeat: those of `values_in` (URLs, file names, numbers of 3+
    digits), numbers of 2+ characters, and short bold or quoted phrases (lower-cased)."""
    vals = values_in(text)
    vals |= {n.replace(",", "") for n in _NUMBER.findall(text) if len(n.replace(",", "")) >= 2}
    vals |= {(a or b).strip().lower() for a, b in _BOLD.findall(text) if (a or b).strip()}
    return vals


def key_value_matches(text: str) -> list[tuple[str, str]]:
    """`_KEY_VALUE.findall(text)`, in linear time: a match starts at most `_KEY_MAX` characters
    (and the whitespace) before its separator, so each separator is tried in that window only,
    and the leftmost match of the window is read again over the whole text for its number."""
    out = []
    pos = sep_from = 0  # where the next match may start; where to look for its separator
    while (end := _KEY_VALUE_END.search(text, sep_from)) is not None:
        ws = end.start()
        while ws > pos and text[ws - 1].isspace():
            ws -= 1
        head = _KEY_VALUE.search(text, max(pos, ws - _KEY_MAX), end.end())
        if head is None:  # no match uses this separator
            sep_from = end.start() + 1
            continue
        m = _KEY_VALUE.match(text, head.start())
        out.append((m.group(1), m.group(2)))
        pos = sep_from = m.end()
    return out


def key_values(text: str) -> list[tuple[frozenset[str], str]]:
    """`KEY is NUMBER` statements: the key's words of 4+ letters (lower-cased), the number."""
    out = []
    for key, num in key_value_matches(text):
        words = frozenset(w for w in key.lower().replace("_", " ").split() if len(w) >= 4)
        if words:
            out.append((words, num.replace(",", "")))
    return out


def _addressed(text: str, to: str | None, agent: str) -> bool:
    return to == agent or agent in text.split("\n", 1)[0]


def step_evidence(trace: Trace) -> np.ndarray:
    """[S, len(EVIDENCE_COLUMNS)] float32, columns in `EVIDENCE_COLUMNS` order."""
    steps = trace.steps
    n = len(steps)
    col = {c: np.zeros(n, np.float32) for c in EVIDENCE_COLUMNS}
    own: dict[str, list[int]] = {}
    for s in steps:
        own.setdefault(s.agent, []).append(s.index)
    # each step's position among its author's steps, looked up once (a log of any length)
    position = {i: k for mine in own.values() for k, i in enumerate(mine)}
    last_addressed: dict[str, int] = {}
    errors = [has_error(s) for s in steps]
    vals = [answer_values(s.content) for s in steps]
    for s in steps:
        mine = own[s.agent]
        i = position[s.index]
        col["own_index_log"][s.index] = np.log1p(i)
        col["own_first"][s.index] = float(i == 0)
        col["own_last"][s.index] = float(i == len(mine) - 1)
        col["own_rel"][s.index] = i / max(len(mine) - 1, 1)
        col["since_instruction"][s.index] = np.log1p(s.index - last_addressed.get(s.agent, 0))
        for a in own:
            if a != s.agent and _addressed(s.content, s.to, a):
                last_addressed[a] = s.index
        col["http_error"][s.index] = float(bool(_HTTP_CODE.search(s.content)
                                                and _HTTP.search(s.content)))
        col["failure_words"][s.index] = float(bool(_FAIL.search(s.content)))
        col["next_error"][s.index] = float(s.index + 1 < n and errors[s.index + 1])
        claims = len(_UNSUPPORTED.findall(s.content))
        col["unsupported"][s.index] = float(claims > 0)
        col["unsupported_count"][s.index] = np.log1p(claims)
    col["opening"][0] = 1.0
    final = _final_values(trace, vals)
    first_seen = False
    for s in steps:
        repeat = bool(vals[s.index] & final)
        col["answer_repeat"][s.index] = float(repeat)
        if repeat and not first_seen:
            col["answer_first"][s.index], first_seen = 1.0, True
    _contradictions(trace, vals, col)
    return np.stack([col[c] for c in EVIDENCE_COLUMNS], axis=1)


def _final_values(trace: Trace, vals: list[set[str]]) -> set[str]:
    if trace.outcome.final_answer:
        return answer_values(trace.outcome.final_answer)
    closing = next((i for i in range(len(vals) - 1, -1, -1) if vals[i]), None)
    if closing is None:
        return set()
    # the closing step's own values are the answer; it does not count as first stating them
    return vals[closing] if closing > 0 else set()


def _contradictions(trace: Trace, vals: list[set[str]], col: dict[str, np.ndarray]) -> None:
    stated: list[tuple[int, frozenset[str], str]] = []  # (step, key words, number) so far
    for s in trace.steps:
        mine = key_values(s.content)
        for step, words, num in stated:
            if step != s.index and any(words & w and num != n for w, n in mine):
                col["contradicted"][step] = 1.0
        stated += [(s.index, w, n) for w, n in mine if not any(w & x for _, x, _ in stated)]
    for s in trace.steps:
        if not _CORRECTION.search(s.content):
            continue
        for j in range(s.index - 1, -1, -1):  # the latest step it repeats (no copy of the log)
            earlier = trace.steps[j]
            if earlier.agent != s.agent and vals[earlier.index] & vals[s.index]:
                col["corrected_later"][earlier.index] = 1.0
                break
