"""Hand each request's clock from the connection to the request, and back once it is answered.

The connection's guard (web/connections.py) gives a connection `[limits] header_timeout` seconds
to send its request line and headers. This outermost middleware tells it that a request started,
so that clock stops, and that the request's answer went out (the task aiohttp runs each request
in has ended), so the next request's first byte starts it again. Between requests aiohttp's own
keep-alive timeout (`[limits] keepalive_timeout`) closes an idle connection.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Handler

from osnova_server.web.connections import guard_of


def setup_timeouts(app: web.Application) -> None:
    """Install the middleware that marks requests on their connection's guard."""

    @web.middleware
    async def timeouts_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        guard = guard_of(request)
        if guard is not None:
            guard.request_started()
            task = asyncio.current_task()
            if task is not None:
                task.add_done_callback(guard.request_finished)
        return await handler(request)

    app.middlewares.append(timeouts_middleware)
