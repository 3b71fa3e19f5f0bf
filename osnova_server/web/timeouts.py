"""Hand each request's clock from the connection to the request, and back once it is answered.

The connection's guard (web/connections.py) gives a connection `[limits] header_timeout` seconds
to send its request line and headers. The outermost check (web/pipeline.py) tells it that a request started,
so that clock stops, and that the request's answer went out (the task aiohttp runs each request
in has ended), so the next request's first byte starts it again. Between requests aiohttp's own
keep-alive timeout (`[limits] keepalive_timeout`) closes an idle connection.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from osnova_server.web.connections import guard_of


def hand_clock_to_request(request: web.BaseRequest) -> None:
    """Stop the connection's header clock for `request`; start it again once the request's task ends."""
    guard = guard_of(request)
    if guard is not None:
        guard.request_started()
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(guard.request_finished)
