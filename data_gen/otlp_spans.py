"""OTLP JSON decoded into spans: the first half of reading OpenTelemetry traces
(`data_gen.otlp_read` makes traces of them).

Teams record multi-agent runs as OpenTelemetry spans, and a Collector's file exporter, or
`data_gen.otel_export`, writes them as OTLP JSON: objects `{"resourceSpans": [...]}`, one per
line or one per file. Each span is decoded into a `Span` (ids as lowercase hex, times in Unix
nanoseconds, attributes and event attributes as Python values), or a `BadSpan` naming the file,
line and field at fault.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, Iterator

from data_gen.files import RawRecord
from data_gen.trace import TraceError

SPAN_KEYS = ("span_id", "span_name", "start_unix_nano", "end_unix_nano")  # kept in Step.extra
_HEX = re.compile(r"^[0-9a-f]+$")
_STATUS = {0: None, 1: "ok", 2: "error", "STATUS_CODE_UNSET": None, "STATUS_CODE_OK": "ok",
           "STATUS_CODE_ERROR": "error"}


@dataclass(frozen=True)
class Span:
    """One span, decoded; `source`, `record` and `path` say where it was read."""
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start: int
    end: int
    attrs: dict[str, Any]
    events: tuple[tuple[str, dict[str, Any]], ...]
    links: tuple[str, ...]  # span ids in the same trace
    status: str | None  # "ok" | "error" | None
    status_message: str | None
    scope: str | None
    source: str
    record: int | None
    path: str
    raw: Any  # the span's JSON, to tell an exact duplicate from a conflicting one

    def error(self, message: str, key: str | None = None) -> TraceError:
        return TraceError(message, self.source, self.record,
                          self.path + (f".attributes[{key}]" if key else ""))


@dataclass(frozen=True)
class BadSpan:
    """A span that cannot be read; its trace (when its id could be read) is refused with it."""
    trace_id: str | None
    error: TraceError


def is_otlp(d: Any) -> bool:
    return isinstance(d, dict) and "resourceSpans" in d


def any_value(v: Any, where: str) -> Any:
    """An OTLP AnyValue as a Python value: str, bool, int, float, list or dict."""
    if not isinstance(v, dict) or len(v) > 1:
        raise TraceError("expected an AnyValue object with one key", field=where)
    if not v:
        return None
    (kind, x), = v.items()
    if kind in ("stringValue", "bytesValue") and isinstance(x, str):
        return x
    if kind == "boolValue" and isinstance(x, bool):
        return x
    if kind == "intValue" and isinstance(x, (int, str)) and not isinstance(x, bool):
        try:
            return int(x)
        except ValueError:
            raise TraceError(f"{x!r} is not an integer", field=where) from None
    if kind == "doubleValue" and isinstance(x, (int, float, str)) and not isinstance(x, bool):
        try:
            return float(x)
        except ValueError:
            raise TraceError(f"{x!r} is not a number", field=where) from None
    if kind == "arrayValue" and isinstance(x, dict):
        return [any_value(e, f"{where}[{i}]") for i, e in enumerate(_list(x, "values", where))]
    if kind == "kvlistValue" and isinstance(x, dict):
        return key_values(_list(x, "values", where), where)
    raise TraceError(f"unknown or malformed AnyValue {kind!r}", field=where)


def key_values(items: Any, where: str) -> dict[str, Any]:
    if not isinstance(items, list):
        raise TraceError(f"expected a list, got {type(items).__name__}", field=where)
    out = {}
    for i, kv in enumerate(items):
        if not isinstance(kv, dict) or not isinstance(kv.get("key"), str):
            raise TraceError("expected {key, value}", field=f"{where}[{i}]")
        out[kv["key"]] = any_value(kv.get("value", {}), f"{where}[{kv['key']}]")
    return out


def _list(d: dict, key: str, where: str) -> list:
    v = d.get(key, [])
    if not isinstance(v, list):
        raise TraceError(f"expected a list, got {type(v).__name__}", field=f"{where}.{key}")
    return v


def otlp_id(v: Any, n_bytes: int, where: str) -> str:
    """A trace or span id as lowercase hex. OTLP JSON writes hex; protobuf's own JSON mapping
    writes base64, which is accepted too (the lengths differ, so the two never clash)."""
    if not isinstance(v, str) or not v:
        raise TraceError("missing or not a string", field=where)
    if len(v) == 2 * n_bytes and _HEX.match(v.lower()):
        return v.lower()
    try:
        raw = base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != n_bytes:
        raise TraceError(f"{v[:40]!r} is not a {n_bytes}-byte id in hex", field=where)
    return raw.hex()


def _nanos(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise TraceError("expected a time in Unix nanoseconds", field=where)
    try:
        return int(v)
    except ValueError:
        raise TraceError(f"{v!r} is not a time in Unix nanoseconds", field=where) from None


def decode_span(d: Any, scope: str | None, raw: RawRecord, path: str) -> Span | BadSpan:
    """One OTLP span, or the error that names the file, line and field at fault."""
    def bad(msg: str, fld: str, trace_id: str | None = None) -> BadSpan:
        return BadSpan(trace_id, TraceError(msg, raw.source, raw.record,
                                            f"{path}.{fld}" if fld else path))
    if not isinstance(d, dict):
        return bad(f"expected a span object, got {type(d).__name__}", "")
    try:
        trace_id = otlp_id(d.get("traceId"), 16, "traceId")
    except TraceError as e:
        return bad(e.message, e.field or "")
    try:
        span_id = otlp_id(d.get("spanId"), 8, "spanId")
        parent = d.get("parentSpanId") or None
        parent_id = otlp_id(parent, 8, "parentSpanId") if parent else None
        start = _nanos(d.get("startTimeUnixNano"), "startTimeUnixNano")
        end = _nanos(d.get("endTimeUnixNano", start), "endTimeUnixNano")
        attrs = key_values(d.get("attributes", []), "attributes")
        events = tuple((str(e.get("name", "")), key_values(e.get("attributes", []),
                                                            f"events[{i}].attributes"))
                       for i, e in enumerate(_list(d, "events", "")) if isinstance(e, dict))
        links = tuple(otlp_id(lk.get("spanId"), 8, f"links[{i}].spanId")
                      for i, lk in enumerate(_list(d, "links", ""))
                      if isinstance(lk, dict) and lk.get("traceId") in (None, d.get("traceId")))
        status = d.get("status") or {}
        if not isinstance(status, dict):
            raise TraceError("expected an object", field="status")
        name = d.get("name", "")
        if not isinstance(name, str):
            raise TraceError(f"expected str, got {type(name).__name__}", field="name")
    except TraceError as e:
        return bad(e.message, e.field or "", trace_id)
    message, code = status.get("message"), status.get("code", 0)
    return Span(trace_id, span_id, parent_id, name, start, end, attrs, events, links,
                _STATUS.get(code) if isinstance(code, (int, str)) else None,
                message if isinstance(message, str) else None,
                scope, raw.source, raw.record, path, d)


def spans_of(raw: RawRecord) -> Iterator[Span | BadSpan | TraceError]:
    """Every span of one OTLP record; a bad span becomes a BadSpan, a bad record or resource a
    TraceError, and the rest are read."""
    try:
        resource_spans = _list(raw.data, "resourceSpans", "")
    except TraceError as e:
        yield e.located(raw.source, raw.record)
        return
    for i, rs in enumerate(resource_spans):
        p = f"resourceSpans[{i}]"
        if not isinstance(rs, dict) or not isinstance(rs.get("scopeSpans", []), list):
            yield TraceError("expected an object with a list 'scopeSpans'", raw.source,
                             raw.record, p)
            continue
        for j, ss in enumerate(rs.get("scopeSpans", [])):
            q = f"{p}.scopeSpans[{j}]"
            if not isinstance(ss, dict) or not isinstance(ss.get("spans", []), list):
                yield TraceError("expected an object with a list 'spans'", raw.source,
                                 raw.record, q)
                continue
            scope = ss.get("scope") if isinstance(ss.get("scope"), dict) else {}
            scope_name = scope.get("name") if isinstance(scope.get("name"), str) else None
            for k, d in enumerate(ss.get("spans", [])):
                yield decode_span(d, scope_name, raw, f"{q}.spans[{k}]")
