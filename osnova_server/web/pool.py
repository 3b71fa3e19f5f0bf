"""The open WebSockets: a bounded pool of authenticated clients, each with a bounded outgoing queue.

Only authenticated sockets hold one of the `max_clients` slots; sockets still waiting for their
`auth` message are counted apart, and at most `max_authenticating` of them may wait at once, so
anonymous sockets can neither take the household's slots nor pile up. A slot is given back the
moment a close starts, not when the close handshake ends, so a client that reconnects at once
finds its slot free.

Everything sent to a client goes through its outgoing queue, drained by one writer task per
socket: answers and events keep their order, and a publisher never waits on a slow phone. A
client that stops reading fills its queue; it is then closed with 1008 rather than allowed to
grow the server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from aiohttp import WSCloseCode, WSMsgType, web

from osnova_server.events import Event
from osnova_server.rpc import codec

if TYPE_CHECKING:
    from osnova_server.metrics import Metrics
    from osnova_server.security.tokens import Claims

_LOGGER = logging.getLogger(__name__)

DEFAULT_QUEUE_SIZE: Final = 1024
MAX_AUTHENTICATING: Final = 16
# How long a close handshake may take before the connection is simply dropped.
CLOSE_TIMEOUT: Final = 5.0
# RFC 6455 5.5: a control frame's payload is at most 125 bytes, two of them the close code.
MAX_CLOSE_REASON_BYTES: Final = 123
CLIENT_NOT_READING: Final = "client is not reading its messages; reconnect and read them"
# Close codes of CONTRACT 5 beyond RFC 6455's: unauthenticated or revoked, and idle.
WS_UNAUTHORIZED: Final = 4401
WS_IDLE: Final = 4408

_OUT: Final = {"direction": "out"}


class ClientConnection:
    """One WebSocket client: who it is, what it subscribed to, and what is waiting to be sent."""

    __slots__ = (
        "id", "address", "device_id", "claims", "created_at", "last_activity", "subscriptions",
        "outgoing", "socket", "tasks", "close_code", "draining", "pool",
        "_transport", "_writer", "_closer", "_expiry", "_close_reason", "_grace", "_sealed",
    )

    def __init__(
        self,
        pool: ConnectionPool,
        socket: web.WebSocketResponse,
        address: str,
        transport: asyncio.Transport | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
    ) -> None:
        self.id = secrets.token_hex(8)
        self.address = address
        self.device_id: str | None = None
        self.claims: Claims | None = None
        self.created_at = time.time()
        self.last_activity = pool.clock()
        self.subscriptions: set[str] = set()
        self.outgoing: asyncio.Queue[bytes] = asyncio.Queue(queue_size)
        self.socket = socket
        # The calls of this client still running (for shutdown, which lets them answer first).
        self.tasks: set[asyncio.Task[None]] = set()
        # Set once a close has been decided: the code the client will be sent.
        self.close_code: int | None = None
        # Set while closing with a grace period: messages that arrive now are not run.
        self.draining = False
        self.pool = pool
        self._transport = transport
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._close_reason = ""
        self._grace = 0.0
        # Set when nothing more may be queued: the close frame is next, or the socket broke.
        self._sealed = False

    def __repr__(self) -> str:
        return f"<ClientConnection {self.id} {self.address} device={self.device_id}>"

    @property
    def closing(self) -> bool:
        """Whether a close has started."""
        return self.close_code is not None

    def authenticate(self, claims: Claims) -> None:
        """Record whose token opened this connection; close with 4401 when that token expires."""
        self.claims = claims
        self.device_id = claims.device_id
        delay = max(claims.expires_at - time.time(), 0.0)
        self._expiry = asyncio.get_running_loop().call_later(
            delay, self.close, WS_UNAUTHORIZED, "access token expired; reconnect with a fresh token",
        )

    def touch(self) -> None:
        """Note that the client just sent something (the reaper's measure of idleness)."""
        self.last_activity = self.pool.clock()

    def subscribe(self, topics: list[str]) -> None:
        """Start delivering events of these topics."""
        self.subscriptions.update(topics)

    def unsubscribe(self, topics: list[str]) -> None:
        """Stop delivering events of these topics."""
        self.subscriptions.difference_update(topics)

    def start(self) -> None:
        """The socket is open: start the writer, or the close decided while it was opening."""
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._write(), name=f"ws-writer-{self.id}")
        if self.close_code is not None:
            self._closer = loop.create_task(self._close(self.close_code, self._close_reason, self._grace))

    def send(self, data: bytes) -> bool:
        """Queue one encoded message; a client whose queue is full is closed with 1008."""
        if self._sealed:
            return False
        try:
            self.outgoing.put_nowait(data)
        except asyncio.QueueFull:
            _LOGGER.warning(
                "closing WebSocket %s from %s (device %s) with 1008: it stopped reading, %d messages pending",
                self.id, self.address, self.device_id or "-", self.outgoing.qsize(),
            )
            self._sealed = True
            self.close(WSCloseCode.POLICY_VIOLATION, CLIENT_NOT_READING)
            return False
        return True

    async def _write(self) -> None:
        """Send queued messages in order, for as long as the socket is open."""
        queue = self.outgoing
        socket = self.socket
        metrics = self.pool.metrics
        try:
            while True:
                data = await queue.get()
                try:
                    await socket.send_frame(data, WSMsgType.TEXT)
                finally:
                    queue.task_done()
                if metrics is not None:
                    metrics.ws_messages.inc(_OUT)
        except (ConnectionError, RuntimeError) as err:
            # The peer went away under us; the reading side sees it too and ends the session.
            _LOGGER.debug("WebSocket %s: write failed: %s", self.id, err)
            self._sealed = True
            while not queue.empty():  # nothing more can be sent; let drain() stop waiting
                queue.get_nowait()
                queue.task_done()

    def close(self, code: int, reason: str, grace: float = 0.0) -> None:
        """Start closing with `code`; the slot is freed now and the close frame follows.

        With `grace`, no new call runs and no event is delivered from now on, but the calls in
        flight get up to `grace` seconds to answer before the close frame is sent.
        """
        if self.close_code is not None:
            return
        self.close_code = code
        self.subscriptions.clear()
        self.pool.release(self)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if not self.socket.prepared:
            # Decided during the upgrade: start() sends it once the socket is open.
            self._close_reason, self._grace = reason, grace
            return
        self._closer = asyncio.get_running_loop().create_task(
            self._close(code, reason, grace), name=f"ws-close-{self.id}",
        )

    async def _close(self, code: int, reason: str, grace: float) -> None:
        """Send the close frame and wait briefly for the handshake; drop the connection if it stalls."""
        if grace > 0:
            await self.drain(grace)
        self._sealed = True
        if self._writer is not None:
            self._writer.cancel()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.socket.close(code=code, message=reason.encode()[:MAX_CLOSE_REASON_BYTES])
        except TimeoutError:
            _LOGGER.info("WebSocket %s did not finish closing in %.0f s; dropping it", self.id, CLOSE_TIMEOUT)
            if self._transport is not None:
                self._transport.abort()

    async def drain(self, timeout: float) -> None:
        """Run no new calls; let those in flight finish and their answers go out, within `timeout` s."""
        self.draining = True
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                if self.tasks:
                    await asyncio.wait(list(self.tasks))
                if self._writer is not None and not self._writer.done():
                    await self.outgoing.join()
        except TimeoutError:
            _LOGGER.info(
                "WebSocket %s: closing with %d calls running and %d messages unsent",
                self.id, len(self.tasks), self.outgoing.qsize(),
            )

    async def wait_closed(self) -> None:
        """Wait for the close to finish and for every call of this client to end."""
        if self._closer is not None:
            await self._closer
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)


class ConnectionPool:
    """The open WebSockets of one server: at most `max_clients` authenticated ones."""

    __slots__ = (
        "max_clients", "max_authenticating", "metrics", "clock", "accepting", "_connections", "_authenticating",
    )

    def __init__(
        self,
        max_clients: int,
        max_authenticating: int = MAX_AUTHENTICATING,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_clients = max_clients
        self.max_authenticating = max_authenticating
        self.metrics = metrics
        self.clock = clock
        # False once shutdown has begun: late upgrades are refused.
        self.accepting = True
        self._connections: dict[str, ClientConnection] = {}
        self._authenticating: dict[str, ClientConnection] = {}

    def __len__(self) -> int:
        """Open authenticated connections (what /status and the gauge report)."""
        return len(self._connections)

    def __iter__(self) -> Iterator[ClientConnection]:
        """The authenticated connections (a snapshot: closing one while iterating is safe)."""
        return iter(list(self._connections.values()))

    @property
    def full(self) -> bool:
        """Whether every slot is taken."""
        return len(self._connections) >= self.max_clients

    @property
    def authenticating(self) -> int:
        """Sockets waiting for their `auth` message."""
        return len(self._authenticating)

    def wait_for_auth(self, connection: ClientConnection) -> bool:
        """Hold an unauthenticated socket (no slot); False when too many are waiting already."""
        if len(self._authenticating) >= self.max_authenticating:
            return False
        self._authenticating[connection.id] = connection
        return True

    def admit(self, connection: ClientConnection) -> bool:
        """Give an authenticated connection a slot; False when they are all taken."""
        self._authenticating.pop(connection.id, None)
        if len(self._connections) >= self.max_clients:
            return False
        self._connections[connection.id] = connection
        self._count()
        return True

    def release(self, connection: ClientConnection) -> None:
        """Forget a connection and free its slot (idempotent)."""
        self._authenticating.pop(connection.id, None)
        if self._connections.pop(connection.id, None) is not None:
            self._count()

    def everyone(self) -> list[ClientConnection]:
        """Every socket, authenticated or still authenticating (for shutdown)."""
        return [*self._connections.values(), *self._authenticating.values()]

    def of_device(self, device_id: str) -> list[ClientConnection]:
        """The connections opened with this device's tokens."""
        return [c for c in self._connections.values() if c.device_id == device_id]

    def idle(self, timeout: float) -> list[ClientConnection]:
        """Connections with no call running that have sent nothing for `timeout` seconds."""
        cutoff = self.clock() - timeout
        return [c for c in self._connections.values() if c.last_activity <= cutoff and not c.tasks]

    def deliver(self, event: Event, admits: Callable[[Claims | None], bool] | None = None) -> None:
        """Queue an event to every subscriber of its topic that `admits` (the role rules), encoding it once."""
        topic = event.topic
        data: bytes | None = None
        for connection in list(self._connections.values()):
            if topic in connection.subscriptions and (admits is None or admits(connection.claims)):
                if data is None:
                    data = codec.dumps(event.notification())
                connection.send(data)

    def _count(self) -> None:
        """Keep the active_connections gauge equal to the pool's size."""
        if self.metrics is not None:
            self.metrics.active_connections.set({}, len(self._connections))
