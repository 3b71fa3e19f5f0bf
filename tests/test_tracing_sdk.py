"""The SDK side of tracing with the SDK's in-memory exporter: store spans, the bounded queue, log ids."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace", reason="the tracing extra is not installed: pip install -e '.[tracing]'")

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from osnova_server import logs
from osnova_server.config import TracingSection
from osnova_server.store import Store
from osnova_server.tracing_sdk import SdkTracing, traces_url

_LOGGER = logging.getLogger(__name__)


@pytest.fixture
def memory() -> Iterator[tuple[SdkTracing, InMemorySpanExporter]]:
    """A tracer that keeps every span in memory."""
    exporter = InMemorySpanExporter()
    tracing = SdkTracing(TracingSection(enabled=True), exporter=exporter)
    yield tracing, exporter
    tracing._provider.shutdown()
    logs.set_trace_ids(None)


def finished(tracing: SdkTracing, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """Flush the batch processor and return what it exported."""
    assert tracing._provider.force_flush(5000)
    return list(exporter.get_finished_spans())


async def test_every_statement_is_a_span_named_for_verb_and_table_without_values(
    memory: tuple[SdkTracing, InMemorySpanExporter], tmp_path: Path,
) -> None:
    tracing, exporter = memory
    store = await Store.open(tmp_path, tracing=tracing)
    try:
        with tracing.span("settings.put"):
            await store.put_setting("advertised_address", "https://VALUE-NEVER-EXPORTED.example")
            assert await store.setting("advertised_address") == "https://VALUE-NEVER-EXPORTED.example"
    finally:
        await store.close()
    spans = finished(tracing, exporter)
    names = [span.name for span in spans]
    assert "schema_version" in names and "migrate" in names  # opening a new database
    assert "SELECT apps" in names and "SELECT devices" in names  # and reading the caches

    def children(parent: ReadableSpan) -> list[str]:
        return [span.name for span in spans if span.parent is not None and span.parent.span_id == parent.context.span_id]

    put = next(span for span in spans if span.name == "settings.put")
    assert children(put) == ["transaction", "SELECT settings"]
    transaction = next(span for span in spans if span.name == "transaction" and span.parent == put.context)
    assert children(transaction) == ["INSERT settings"]
    for span in spans:
        assert "VALUE-NEVER-EXPORTED" not in json.dumps(dict(span.attributes or {}))
        assert span.kind.name == "CLIENT" or span.name == "settings.put"


async def test_an_exception_marks_the_span_failed_by_type_only(
    memory: tuple[SdkTracing, InMemorySpanExporter],
) -> None:
    tracing, exporter = memory
    with pytest.raises(ValueError), tracing.span("work"):
        raise ValueError("secret detail")
    (span,) = finished(tracing, exporter)
    assert span.status.status_code.name == "ERROR"
    assert span.status.description == "ValueError"
    assert span.events == ()


class StuckExporter(SpanExporter):
    """An exporter that blocks like a collector that never answers, until released."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.batches: list[int] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        self.batches.append(len(spans))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_a_stuck_collector_never_blocks_a_span_and_drops_are_counted() -> None:
    exporter = StuckExporter()
    tracing = SdkTracing(TracingSection(enabled=True), exporter=exporter, max_queued=4)
    try:
        started = time.perf_counter()
        for index in range(40):
            with tracing.span(f"call {index}"):
                pass
        elapsed = time.perf_counter() - started
        # Loose: 40 spans take microseconds each; waiting on the exporter would take 30 s.
        assert elapsed < 5.0
        # At most 4 queued plus one batch of 4 in the exporter's hands: the rest were refused.
        assert tracing.dropped["queue_full"] >= 40 - 8
    finally:
        exporter.release.set()
        tracing._provider.shutdown()
        logs.set_trace_ids(None)
    assert sum(exporter.batches) + tracing.dropped["queue_full"] == 40


class RefusingExporter(SpanExporter):
    """A collector that answers every export with an error."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def test_batches_the_collector_refused_are_counted() -> None:
    tracing = SdkTracing(TracingSection(enabled=True), exporter=RefusingExporter())
    try:
        for index in range(7):
            with tracing.span(f"call {index}"):
                pass
        tracing._provider.force_flush(5000)
        assert dict(tracing.dropped) == {"queue_full": 0, "export_failed": 7}
    finally:
        tracing._provider.shutdown()
        logs.set_trace_ids(None)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_lines_inside_a_span_carry_its_ids(
    memory: tuple[SdkTracing, InMemorySpanExporter], tmp_path: Path, fmt: str,
) -> None:
    tracing, _ = memory
    path = tmp_path / "server.log"
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    handle = logs.setup_logging("info", fmt, str(path))
    try:
        with tracing.span("outer") as span:
            _LOGGER.info("inside the span")
        _LOGGER.info("outside any span")
    finally:
        handle.stop()
        root.setLevel(level)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
    context = span.get_span_context()  # type: ignore[attr-defined]
    trace_id, span_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"
    inside, outside = path.read_text(encoding="utf-8").splitlines()[-2:]
    if fmt == "json":
        inside_line: dict[str, Any] = json.loads(inside)
        assert (inside_line["trace_id"], inside_line["span_id"]) == (trace_id, span_id)
        assert "trace_id" not in json.loads(outside)
    else:
        assert f"trace_id={trace_id} span_id={span_id}" in inside
        assert "trace_id=" not in outside


def test_the_endpoint_gets_the_traces_path_unless_it_has_one() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("https://otel.example/custom/traces") == "https://otel.example/custom/traces"
