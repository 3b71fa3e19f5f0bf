"""GET /admin/live: the admin page's WebSocket; the server pushes, the page never polls.

It carries every event of the bus (an admin receives them all) as the same JSON-RPC `event`
notifications /ws sends, and an `admin.overview` event with a fresh `overview()` snapshot when
the socket opens, after every event, and every OVERVIEW_INTERVAL seconds (uptime and connection
counts change without an event). It is authenticated by the session cookie, never by a token.

The sockets reuse /ws's `ClientConnection` (one bounded outgoing queue per socket, 1008 for a
reader that stops, a close at the session's expiry) in a pool of their own: the admin page takes
none of the household's `max_clients` slots and is not counted among its connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import WSCloseCode, web

from osnova_server.events import TOPICS, Event
from osnova_server.rpc import codec
from osnova_server.runtime import Runtime
from osnova_server.services.admin_sessions import AdminSession
from osnova_server.web.admin.csrf import cross_origin
from osnova_server.web.admin.overview import overview
from osnova_server.web.admin.session import current_session, session_claims
from osnova_server.web.errors import json_error
from osnova_server.web.keys import REMOTE_KEY, STATE_KEY
from osnova_server.web.pool import CLOSE_TIMEOUT, WS_UNAUTHORIZED, ClientConnection, ConnectionPool

_LOGGER = logging.getLogger(__name__)

OVERVIEW_TOPIC: Final = "admin.overview"
OVERVIEW_INTERVAL: Final = 5.0
# Admin page sockets at once (tabs, phones), in all and per session.
MAX_LIVE: Final = 16
MAX_LIVE_PER_SESSION: Final = 4
HEARTBEAT: Final = 30.0
# The page sends nothing; a frame bigger than this is not from it.
MAX_INCOMING_BYTES: Final = 4096
SIGNED_OUT: Final = "signed out; get a new link with `osnova-server admin-url`"
STOPPING: Final = "the server is stopping; the page reconnects when it is back"


class LiveSockets:
    """The open admin page sockets, by session, and the job that keeps their overview fresh."""

    __slots__ = ("pool", "_by_session", "_changed")

    def __init__(self) -> None:
        self.pool = ConnectionPool(MAX_LIVE)
        self._by_session: dict[str, set[ClientConnection]] = {}
        self._changed = asyncio.Event()

    def of_session(self, session: AdminSession) -> set[ClientConnection]:
        """The sockets a session holds open."""
        return self._by_session.setdefault(session.key, set())

    def forget(self, session: AdminSession, connection: ClientConnection) -> None:
        """Drop a closed socket from its session's set."""
        held = self._by_session.get(session.key)
        if held is not None:
            held.discard(connection)
            if not held:
                del self._by_session[session.key]

    def sign_out(self, session: AdminSession) -> None:
        """Close every socket of a session that just logged out (4401)."""
        for connection in list(self._by_session.pop(session.key, ())):
            connection.close(WS_UNAUTHORIZED, SIGNED_OUT)

    def on_event(self, event: Event) -> None:
        """Event-bus listener: forward the event and ask for a fresh overview (enqueue only)."""
        self.pool.deliver(event)
        self._changed.set()

    async def run_overview(self, runtime: Runtime) -> None:
        """Background job: push the overview after each change and every OVERVIEW_INTERVAL seconds."""
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), OVERVIEW_INTERVAL)
            except TimeoutError:
                pass
            self._changed.clear()
            if len(self.pool):
                data = await overview_message(runtime)
                for connection in self.pool:
                    connection.send(data)

    async def close_all(self) -> None:
        """At shutdown: close every socket with 1001, so the page says the server is stopping."""
        self.pool.accepting = False
        connections = self.pool.everyone()
        for connection in connections:
            connection.close(WSCloseCode.GOING_AWAY, STOPPING)
        await asyncio.gather(*(connection.wait_closed() for connection in connections))


LIVE_KEY: Final = web.AppKey("admin_live", LiveSockets)


async def overview_message(runtime: Runtime) -> bytes:
    """The `admin.overview` event notification, encoded."""
    return codec.dumps(Event(OVERVIEW_TOPIC, await overview(runtime)).notification())


def setup_live(app: web.Application) -> None:
    """Add GET /admin/live, its event listener and overview job (at start) and its close (at stop)."""
    state = app[STATE_KEY]
    live = LiveSockets()
    app[LIVE_KEY] = live
    app.router.add_get("/admin/live", live_view)
    opened: list[Callable[[], Awaitable[None] | None]] = []

    async def start(app: web.Application) -> None:
        runtime = state.runtime
        opened.append(runtime.events.listen(live.on_event))
        opened.append((await runtime.scheduler.spawn(live.run_overview(runtime))).close)

    async def stop(app: web.Application) -> None:
        while opened:
            done = opened.pop()()
            if done is not None:
                await done
        await live.close_all()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


async def live_view(request: web.Request) -> web.StreamResponse:
    """Upgrade a signed-in, same-origin browser to the live socket and hold it until it closes."""
    if cross_origin(request):
        return json_error(403, "the admin page's live socket opens only from the admin page itself")
    session = await current_session(request)
    if session is None:
        return json_error(401, "your admin session has ended; get a new link with `osnova-server admin-url`")
    live = request.app[LIVE_KEY]
    socket = web.WebSocketResponse(
        heartbeat=HEARTBEAT, max_msg_size=MAX_INCOMING_BYTES, compress=False, timeout=CLOSE_TIMEOUT,
    )
    if not socket.can_prepare(request):
        return json_error(400, "GET /admin/live is a WebSocket endpoint for the admin page")
    if not live.pool.accepting:
        return json_error(503, STOPPING, {"Retry-After": "5"})
    held = live.of_session(session)
    if live.pool.full or len(held) >= MAX_LIVE_PER_SESSION:
        return json_error(503, "too many admin pages are open at once; close one and reload", {"Retry-After": "5"})
    connection = ClientConnection(live.pool, socket, request[REMOTE_KEY], request.transport)
    connection.authenticate(session_claims(session))  # closes it (4401) when the session expires
    live.pool.admit(connection)
    connection.subscribe(sorted(TOPICS))
    held.add(connection)
    runtime = request.app[STATE_KEY].runtime
    try:
        await socket.prepare(request)
        connection.start()
        connection.send(await overview_message(runtime))
        async for _ in socket:
            pass  # the page only listens; pings are answered by aiohttp
    finally:
        connection.close(socket.close_code or WSCloseCode.OK, "")
        await connection.wait_closed()
        live.forget(session, connection)
    return socket
