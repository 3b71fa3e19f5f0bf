"""The request checks, run in the order app.py writes down, as one aiohttp middleware.

Each check lives in the module named for its job (timeouts, errors, forwarded, host, origin,
ban, auth, body), with the reason it exists; this module only runs them in turn. They are one
middleware rather than eight because every aiohttp middleware is a layer of its own on every
request (a `functools.partial` call, a coroutine and its frame, an `await` in and out): the
eight layers cost more than the checks in them, which are mostly a dict lookup or two.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler

from osnova_server.web.auth import authenticate
from osnova_server.web.ban import ban_refusal
from osnova_server.web.body import read_body
from osnova_server.web.errors import failure_answer, refusal_answer
from osnova_server.web.forwarded import ClientAddress
from osnova_server.web.host import setup_host
from osnova_server.web.keys import STATE_KEY
from osnova_server.web.origin import origin_refusal
from osnova_server.web.timeouts import hand_clock_to_request


def setup_pipeline(app: web.Application, trusted_proxies: Sequence[str]) -> None:
    """Install the middleware that runs every request check before the handler."""
    state = app[STATE_KEY]
    client = ClientAddress(trusted_proxies)
    host_refusal = setup_host(app)

    @web.middleware
    async def checks(request: web.Request, handler: Handler) -> web.StreamResponse:
        hand_clock_to_request(request)  # timeouts: first, whatever answers
        try:  # errors: every refusal raised below, and any bug, becomes a JSON answer
            remote = client.settle(request)  # forwarded
            runtime = state.runtime
            refusal = host_refusal(request)
            if refusal is None:
                refusal = origin_refusal(request, runtime)
            if refusal is None:
                refusal = ban_refusal(request, runtime, remote)
            if refusal is None:
                refusal = await authenticate(request, runtime)
            if refusal is None:
                refusal = await read_body(request, runtime)
            if refusal is not None:
                return refusal
            return await handler(request)
        except web.HTTPException as err:
            answer = refusal_answer(err)
            if answer is None:
                raise
            return answer
        except Exception:  # noqa: BLE001 - failure_answer logs it, with its traceback
            return failure_answer(request)

    app.middlewares.append(checks)
