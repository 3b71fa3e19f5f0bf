"""The OpenTelemetry SDK behind `tracing.Tracing`: sampler, bounded batch export, OTLP/HTTP or the log.

Imported only when tracing is enabled (the `tracing` extra). Spans are handed to a
BatchSpanProcessor, whose thread batches and exports them; the event loop only appends to its
queue. The queue is bounded here, before the SDK's own bound, so that a span that cannot be kept
is counted (`queue_full`) rather than silently pushed out; a batch the collector did not take
after the exporter's retries is counted too (`export_failed`). No call ever waits on the collector.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from osnova_server import __version__, logs
from osnova_server.config import TracingSection
from osnova_server.tracing import AttributeValue, Span

_LOGGER = logging.getLogger(__name__)
# One line per span when there is no collector to send them to.
SPAN_LOGGER_NAME: Final = "osnova.trace"
_SPAN_LOGGER: Final = logging.getLogger(SPAN_LOGGER_NAME)

MAX_QUEUED_SPANS: Final = 2048
MAX_EXPORT_BATCH: Final = 512
EXPORT_DELAY_MILLIS: Final = 1000
# Per export request, retries included: the export thread, never a call, waits this long.
EXPORT_TIMEOUT_SECONDS: Final = 5.0
# At shutdown, what is queued gets this long to leave before the process goes on stopping.
SHUTDOWN_MILLIS: Final = 2000
TRACES_PATH: Final = "/v1/traces"
TRACEPARENT: Final = "traceparent"
# The parent of a span whose request carried no traceparent: a new trace.
_ROOT: Final = context_api.Context()

_KINDS: Final = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
}


def traces_url(endpoint: str) -> str:
    """The collector's OTLP/HTTP traces URL: `/v1/traces` is added to a URL without a path."""
    parts = urlsplit(endpoint)
    if parts.path in ("", "/"):
        return endpoint.rstrip("/") + TRACES_PATH
    return endpoint


class _CountingExporter(SpanExporter):
    """Hands batches to the real exporter and counts the spans it could not deliver."""

    def __init__(self, inner: SpanExporter, processor: BoundedSpanProcessor) -> None:
        self._inner = inner
        self._processor = processor

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Export one batch (on the processor's thread); count it lost if the collector refused."""
        self._processor.left_queue(len(spans))
        try:
            result = self._inner.export(spans)
        except Exception:  # an exporter bug must not kill the export thread
            _LOGGER.warning("exporting %d spans failed", len(spans), exc_info=True)
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self._processor.count_dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        """Stop the real exporter (interrupting its retries)."""
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Flush the real exporter."""
        return self._inner.force_flush(timeout_millis)


class BoundedSpanProcessor(BatchSpanProcessor):
    """A BatchSpanProcessor that refuses, and counts, spans beyond its queue bound."""

    def __init__(self, exporter: SpanExporter, max_queued: int = MAX_QUEUED_SPANS) -> None:
        self._lock = threading.Lock()
        self._queued = 0
        self._max_queued = max_queued
        self.dropped: dict[str, int] = {"queue_full": 0, "export_failed": 0}
        super().__init__(
            _CountingExporter(exporter, self),
            # One more than ours, so the SDK's own bound (which drops silently) is never reached.
            max_queue_size=max_queued + 1,
            schedule_delay_millis=EXPORT_DELAY_MILLIS,
            max_export_batch_size=min(MAX_EXPORT_BATCH, max_queued),
        )

    def on_end(self, span: ReadableSpan) -> None:
        """Queue a finished sampled span, or drop and count it when the queue is full."""
        if not span.context.trace_flags.sampled:
            return
        with self._lock:
            if self._queued >= self._max_queued:
                self.dropped["queue_full"] += 1
                return
            self._queued += 1
        super().on_end(span)

    def left_queue(self, count: int) -> None:
        """The export thread took `count` spans off the queue."""
        with self._lock:
            self._queued = max(0, self._queued - count)

    def count_dropped(self, reason: str, count: int) -> None:
        """Count spans lost for `reason`."""
        with self._lock:
            self.dropped[reason] += count

    def shutdown(self) -> None:
        """Export what is queued, giving up after SHUTDOWN_MILLIS."""
        self._batch_processor.shutdown(timeout_millis=SHUTDOWN_MILLIS)


class LogSpanExporter(SpanExporter):
    """With no `otlp_endpoint`: one INFO line per span on the `osnova.trace` logger."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Write each span as a log line with its ids, duration, status and attributes."""
        for span in spans:
            context = span.context
            parent = span.parent
            fields: dict[str, object] = {
                "trace_id": f"{context.trace_id:032x}",
                "span_id": f"{context.span_id:016x}",
                "parent_span_id": f"{parent.span_id:016x}" if parent is not None else None,
                "kind": span.kind.name.lower(),
                "duration_ms": round(((span.end_time or 0) - (span.start_time or 0)) / 1e6, 3),
                "status": span.status.status_code.name.lower(),
            }
            fields.update(dict(span.attributes or {}))
            _SPAN_LOGGER.info("span %s", span.name, extra={"fields": fields})
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


class _Scope:
    """Makes a span current for a `with` block and ends it; a class, as cheap as it gets per span."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def __enter__(self) -> trace.Span:
        self._token = context_api.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        context_api.detach(self._token)
        if kind is not None:
            self._span.set_status(Status(StatusCode.ERROR, kind.__name__))
        self._span.end()


class SdkTracing:
    """`tracing.Tracing` over the OpenTelemetry SDK: one TracerProvider per server."""

    __slots__ = ("_processor", "_propagator", "_provider", "_tracer", "endpoint")

    def __init__(self, settings: TracingSection, *, exporter: SpanExporter | None = None,
                 max_queued: int = MAX_QUEUED_SPANS) -> None:
        self.endpoint = traces_url(settings.otlp_endpoint) if settings.otlp_endpoint else ""
        if exporter is None:
            exporter = (
                OTLPSpanExporter(endpoint=self.endpoint, timeout=EXPORT_TIMEOUT_SECONDS)
                if self.endpoint else LogSpanExporter()
            )
        # A trace a client started is kept or dropped as the client decided; new ones by ratio.
        self._provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=Resource.create({"service.name": settings.service_name, "service.version": __version__}),
        )
        self._processor = BoundedSpanProcessor(exporter, max_queued)
        self._provider.add_span_processor(self._processor)
        self._tracer = self._provider.get_tracer("osnova_server", __version__)
        self._propagator = TraceContextTextMapPropagator()
        logs.set_trace_ids(current_ids)
        _LOGGER.info(
            "tracing on: sample ratio %g, spans to %s", settings.sample_ratio,
            self.endpoint or f"the log ({SPAN_LOGGER_NAME})",
        )

    @property
    def dropped(self) -> Mapping[str, int]:
        """Spans lost, by reason."""
        return self._processor.dropped

    def span(
        self, name: str, kind: str = "internal", attributes: Mapping[str, AttributeValue] | None = None,
    ) -> _Scope:
        """Open a child of the current span; an exception escaping marks it failed, by type only."""
        # start_span, not start_as_current_span: that one would copy the exception's message
        # (and traceback) into the span, and costs two generator-based context managers more.
        return _Scope(self._tracer.start_span(
            name, kind=_KINDS[kind], attributes=attributes, record_exception=False, set_status_on_exception=False,
        ))

    def server_span(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, AttributeValue],
    ) -> _Scope:
        """Open a SERVER span continuing the caller's `traceparent`, if it sent a valid one."""
        parent = self._propagator.extract(headers) if TRACEPARENT in headers else _ROOT
        return _Scope(self._tracer.start_span(
            name, context=parent, kind=SpanKind.SERVER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ))

    def current_span(self) -> Span:
        """The span open in this task."""
        return trace.get_current_span()

    def fail(self, span: Span, reason: str) -> None:
        """Mark the span failed."""
        if isinstance(span, SdkSpan):
            span.set_status(Status(StatusCode.ERROR, reason))

    def traceresponse(self, span: Span) -> str:
        """`00-<trace id>-<span id>-<flags>`, as W3C Trace Context level 2 spells it."""
        context = (span if isinstance(span, trace.Span) else trace.get_current_span()).get_span_context()
        return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"

    async def shutdown(self) -> None:
        """Flush and stop off the event loop (the exporter blocks on the network)."""
        logs.set_trace_ids(None)
        await asyncio.to_thread(self._provider.shutdown)


def current_ids() -> tuple[str, str] | None:
    """The trace and span id of the span open where a log record is made, if any."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
