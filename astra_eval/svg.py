"""Inline SVG drawings for the reports: no plotting library, no external file, so a report is one
HTML file that opens anywhere. Every text that comes from a log is escaped here."""
from __future__ import annotations

from html import escape
from typing import Sequence

import numpy as np

NODE_COLOURS = {"agent": "#4e79a7", "tool": "#f28e2b", "artifact": "#59a14f",
                "environment": "#b07aa1"}
EDGE_COLOURS = {"communicate": "#4e79a7", "invoke": "#f28e2b", "return": "#e15759",
                "reference": "#59a14f", "affect": "#b07aa1", "temporal": "#c8c8c8"}
ATTRIBUTED = "#d62728"
LABEL = "#111111"


def heat(score: float | None) -> str:
    """White → orange → red for a score in [0, 1]; grey where the coarse stage gave none."""
    if score is None:
        return "#eeeeee"
    s = min(max(score, 0.0), 1.0) ** 0.5  # small scores stay visible
    r, g, b = 255, int(255 - 170 * s), int(255 - 230 * s)
    return f"#{r:02x}{g:02x}{b:02x}"


def _axes(w: int, h: int, pad: int, xlabel: str, ylabel: str) -> list[str]:
    out = [f'<line x1="{pad}" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="#333"/>',
           f'<line x1="{pad}" y1="10" x2="{pad}" y2="{h - pad}" stroke="#333"/>',
           f'<text x="{(w + pad) / 2}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>',
           f'<text x="14" y="{(h - pad) / 2}" text-anchor="middle" '
           f'transform="rotate(-90 14 {(h - pad) / 2})">{escape(ylabel)}</text>']
    for t in (0.0, 0.5, 1.0):
        x = pad + t * (w - 10 - pad)
        y = (h - pad) - t * (h - pad - 10)
        out += [f'<text x="{x:.1f}" y="{h - pad + 14}" text-anchor="middle">{t:g}</text>',
                f'<text x="{pad - 4}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>']
    return out


def unit_plot(points: Sequence[tuple[float, float]], xlabel: str, ylabel: str, *,
              diagonal: bool = False, bars: Sequence[tuple[float, float, float]] = (),
              marker: float | None = None, title: str = "", css_id: str = "") -> str:
    """A plot on [0, 1]²: a step line through `points`, optional bars (lo, hi, height), the
    diagonal, and a vertical marker (e.g. the coverage at the chosen threshold)."""
    w, h, pad = 360, 260, 44
    sx = lambda x: pad + x * (w - 10 - pad)  # noqa: E731
    sy = lambda y: (h - pad) - y * (h - pad - 10)  # noqa: E731
    out = [f'<svg class="plot" id="{css_id}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'role="img" aria-label="{escape(title)}">'] + _axes(w, h, pad, xlabel, ylabel)
    if diagonal:
        out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(1)}" y2="{sy(1)}" stroke="#999" '
                   'stroke-dasharray="4 3"/>')
    for lo, hi, y in bars:
        out.append(f'<rect x="{sx(lo):.1f}" y="{sy(y):.1f}" width="{sx(hi) - sx(lo) - 1:.1f}" '
                   f'height="{sy(0) - sy(y):.1f}" fill="#4e79a7" opacity="0.75"/>')
    if points:
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                        for i, (x, y) in enumerate(points))
        out.append(f'<path d="{path}" fill="none" stroke="{ATTRIBUTED}" stroke-width="2"/>')
    if marker is not None:
        out.append(f'<line x1="{sx(marker):.1f}" y1="10" x2="{sx(marker):.1f}" y2="{sy(0)}" '
                   'stroke="#333" stroke-dasharray="2 2"/>')
    return "\n".join(out + ["</svg>"])


def histogram(values: Sequence[float], xlabel: str, bins: int = 20, css_id: str = "") -> str:
    w, h, pad = 360, 200, 44
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    top = max(int(counts.max()), 1)
    bw = (w - 10 - pad) / bins
    out = [f'<svg class="plot" id="{css_id}" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           f'role="img" aria-label="{escape(xlabel)}">',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="#333"/>',
           f'<text x="{(w + pad) / 2}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>',
           f'<text x="{pad}" y="{h - pad + 14}" text-anchor="middle">{edges[0]:,.0f}</text>',
           f'<text x="{w - 10}" y="{h - pad + 14}" text-anchor="end">{edges[-1]:,.0f}</text>',
           f'<text x="{pad - 4}" y="16" text-anchor="end">{top}</text>']
    for i, c in enumerate(counts):
        bh = (h - pad - 14) * c / top
        out.append(f'<rect x="{pad + i * bw:.1f}" y="{h - pad - bh:.1f}" width="{bw - 1:.1f}" '
                   f'height="{bh:.1f}" fill="#4e79a7"><title>{edges[i]:,.0f}–{edges[i + 1]:,.0f}'
                   f': {c}</title></rect>')
    return "\n".join(out + ["</svg>"])


def timeline(agents: Sequence[str], step_agents: Sequence[int], scores: dict[int, float],
             texts: Sequence[str], attributed: int | None, label: int | None,
             highlight_agents: set[str]) -> str:
    """Steps left to right, one lane per agent; colour = the coarse stage's step score. The
    attributed step is outlined in red, the labelled one marked below. Click a step to read it."""
    cw, lh, left = 16, 24, 150
    w, h = left + cw * len(step_agents) + 20, 30 + lh * len(agents) + 24
    out = [f'<svg id="timeline" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           'aria-label="step timeline">']
    for i, a in enumerate(agents):
        y = 20 + i * lh
        if a in highlight_agents:
            out.append(f'<rect x="0" y="{y}" width="{w}" height="{lh}" fill="#fff4e0"/>')
        out.append(f'<text x="{left - 8}" y="{y + lh / 2 + 4}" text-anchor="end" '
                   f'class="lane">{escape(a[:22])}</text>')
    for s in range(0, len(step_agents), 5 if len(step_agents) <= 60 else 10):
        out.append(f'<text x="{left + s * cw + cw / 2}" y="14" text-anchor="middle" '
                   f'class="tick">{s}</text>')
    for s, a in enumerate(step_agents):
        x, y = left + s * cw, 20 + a * lh
        cls = "step-cell attributed" if s == attributed else "step-cell"
        stroke = (f'stroke="{ATTRIBUTED}" stroke-width="3"' if s == attributed
                  else 'stroke="#777" stroke-width="0.5"')
        extra = ' id="attributed-step"' if s == attributed else ""
        sc = scores.get(s)
        tip = f"step {s} · {agents[a]} · score {'-' if sc is None else f'{sc:.3f}'}\n{texts[s]}"
        out.append(f'<rect{extra} class="{cls}" data-step="{s}" x="{x + 1}" y="{y + 3}" '
                   f'width="{cw - 2}" height="{lh - 6}" fill="{heat(sc)}" {stroke}>'
                   f'<title>{escape(tip)}</title></rect>')
    if label is not None and 0 <= label < len(step_agents):
        x = left + label * cw + cw / 2
        y = 20 + lh * len(agents) + 4
        out.append(f'<path id="label-step" d="M{x},{y} l-5,9 l10,0 z" fill="{LABEL}">'
                   f'<title>labelled decisive step {label}</title></path>')
    return "\n".join(out + ["</svg>"])


def dhcg_drawing(entities: Sequence[tuple[str, str]], node_type: Sequence[str],
                 node_step: Sequence[int], node_entity: Sequence[int],
                 edges: Sequence[tuple[int, int, str]], n_steps: int, attributed_node: int | None,
                 highlight_agents: set[str], max_artifacts: int = 14) -> str:
    """The DHCG unrolled in time: one row per entity (agents, tools, artifacts, environment),
    one column per step, a dot per state; edges coloured by type. Artifacts beyond the
    `max_artifacts` most connected are left out (the count is printed)."""
    degree = np.zeros(len(entities), int)
    for s, r, _ in edges:
        degree[node_entity[s]] += 1
        degree[node_entity[r]] += 1
    order = {"agent": 0, "tool": 1, "artifact": 2, "environment": 3}
    arts = sorted((e for e, (k, _) in enumerate(entities) if k == "artifact"),
                  key=lambda e: -degree[e])
    dropped = set(arts[max_artifacts:])
    rows = sorted((e for e in range(len(entities)) if e not in dropped),
                  key=lambda e: (order[entities[e][0]], e))
    row_of = {e: i for i, e in enumerate(rows)}
    cw, lh, left = 16, 20, 190
    w, h = left + cw * n_steps + 20, 24 + lh * len(rows) + 10
    pos = {}
    for n, (st, e) in enumerate(zip(node_step, node_entity)):
        if e in row_of:
            pos[n] = (left + st * cw + cw / 2, 24 + row_of[e] * lh + lh / 2)
    out = [f'<svg id="dhcg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           'aria-label="dynamic heterogeneous causal graph">']
    for e, i in row_of.items():
        kind, name = entities[e]
        y = 24 + i * lh
        if kind == "agent" and name in highlight_agents:
            out.append(f'<rect x="0" y="{y}" width="{w}" height="{lh}" fill="#fff4e0"/>')
        out.append(f'<text x="{left - 8}" y="{y + lh / 2 + 4}" text-anchor="end" class="lane" '
                   f'fill="{NODE_COLOURS[kind]}">{escape(kind)} · {escape(name[:20])}</text>')
    for s, r, kind in edges:
        if s in pos and r in pos:
            (x1, y1), (x2, y2) = pos[s], pos[r]
            bend = 0 if y1 == y2 else (x2 - x1) / 2 + 6
            width = 0.8 if kind == "temporal" else 1.3
            out.append(f'<path class="edge edge-{kind}" d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},'
                       f'{y1:.1f} {x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" fill="none" '
                       f'stroke="{EDGE_COLOURS[kind]}" stroke-width="{width}" opacity="0.8"/>')
    for n, (x, y) in pos.items():
        kind = node_type[n]
        name = entities[node_entity[n]][1]
        ring = (f' stroke="{ATTRIBUTED}" stroke-width="3" id="attributed-node"'
                if n == attributed_node else ' stroke="#fff" stroke-width="0.8"')
        tip = escape(f"{kind} {name} at step {node_step[n]}")
        if kind == "tool":
            tag, geo = "rect", f'x="{x - 4}" y="{y - 4}" width="8" height="8"'
        elif kind == "artifact":
            tag, geo = "path", f'd="M{x},{y - 5} l5,5 l-5,5 l-5,-5 z"'
        elif kind == "environment":
            tag, geo = "path", f'd="M{x},{y - 5} l5,9 l-10,0 z"'
        else:
            tag, geo = "circle", f'cx="{x}" cy="{y}" r="{6 if n == attributed_node else 4}"'
        out.append(f'<{tag} {geo} class="node node-{kind}" fill="{NODE_COLOURS[kind]}"{ring}>'
                   f'<title>{tip}</title></{tag}>')
    out.append("</svg>")
    if dropped:
        out.append(f'<p class="note">{len(dropped)} less-connected artifacts not drawn.</p>')
    return "\n".join(out)


def legend() -> str:
    nodes = " ".join(f'<span class="key" style="color:{c}">● {k}</span>'
                     for k, c in NODE_COLOURS.items())
    edges = " ".join(f'<span class="key" style="color:{c}">— {k}</span>'
                     for k, c in EDGE_COLOURS.items())
    return f'<p class="legend">nodes: {nodes}<br>edges: {edges}</p>'
