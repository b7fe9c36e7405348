"""The shell of every HTML report page (astra_eval.html_report): its CSS, its script, the page
around a body, and the small pieces of markup the pages share (`Markup`, tables, data for the
script, file names).

The script opens and scrolls to a step when a row naming it is clicked, filters the run page's
trace table, scrolls long traces sideways to the attributed step, and keeps and saves a person's
labels: a mark is kept in the browser's localStorage under the trace's file and id, and saved as
an `astra.labels/v1` JSONL download (data_gen/labels.py). Errors in it land in `data-errors`, so
a headless check can read them.
"""
from __future__ import annotations

import json
import re
import zlib
from html import escape
from typing import Any, Iterable

from astra_eval.markdown import cell

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#1f2937;color:#fff;padding:14px 24px}header a{color:#9cc3ff}
main{padding:16px 24px;max-width:1400px}h2{margin-top:28px;border-bottom:1px solid #ddd}
.verdict{background:#fff;border:2px solid #d62728;border-radius:8px;padding:12px 16px}
.verdict.unsure{border-color:#999}.big{font-size:20px;font-weight:600}
.ok{color:#1a7f37;font-weight:600}.bad{color:#c62828;font-weight:600}
.scroll{overflow-x:auto;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:3px 8px}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0}
.bar{display:inline-block;height:12px;background:#f28e2b;vertical-align:middle}
.step{background:#fff;border:1px solid #ddd;border-radius:6px;margin:6px 0;padding:6px 10px}
.step.attributed{border:3px solid #d62728}.step.label{box-shadow:0 0 0 2px #111 inset}
.step.flash{outline:3px solid #4e79a7}.step pre{white-space:pre-wrap;margin:4px 0;
font:12px/1.4 ui-monospace,monospace;max-height:420px;overflow:auto}
.step-cell{cursor:pointer}.lane,.tick{font-size:11px}svg text{font-size:11px}
.note{color:#666}.legend .key{margin-right:12px}.plots{display:flex;gap:24px;flex-wrap:wrap}
#filter{padding:4px 8px;width:320px}.cm td{text-align:right}
.labelling{background:#fff;border:1px solid #4e79a7;border-radius:8px;padding:8px 16px;
margin-top:12px}.labelling input{padding:3px 6px;margin-right:12px}
.step.marked{box-shadow:0 0 0 3px #4e79a7 inset}.mark-step{float:right;font-size:12px}
button{cursor:pointer}
"""

# Errors in the page's own script land in data-errors, so a headless check can read them.
SCRIPT = """
window.addEventListener('error', function (e) {
  var b = document.body, prev = b.getAttribute('data-errors') || '';
  b.setAttribute('data-errors', prev + (e.message || 'error') + ';');
});
function showStep(i) {
  var el = document.getElementById('step-' + i);
  if (!el) { return; }
  if (el.tagName === 'DETAILS') { el.open = true; }
  el.scrollIntoView({block: 'center'});
  el.classList.add('flash');
  setTimeout(function () { el.classList.remove('flash'); }, 1200);
}
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('[data-step]').forEach(function (r) {
    r.addEventListener('click', function () { showStep(r.getAttribute('data-step')); });
  });
  var f = document.getElementById('filter');
  if (f) {
    f.addEventListener('input', function () {
      var q = f.value.toLowerCase();
      document.querySelectorAll('#traces tbody tr').forEach(function (tr) {
        tr.style.display = tr.textContent.toLowerCase().indexOf(q) >= 0 ? '' : 'none';
      });
    });
  }
  // long traces: scroll the timeline and the graph sideways to the attributed step
  ['attributed-step', 'attributed-node'].forEach(function (id) {
    var el = document.getElementById(id), box = el && el.closest('.scroll');
    if (box) {
      var x = el.getBoundingClientRect().left - box.getBoundingClientRect().left + box.scrollLeft;
      box.scrollLeft = Math.max(0, x - box.clientWidth / 2);
    }
  });
  var a = document.getElementById('attributed-step');
  document.body.setAttribute('data-highlighted', a ? a.getAttribute('data-step') : '');
  if (a) {
    var r = a.getBoundingClientRect();
    document.body.setAttribute('data-highlight-box', [r.left + window.scrollX,
      r.top + window.scrollY, r.width, r.height].map(Math.round).join(','));
  }
  setupLabelling();
  document.body.setAttribute('data-ready', '1');
});
""" + """
// --- labelling: marks in localStorage, saved as astra.labels/v1 JSONL ---
var LABELS_SCHEMA = 'astra.labels/v1', memoryStore = {};
function store() {
  try { var s = window.localStorage; s.getItem('x'); return s; } catch (e) { return null; }
}
function markKey(t) { return LABELS_SCHEMA + '|' + (t.source || '') + '|' + t.trace_id; }
function getMark(t) {
  var s = store(), raw = s ? s.getItem(markKey(t)) : memoryStore[markKey(t)];
  try { return raw ? JSON.parse(raw) : null; } catch (e) { return null; }
}
function putMark(t, mark) {
  var s = store(), k = markKey(t), raw = mark ? JSON.stringify(mark) : null;
  if (s) { if (raw) { s.setItem(k, raw); } else { s.removeItem(k); } }
  else if (raw) { memoryStore[k] = raw; } else { delete memoryStore[k]; }
}
function labeller() {
  var s = store(); return (s && s.getItem(LABELS_SCHEMA + '|labelled_by')) || '';
}
function newMark(t, fields) {
  var m = {schema: LABELS_SCHEMA, trace_id: t.trace_id};
  if (t.source) { m.source = t.source; }
  for (var k in fields) { m[k] = fields[k]; }
  var by = labeller();
  if (by) { m.labelled_by = by; }
  m.at = new Date().toISOString();
  return m;
}
function markText(m) {
  if (!m) { return 'none'; }
  return m.failed === false ? 'this run did not fail' : m.agent + ' at step ' + m.step;
}
function download(name, lines) {
  var blob = new Blob([lines.map(function (m) { return JSON.stringify(m) + '\\n'; }).join('')],
                      {type: 'application/x-ndjson'});
  var a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
}
function jsonData(id) {
  var el = document.getElementById(id);
  return el ? JSON.parse(el.textContent) : null;
}
function setupLabelling() {
  var t = jsonData('label-trace'), run = jsonData('label-run');
  var by = document.getElementById('mark-by');
  if (by) {
    by.value = labeller();
    by.addEventListener('input', function () {
      var s = store();
      if (s) { s.setItem(LABELS_SCHEMA + '|labelled_by', by.value.trim()); }
    });
  }
  var note = document.getElementById('store-note');
  if (note && !store()) {
    note.textContent = 'This browser keeps no marks for files opened from disk: save before ' +
                       'leaving the page.';
  }
  if (t) { setupTracePage(t); }
  if (run) { setupRunPage(run); }
}
function setupTracePage(t) {
  var reason = document.getElementById('mark-reason');
  function show() {
    var m = getMark(t);
    document.getElementById('mark-text').textContent = markText(m);
    document.querySelectorAll('.step.marked').forEach(function (el) {
      el.classList.remove('marked');
    });
    if (m && m.failed !== false) {
      var el = document.getElementById('step-' + m.step);
      if (el) { el.classList.add('marked'); }
    }
    document.body.setAttribute('data-mark', m ? (m.failed === false ? 'not-failed'
                                                 : m.agent + '@' + m.step) : '');
  }
  function mark(fields) {
    var r = reason.value.trim();
    if (r) { fields.reason = r; }
    putMark(t, newMark(t, fields));
    show();
  }
  var m = getMark(t);
  if (m && m.reason) { reason.value = m.reason; }
  document.querySelectorAll('[data-mark-step]').forEach(function (b) {
    b.addEventListener('click', function (e) {
      e.stopPropagation();
      mark({failed: true, agent: b.getAttribute('data-mark-agent'),
            step: parseInt(b.getAttribute('data-mark-step'), 10)});
    });
  });
  document.getElementById('mark-not-failed').addEventListener('click', function () {
    mark({failed: false});
  });
  document.getElementById('mark-clear').addEventListener('click', function () {
    putMark(t, null); show();
  });
  reason.addEventListener('change', function () {
    var old = getMark(t);
    if (old) {
      var r = reason.value.trim();
      if (r) { old.reason = r; } else { delete old.reason; }
      putMark(t, old);
    }
  });
  document.getElementById('mark-save').addEventListener('click', function () {
    var m = getMark(t), status = document.getElementById('save-status');
    if (!m) { status.textContent = 'nothing marked yet'; return; }
    download(t.file, [m]);
    status.textContent = 'saved ' + t.file;
  });
  show();
}
function setupRunPage(run) {
  function show() {
    var marks = [], body = document.querySelector('#marked tbody');
    body.textContent = '';
    run.traces.forEach(function (t) {
      var m = getMark(t);
      if (!m) { return; }
      marks.push(m);
      var tr = document.createElement('tr');
      [t.trace_id, markText(m), m.reason || '', m.labelled_by || ''].forEach(function (x) {
        var td = document.createElement('td'); td.textContent = x; tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    var left = 0;
    document.querySelectorAll('#to-label tbody tr').forEach(function (tr) {
      var t = run.traces[parseInt(tr.getAttribute('data-trace'), 10)];
      var done = getMark(t) !== null;
      tr.style.display = done ? 'none' : '';
      if (!done) { left += 1; }
    });
    document.getElementById('marked').style.display = marks.length ? '' : 'none';
    document.getElementById('marks-count').textContent = marks.length;
    document.getElementById('to-label-count').textContent = left;
    document.body.setAttribute('data-marks', marks.length);
    return marks;
  }
  document.getElementById('mark-save-all').addEventListener('click', function () {
    var marks = show(), status = document.getElementById('save-status');
    if (!marks.length) { status.textContent = 'nothing marked yet'; return; }
    download(run.file, marks);
    status.textContent = 'saved ' + marks.length + ' label(s) as ' + run.file;
  });
  window.addEventListener('focus', show);  // marks made in another tab
  show();
}
"""


def page(title: str, body: str, back: str | None = None) -> str:
    nav = f' · <a href="{escape(back)}">run report</a>' if back else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>'
            f'<header><b>ASTRA-JAX</b> · {escape(title)}{nav}</header><main>\n{body}\n</main>'
            f'<script>{SCRIPT}</script></body></html>\n')


def page_name(trace_id: str) -> str:
    """A file name for a trace id: safe on every file system, distinct for distinct ids."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", trace_id)[:80]
    return f"{safe}-{zlib.crc32(trace_id.encode('utf-8')):08x}.html"


class Markup(str):
    """A string already made safe for HTML."""


def json_script(css_id: str, data: Any) -> str:
    """Data for the page's script; `<`, `>` and `&` are escaped so no log text ends the tag."""
    text = (json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
            .replace(">", "\\u003e").replace("&", "\\u0026"))
    return f'<script type="application/json" id="{css_id}">{text}</script>'


def html_table(headers: Iterable[str], rows: Iterable[Iterable[Any]], css_id: str = "") -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{cell(c)}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{c if isinstance(c, Markup) else escape(cell(c))}</td>" for c in r) + "</tr>"
        for r in rows)
    ident = f' id="{css_id}"' if css_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
