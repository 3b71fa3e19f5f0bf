"""OpenTelemetry traces from the optional `tracing` extra: what the rest of the server sees of them.

Nothing here imports OpenTelemetry. `start_tracing` loads the SDK (from `tracing_sdk`) only when
`[tracing] enabled = true`, so a server without tracing never imports it and pays one `is None`
test at each place a span would open: the HTTP middleware, the dispatcher, the store's one
statement choke point and the manifest fetch.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol

from osnova_server.logs import current_trace_ids
from osnova_server.rpc.context import Context
from osnova_server.rpc.protocol import UNKNOWN_METHOD, CallObserver, Dispatcher, Envelope, Finished
from osnova_server.rpc.registry import Registry

if TYPE_CHECKING:
    from osnova_server.config import TracingSection

_LOGGER = logging.getLogger(__name__)

EXTRA_MISSING: Final = (
    "[tracing] enabled = true needs the tracing extra: "
    "pip install 'osnova-server[tracing]', or set [tracing] enabled = false"
)
# What the extra must provide; looked up without being imported.
_EXTRA_MODULES: Final = (
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)
INVALID_REQUEST_LABEL: Final = "(invalid)"

AttributeValue = str | int | float | bool


class Span(Protocol):
    """What instrumented code does with an open span: add facts, mark a failure."""

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        """Record one fact; never a secret, a parameter or a query string."""

    def is_recording(self) -> bool:
        """False when the trace is not sampled: attributes would be thrown away."""


class Tracing(Protocol):
    """The running tracer of one server (`tracing_sdk.SdkTracing`)."""

    @property
    def dropped(self) -> Mapping[str, int]:
        """Spans lost, by reason (`queue_full`, `export_failed`)."""

    def span(
        self, name: str, kind: str = "internal", attributes: Mapping[str, AttributeValue] | None = None,
    ) -> AbstractContextManager[Span]:
        """Open a child of the current span for the `with` block; a failure escaping marks it."""

    def server_span(
        self, name: str, headers: Mapping[str, str], attributes: Mapping[str, AttributeValue],
    ) -> AbstractContextManager[Span]:
        """Open the span of an incoming request, continuing the trace of its `traceparent`."""

    def current_span(self) -> Span:
        """The span open in this task (a non-recording one outside any)."""

    def fail(self, span: Span, reason: str) -> None:
        """Mark `span` as failed, with a short reason that holds no client data."""

    def traceresponse(self, span: Span) -> str:
        """The W3C `traceresponse` header value naming `span`."""

    async def shutdown(self) -> None:
        """Export what is queued (bounded in time) and stop the export thread."""


_STATEMENT_TABLE: Final = re.compile(r"\b(?:FROM|INTO|UPDATE|TABLE|ON)\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_PRAGMA: Final = re.compile(r"PRAGMA\s+([A-Za-z_]+)", re.IGNORECASE)


@functools.lru_cache(maxsize=256)
def statement_name(sql: str) -> str:
    """A statement's name for its span: verb and table (`UPDATE devices`), never a value.

    The store's statements are constants with `?` placeholders, so the cache holds each once.
    """
    words = sql.split(None, 1)
    verb = words[0].upper() if words else "SQL"
    if verb == "PRAGMA":
        pragma = _PRAGMA.match(sql)
        return f"PRAGMA {pragma.group(1).lower()}" if pragma else verb
    table = _STATEMENT_TABLE.search(sql)
    return f"{verb} {table.group(1)}" if table else verb


def extra_installed() -> bool:
    """Whether the `tracing` extra is installed (imports only the `opentelemetry` namespace)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in _EXTRA_MODULES)
    except ImportError:
        return False


def start_tracing(settings: TracingSection) -> Tracing:
    """Load the SDK and start exporting; the config check has already said the extra is there."""
    from osnova_server import tracing_sdk  # here, not at the top: the extra is optional

    return tracing_sdk.SdkTracing(settings)


def make_dispatcher(registry: Registry, observe: CallObserver | None, tracing: Tracing | None) -> Dispatcher:
    """The plain dispatcher, or one that opens a span per call and per WebSocket message."""
    if tracing is None:
        return Dispatcher(registry, observe=observe)
    return TracedDispatcher(registry, observe, tracing)


def principal_kind(ctx: Context) -> str:
    """`admin`, `device` or `anonymous`: who called, without saying which device."""
    if ctx.claims is None:
        return "anonymous"
    return "admin" if ctx.is_admin else "device"


class TracedDispatcher(Dispatcher):
    """A Dispatcher whose every call is a span (method, outcome, principal kind; never params)."""

    __slots__ = ("_tracing",)

    def __init__(self, registry: Registry, observe: CallObserver | None, tracing: Tracing) -> None:
        super().__init__(registry, observe=observe)
        self._tracing = tracing

    async def respond(self, envelope: Envelope, ctx: Context, max_bytes: int) -> bytes | None:
        """On a WebSocket, one message is one span, with its calls as children."""
        if ctx.transport != "ws":
            return await super().respond(envelope, ctx, max_bytes)
        attributes: dict[str, AttributeValue] = {"osnova.ws.batch": envelope.is_batch}
        with self._tracing.span("ws.message", "server", attributes):
            return await super().respond(envelope, ctx, max_bytes)

    async def _call(self, member: Any, ctx: Context, finished: Finished) -> dict[str, Any] | None:
        """Run one call inside its own span, named after the method (a bounded set of names)."""
        name = member.get("method") if type(member) is dict else None
        if not isinstance(name, str):
            label = INVALID_REQUEST_LABEL
        else:
            label = name if self.registry.get(name) is not None else UNKNOWN_METHOD
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "jsonrpc",
            "rpc.method": label,
            "osnova.principal.kind": principal_kind(ctx),
            "osnova.transport": ctx.transport,
        }
        with self._tracing.span(label, "internal", attributes) as span:
            if label == INVALID_REQUEST_LABEL:
                span.set_attribute("osnova.rpc.outcome", "invalid_request")
            return await super()._call(member, ctx, finished)

    def _finish(self, finished: Finished, ctx: Context, label: str, outcome: str, seconds: float) -> None:
        """Record the outcome on the call's span, and note the call with its span's ids for its audit line."""
        span = self._tracing.current_span()
        span.set_attribute("osnova.rpc.outcome", outcome)
        if outcome != "ok":
            self._tracing.fail(span, outcome)
        self._note(finished, ctx, (label, outcome, seconds, time.time(), current_trace_ids()))
