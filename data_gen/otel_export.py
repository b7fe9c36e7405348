"""An OpenTelemetry span exporter that writes OTLP JSON lines, for runs recorded without a
Collector. Needs the `otel` extra (`pip install '.[otel]'`); nothing else in the project imports it.

Each export appends one line `{"resourceSpans": [...]}`, as a Collector's file exporter does:
the spans are encoded by OpenTelemetry's own OTLP encoder, then written in OTLP's JSON mapping
(hex trace and span ids, integer enums).

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OtlpJsonLinesExporter("run.otlp.jsonl")))
"""
from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any, Sequence

from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def otlp_json(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """Finished spans as one OTLP JSON object (an ExportTraceServiceRequest)."""
    return _hex_ids(MessageToDict(encode_spans(spans), use_integers_for_enums=True))


def _hex_ids(obj: Any) -> Any:
    """protobuf's JSON mapping writes bytes as base64; OTLP JSON writes ids as hex."""
    if isinstance(obj, dict):
        return {k: base64.b64decode(v).hex() if k in _ID_KEYS and isinstance(v, str)
                else _hex_ids(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_hex_ids(v) for v in obj]
    return obj


class OtlpJsonLinesExporter(SpanExporter):
    """Appends every batch of finished spans to `path` as one OTLP JSON line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        line = json.dumps(otlp_json(spans), ensure_ascii=False)
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        return SpanExportResult.SUCCESS
