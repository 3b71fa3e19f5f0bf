"""One span per HTTP request (the WebSocket upgrade included), and the `traceresponse` header.

Our own middleware rather than opentelemetry-instrumentation-aiohttp-server: that package
(read, 0.66b1) names spans after the raw path unless told otherwise, records the full URL with
its query string, adds a metrics pipeline (histograms per request) we already have in
/metrics, pulls in wrapt and the instrumentation framework, and sets no `traceresponse`. Here the
span is named by the route template, carries only method, route, scheme, status and client
address, and costs one `with` per request.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from osnova_server.tracing import Span
from osnova_server.web.keys import REMOTE_KEY, STATE_KEY
from osnova_server.web.metrics import route_label

SPAN_KEY: Final[web.RequestKey[Span]] = web.RequestKey("span")
TRACERESPONSE: Final = "traceresponse"


@web.middleware
async def _trace(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the request inside a SERVER span that continues the client's `traceparent`."""
    tracing = request.app[STATE_KEY].runtime.tracing
    if tracing is None:
        return await handler(request)
    route = route_label(request)
    attributes = {"http.request.method": request.method, "http.route": route, "url.scheme": request.scheme}
    with tracing.server_span(f"{request.method} {route}", request.headers, attributes) as span:
        request[SPAN_KEY] = span
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            _answered(span, exc.status, request)
            raise
        _answered(span, response.status, request)
        return response


def _answered(span: Span, status: int, request: web.Request) -> None:
    """Record the status (and the client address the forwarded middleware settled on)."""
    span.set_attribute("http.response.status_code", status)
    remote = request.get(REMOTE_KEY)
    if remote is not None:
        span.set_attribute("client.address", remote)
    if status >= 500:
        tracing = request.app[STATE_KEY].runtime.tracing
        if tracing is not None:
            tracing.fail(span, str(status))


async def _traceresponse(request: web.Request, response: web.StreamResponse) -> None:
    """Echo the trace in `traceresponse`, before the head is sent (errors and upgrades too)."""
    span = request.get(SPAN_KEY)
    tracing = request.app[STATE_KEY].runtime.tracing
    if span is not None and tracing is not None:
        response.headers[TRACERESPONSE] = tracing.traceresponse(span)


def setup_tracing(app: web.Application) -> None:
    """Make the tracing middleware the outermost, so its span covers every other one."""
    app.middlewares.insert(0, _trace)
    app.on_response_prepare.append(_traceresponse)
