"""create_app(config): the one place that builds the aiohttp application and wires its parts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from osnova_server.config import Config
from osnova_server.metrics import Metrics
from osnova_server.rpc.methods import load_registry
from osnova_server.runtime import Runtime, open_runtime
from osnova_server.tracing import make_dispatcher
from osnova_server.web.admin import setup_admin
from osnova_server.web.cors import setup_cors
from osnova_server.web.headers import setup_headers
from osnova_server.web.keys import STATE_KEY, ServerState
from osnova_server.web.metrics import setup_metrics
from osnova_server.web.pipeline import setup_pipeline
from osnova_server.web.routes import setup_routes
from osnova_server.web.rpc_view import openrpc_view, rpc_view
from osnova_server.web.tracing import setup_tracing
from osnova_server.web.websocket import setup_websocket

# Seconds the rest of a refused request's body is read (and dropped) before the connection closes.
LINGERING_TIME: Final = 2.0


def create_app(config: Config) -> web.Application:
    """Build the application for `config`; its runtime opens on startup and closes on cleanup."""
    app = web.Application(
        client_max_size=config.limits.max_body_bytes,
        handler_args={
            "max_field_size": 16384,
            "keepalive_timeout": config.limits.keepalive_timeout,
            # Nothing is ever inflated: encoded bodies are refused (415), and aiohttp's reading of
            # an unread body's rest would otherwise decompress it (the 1 MiB -> 1 GiB gzip bomb).
            "auto_decompress": False,
            # After an early refusal (401, 413, 415) the rest of the body is read and dropped for
            # this long, so the client sees the answer instead of a reset.
            "lingering_time": LINGERING_TIME,
        },
    )
    metrics = Metrics()
    state = ServerState(metrics)
    app[STATE_KEY] = state

    # The request checks, in the order web/pipeline.py runs them (one middleware), and why:
    # timeouts  - stops the connection's header clock the moment a request starts, whatever
    #             answers it (and starts it again once the answer is out);
    # errors    - shapes every refusal after it (and any bug) into a JSON answer;
    # forwarded - decides the client address that the ban list, limiter and audit log key on;
    # host      - 421 for a Host this server is not (DNS rebinding), before anything can run;
    # origin    - 403 for a foreign web page on /rpc and /ws, before the token is looked at (the
    #             ban check below may look at one) and without counting towards a ban;
    # ban       - turns banned addresses away with one dict lookup, before any other work;
    # auth      - verifies a bearer token before the body is read, so a bad token costs nothing;
    # body      - refuses encoded bodies (415) and reads the body within body_timeout (408),
    #             only once everything that can refuse without it has.
    # With [tracing] enabled, its middleware goes outside all of these: its span covers them.
    # CORS (aiohttp-cors) is a response hook plus OPTIONS routes, not a middleware, so it is set
    # up after every route exists; rate limiting is charged in the /rpc and /ws handlers because
    # a batch costs one token per member.
    setup_pipeline(app, config.server.trusted_proxies)
    setup_headers(app)
    if config.tracing.enabled:
        setup_tracing(app)

    setup_routes(app)
    app.router.add_post("/rpc", rpc_view)
    app.router.add_get("/openrpc.json", openrpc_view, allow_head=True)
    setup_websocket(app)
    setup_metrics(app, metrics, config.metrics.allow_from)
    setup_cors(app)  # it enables CORS on the routes that exist when it runs
    # After CORS, so that no configured origin is ever granted the admin page's answers: it is
    # served only to itself.
    setup_admin(app)

    async def runtime_context(app: web.Application) -> AsyncIterator[None]:
        async with open_runtime(config) as opened:
            _install(state, opened)
            yield

    app.cleanup_ctx.append(runtime_context)
    return app


def _install(state: ServerState, runtime: Runtime) -> None:
    """Attach the runtime and a dispatcher that feeds metrics and the audit log."""
    state.runtime = runtime
    state.dispatcher = make_dispatcher(load_registry(), runtime.call_observer(state.metrics), runtime.tracing)
