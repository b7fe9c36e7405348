"""Self-contained HTML reports: one page per trace and one page for the run.

A page carries its CSS, its SVG and its few lines of script inline, so it can be mailed or
attached to a bug report and opens without a server or network. Log text is escaped everywhere;
a log cannot inject markup into its own report.

The pages also label: on a trace page a person marks the decisive step (or that the run did not
fail), the mark is kept in the browser's localStorage under the trace's file and id, and the
trace page or the run page saves the marks as an `astra.labels/v1` JSONL file (a download made
in the page; no server) that `astra train --labels` and the other commands read
(data_gen/labels.py).
"""
from __future__ import annotations

from html import escape
from pathlib import Path

from astra_eval import svg
from astra_eval.html_page import Markup, html_table, json_script, page, page_name
from astra_eval.markdown import COLUMNS, cell, summary_rows
from data_gen.dhcg import DHCG, EDGE_TYPES, NODE_TYPES, build_dhcg
from data_gen.marks import not_agents, single_agent
from data_gen.stage_files import SINGLE_AGENT
from data_gen.trace import Trace, normalise_agent as norm

STEP_CHARS = 6000  # a step's text shown in full up to this, then folded


def _label_target(trace: Trace) -> dict[str, str]:
    """How a mark names its trace: the id and the file it was read from (ids can repeat
    across files, e.g. Who&When's `12.json` in two folders)."""
    return {"trace_id": trace.trace_id, "source": str(trace.source.get("path", ""))}


def labels_file_name(trace_id: str) -> str:
    """The download's name for one trace's marks."""
    return "labels-" + page_name(trace_id).removesuffix(".html") + ".jsonl"


def _labelling_panel(trace: Trace) -> str:
    target = dict(_label_target(trace), file=labels_file_name(trace.trace_id))
    return (json_script("label-trace", target)
            + '<div class="labelling" id="labelling"><b>Label this run</b> · your mark: '
            '<b id="mark-text">none</b><br><span class="note">Click <i>decisive error</i> on the '
            'step where the run went wrong (its agent is taken from the step), or mark that it '
            'did not fail. Marks are kept in this browser; the run report collects them. '
            '<span id="store-note"></span></span><br>'
            '<label>reason <input id="mark-reason" size="50" placeholder="optional"></label>'
            '<label>labelled by <input id="mark-by" size="16" placeholder="optional"></label>'
            '<button id="mark-not-failed">this run did not fail</button> '
            '<button id="mark-clear">clear mark</button> '
            '<button id="mark-save">save labels file</button> <span id="save-status"></span>'
            '</div>')


def _verdict_box(trace: Trace, verdict: dict | None, threshold: float) -> str:
    if verdict is None:
        return '<div class="verdict unsure"><span class="big">No verdict</span></div>'
    conf = verdict.get("confidence")
    unsure = conf is not None and conf < threshold or bool(verdict.get("unsure"))
    head = (f'<span class="big">{"Unsure — best guess: " if unsure else ""}'
            f'{escape(verdict["agent"])} at step {verdict["step"]}</span>')
    facts = [f"confidence {conf:.3f}" if conf is not None else "no confidence",
             f"source {escape(str(verdict.get('source')))}"]
    if verdict.get("mode"):
        facts.append(f"fault mode {escape(verdict['mode'])}")
    if verdict.get("fallback"):
        facts.append("fallback to the coarse stage")
    if verdict.get("gate"):
        g = verdict["gate"]
        facts.append(f"gate: {escape(str(g.get('decision')))} (fine stage said "
                     f"{escape(str(g['fine'].get('agent')))} at step {g['fine'].get('step')})")
    tok = verdict.get("tokens") or {}
    if tok.get("prompt"):
        facts.append(f"{tok['prompt']:,} prompt tokens")
    lab = ""
    if trace.label is not None:
        a_ok = norm(verdict["agent"]) == norm(trace.label.agent)
        s_ok = verdict["step"] == trace.label.step
        mark = lambda ok: '<span class="ok">✓</span>' if ok else '<span class="bad">✗</span>'  # noqa
        lab = (f'<p id="label-check">label: <b>{escape(trace.label.agent)}</b> at step '
               f'<b>{trace.label.step}</b> — agent {mark(a_ok)} step {mark(s_ok)}'
               + (f" (from {escape(trace.source['label_from'])})"
                  if trace.source.get("label_from") else "")
               + (f"<br><i>{escape(trace.label.reason or '')}</i>" if trace.label.reason else "")
               + "</p>")
    reason = escape(verdict.get("reason") or "")
    if 0 <= verdict["step"] < len(trace.steps) and "span_id" in trace.steps[verdict["step"]].extra:
        facts.append(f'span {escape(str(trace.steps[verdict["step"]].extra["span_id"]))}')
    return (f'<div class="verdict{" unsure" if unsure else ""}" id="verdict">{head}'
            f'<p>{" · ".join(facts)}</p><p>{reason}</p>{lab}'
            f'<p><a href="#step-{verdict["step"]}" onclick="showStep({int(verdict["step"])});'
            f'return false;">read step {verdict["step"]}</a></p></div>')


def _scores(cands: dict | None) -> str:
    if not cands:
        return '<p class="note">No coarse candidates for this trace.</p>'
    rows = []
    for a in cands["agents"]:
        bar = Markup(f'<span class="bar" style="width:{int(200 * a["score"])}px"></span>')
        steps = ", ".join(f'{s["step"]} ({s["score"]:.2f})' for s in a["steps"][:6])
        rows.append((a["agent"], a["score"], bar, steps))
    info = (f'<p>failure probability {cands.get("failure_prob", 0):.3f} · uncertainty '
            f'{cands.get("uncertainty", 0):.3f}</p>')
    return info + html_table(("candidate agent", "score", "", "top steps (score)"), rows, "scores")


def _not_agents(trace: Trace) -> str:
    """Who was read as a tool, the environment or a human, and why: never blamed."""
    rows = [(x["entity"], x["kind"], x["reason"]) for x in not_agents(trace)]
    note = (f'<p class="note">{escape(SINGLE_AGENT)}.</p>' if single_agent(trace) else "")
    if not rows:
        return note
    return (note + '<p class="note">Not agents, so never blamed (the log\'s structure, or '
            "<code>--agents</code> / <code>--not-agents</code>):</p>"
            + html_table(("entity", "read as", "why"), rows, "not-agents"))


def trace_page(trace: Trace, cands: dict | None, verdict: dict | None, threshold: float = 0.0,
               back: str | None = "../index.html", graph: DHCG | None = None) -> str:
    """Who failed where in one trace, with the evidence laid out: verdict, timeline, DHCG
    (`graph`, built here when not given), scores and every step's text."""
    g = build_dhcg(trace) if graph is None else graph
    top = {a["agent"] for a in (cands or {}).get("agents", [])}
    scores = {s["step"]: s["score"] for a in (cands or {}).get("agents", []) for s in a["steps"]}
    texts = [s.content[:160] for s in trace.steps]
    step = verdict["step"] if verdict and 0 <= verdict["step"] < len(trace.steps) else None
    label = trace.label.step if trace.label else None
    attributed_node = int(g.step_node[step]) if step is not None else None
    edges = [(int(s), int(r), EDGE_TYPES[int(t)]) for s, r, t in
             zip(g.senders, g.receivers, g.edge_type)]
    body = [_verdict_box(trace, verdict, threshold), _labelling_panel(trace),
            f'<p>{escape(trace.task.question[:600]) if trace.task.question else ""}</p>',
            f'<p class="note">{len(trace.steps)} steps · {len(g.agents)} agents · framework '
            f'{escape(str(trace.system.framework))}</p>',
            "<h2>Timeline</h2><p class=\"note\">One lane per agent, colour = coarse step score; "
            "the attributed step is outlined in red, the labelled one (if any) marked ▲ below. "
            "Click a step to read it.</p>",
            '<div class="scroll">' + svg.timeline(g.agents, g.step_agent.tolist(), scores, texts,
                                                  step, label, top) + "</div>",
            "<h2>Scores</h2>", _scores(cands), _not_agents(trace),
            "<h2>Dynamic heterogeneous causal graph</h2>", svg.legend(),
            '<div class="scroll">' + svg.dhcg_drawing(
                g.entities, [NODE_TYPES[int(t)] for t in g.node_type], g.node_step.tolist(),
                g.node_entity.tolist(), edges, len(trace.steps), attributed_node, top) + "</div>",
            "<h2>Steps</h2>"]
    for s in trace.steps:
        cls = "step" + (" attributed" if s.index == step else "") + (
            " label" if s.index == label else "")
        text = s.content
        shown = escape(text[:STEP_CHARS])
        more = (f"<details><summary>{len(text) - STEP_CHARS:,} more characters</summary>"
                f"<pre>{escape(text[STEP_CHARS:])}</pre></details>" if len(text) > STEP_CHARS
                else "")
        sc = scores.get(s.index)
        body.append(f'<div class="{cls}" id="step-{s.index}"><button class="mark-step" '
                    f'data-mark-step="{s.index}" data-mark-agent="{escape(s.agent)}">decisive '
                    f'error</button><b>step {s.index}</b> · '
                    f'{escape(s.agent)}{" → " + escape(s.to) if s.to else ""}'
                    f'{" · " + escape(s.kind) if s.kind else ""}'
                    f'{" · span " + escape(str(s.extra["span_id"])) if "span_id" in s.extra else ""}'
                    f'{f" · score {sc:.3f}" if sc is not None else ""}'
                    f"<pre>{shown}</pre>{more}</div>")
    return page(f"trace {trace.trace_id}", "\n".join(body), back)


def run_page(traces: list[Trace], verdicts: dict[str, dict], report: dict | None,
             threshold: float, links: dict[str, str]) -> str:
    """The run at a glance: accuracy beside the baselines, risk-coverage, reliability,
    confusion by agent, tokens, and every trace with a link to its page."""
    body = []
    if report:
        ours = report["overall"][report["method"]]
        body.append(f'<p class="big">{report["method"]}: agent {ours["agent_acc"]:.3f}, step '
                    f'{ours["step_acc"]:.3f} on {report["n_labelled"]} labelled traces '
                    f'(strict)</p>')
        body.append("<h2>Accuracy</h2>" + html_table(["set", "method"] + [h for h, _ in COLUMNS],
                                                 summary_rows(report), "accuracy"))
        rc = report["risk_coverage"]
        cov = next((p["coverage"] for p in reversed(rc) if p["threshold"] >= threshold), 0.0)
        body.append('<h2>Confidence</h2><div class="plots"><div><b>Risk-coverage</b><br>'
                    + svg.unit_plot([(0.0, rc[0]["accuracy"])] + [
                        (p["coverage"], p["accuracy"]) for p in rc] if rc else [],
                        "coverage (most confident first)", "accuracy", marker=cov,
                        title="risk-coverage curve", css_id="risk-coverage")
                    + f'<p class="note">dashed: coverage at threshold {threshold:g}</p></div>'
                    + "<div><b>Reliability</b><br>" + svg.unit_plot(
                        [], "confidence", "accuracy", diagonal=True,
                        bars=[(b["lo"], b["hi"], b["accuracy"]) for b in report["reliability"]],
                        title="reliability diagram", css_id="reliability")
                    + f'<p class="note">ECE {cell(ours["ece"])}</p></div></div>')
        cm = report["confusion"]
        rows = [[Markup(f"<b>{escape(lab)}</b>")] + [
            Markup(f'<span style="background:rgba(78,121,167,{min(c / max(1, max(r)), 1):.2f});'
                   f'padding:0 6px">{c}</span>') for c in r]
            for lab, r in zip(cm["labels"], cm["counts"])]
        body.append("<h2>Confusion by agent</h2><p class=\"note\">rows: labelled agent, columns: "
                    "attributed agent</p><div class=\"scroll\">"
                    + html_table(["label \\ attributed"] + cm["predicted"], rows, "confusion")
                    + "</div>")
        tokens = [r["prompt_tokens"] for r in report["records"]]
        body.append("<h2>Tokens</h2>" + (
            svg.histogram(tokens, "prompt tokens per trace", css_id="tokens")
            + f'<p>mean {sum(tokens) / len(tokens):,.0f} prompt tokens per trace</p>'
            if any(tokens) else '<p class="note">Coarse stage only: no language-model tokens '
                                'were spent.</p>'))
    by_id = {r["trace_id"]: r for r in (report or {}).get("records", [])}
    rows = []
    for t in traces:
        v, r = verdicts.get(t.trace_id), by_id.get(t.trace_id)
        link = Markup(f'<a href="{escape(links[t.trace_id])}">{escape(t.trace_id)}</a>'
                      if t.trace_id in links else escape(t.trace_id))
        said = f'{v["agent"]} @ {v["step"]}' if v else "no verdict"
        conf = v.get("confidence") if v else None
        unsure = conf is not None and conf < threshold or bool(v and v.get("unsure"))
        right = "" if r is None else Markup('<span class="ok">✓</span>' if r["correct"]
                                            else '<span class="bad">✗</span>')
        lab = f"{t.label.agent} @ {t.label.step}" if t.label else ""
        rows.append((link, len(t.steps), said + (" (unsure)" if unsure else ""), conf, lab, right))
    body.append(_labelling_section(traces, verdicts, links))
    body.append('<h2>Traces</h2><input id="filter" placeholder="filter by id, agent, …">'
                + html_table(("trace", "steps", "attributed", "confidence", "label", "correct"),
                         rows, "traces"))
    return page("run report", "\n".join(body))


RUN_LABELS_FILE = "labels.jsonl"


def labelling_order(traces: list[Trace], verdicts: dict[str, dict]) -> list[int]:
    """The traces worth labelling first: those with neither a label nor an outcome saying they
    succeeded, least certain verdict first (no verdict, or no confidence, counts as least
    certain); ties keep the run's order."""
    def certainty(i: int) -> float:
        conf = (verdicts.get(traces[i].trace_id) or {}).get("confidence")
        return -1.0 if conf is None else float(conf)
    return sorted((i for i, t in enumerate(traces)
                   if t.label is None and t.outcome.success is not True), key=certainty)


def _labelling_section(traces: list[Trace], verdicts: dict[str, dict],
                       links: dict[str, str]) -> str:
    """Every mark of this run's traces, saved as one file, and the unlabelled traces in the
    order worth labelling."""
    data = {"file": RUN_LABELS_FILE, "traces": [_label_target(t) for t in traces]}
    rows = []
    for i in labelling_order(traces, verdicts):
        t, v = traces[i], verdicts.get(traces[i].trace_id)
        link = (f'<a href="{escape(links[t.trace_id])}">{escape(t.trace_id)}</a>'
                if t.trace_id in links else escape(t.trace_id))
        said = escape(f'{v["agent"]} @ {v["step"]}') if v else "no verdict"
        conf = cell(v.get("confidence")) if v else "-"
        rows.append(f'<tr data-trace="{i}"><td>{link}</td><td class="num">{len(t.steps)}</td>'
                    f'<td>{said}</td><td class="num">{conf}</td></tr>')
    labelled = sum(t.label is not None for t in traces)
    return (json_script("label-run", data)
            + '<h2>Labelling</h2><div class="labelling" id="labelling"><p><b id="marks-count">0'
            '</b> trace(s) marked in this browser · <button id="mark-save-all">save all marks'
            '</button> <span id="save-status"></span><br><span class="note">Mark the decisive '
            'step on each trace page; the marks are kept in this browser and saved here as one '
            f'<code>astra.labels/v1</code> file ({RUN_LABELS_FILE}) for <code>astra train '
            f'--labels</code>. {labelled} of {len(traces)} traces carry a label in their log '
            '(a mark replaces it). <span id="store-note"></span></span></p>'
            '<table id="marked"><thead><tr><th>trace</th><th>mark</th><th>reason</th>'
            '<th>labelled by</th></tr></thead><tbody></tbody></table>'
            '<p><b id="to-label-count">' + str(len(rows)) + '</b> unlabelled trace(s) to label, '
            'least certain first:</p><table id="to-label"><thead><tr><th>trace</th><th>steps'
            '</th><th>attributed</th><th>confidence</th></tr></thead><tbody>' + "".join(rows)
            + "</tbody></table></div>")


def write_reports(out: Path, traces: list[Trace], candidates: dict[str, dict],
                  verdicts: dict[str, dict], report: dict | None, threshold: float,
                  progress: bool = True, graphs: dict[str, DHCG] | None = None) -> Path:
    """`out/index.html` and `out/traces/<trace>.html` (each trace's graph from `graphs` when
    given); returns the index path."""
    from tqdm import tqdm
    (out / "traces").mkdir(parents=True, exist_ok=True)
    links = {}
    for t in tqdm(traces, desc="reports", unit="trace", disable=not progress):
        name = page_name(t.trace_id)
        (out / "traces" / name).write_text(trace_page(
            t, candidates.get(t.trace_id), verdicts.get(t.trace_id), threshold,
            graph=(graphs or {}).get(t.trace_id)), "utf-8")
        links[t.trace_id] = f"traces/{name}"
    index = out / "index.html"
    index.write_text(run_page(traces, verdicts, report, threshold, links), "utf-8")
    return index
