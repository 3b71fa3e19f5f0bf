"""The open WebSockets: a bounded pool of authenticated clients, each with a bounded outgoing queue.

Only authenticated sockets hold one of the `max_clients` slots, and one device (or the admin)
at most `max_clients_per_device` of them. Sockets still waiting for their `auth` message are
counted apart: at most `max_authenticating` (16) may wait at once, and at most
`max_authenticating_per_address` (4) from one address, so anonymous sockets can neither take the
household's slots nor lock other clients out. A slot is given back the moment a close starts,
not when the close handshake ends, so a client that reconnects at once finds its slot free.

Everything sent to a client goes through its outgoing queue, drained by one writer task per
socket: answers and events keep their order, and a publisher never waits on a slow phone. The
queue is measured in bytes: while more than `[limits] max_ws_queue_bytes` wait, `has_room` is
false and the socket's reader stops reading its requests (web/websocket.py), so TCP pushes back
on the client instead of the server running work it cannot deliver. A client whose queue has
not moved for `idle_timeout` seconds reads nothing, and the reaper closes it with 1008.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

from aiohttp import WSMsgType, web

from osnova_server.events import Event
from osnova_server.rpc import codec

if TYPE_CHECKING:
    from osnova_server.metrics import Metrics
    from osnova_server.security.tokens import Claims

_LOGGER = logging.getLogger(__name__)

DEFAULT_QUEUE_BYTES: Final = 8_388_608
MAX_AUTHENTICATING: Final = 16
MAX_AUTHENTICATING_PER_ADDRESS: Final = 4
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
        "outgoing", "queued_bytes", "max_queue_bytes", "last_delivery", "socket", "tasks", "close_code",
        "draining", "pool", "_transport", "_writer", "_closer", "_expiry", "_close_reason", "_grace",
        "_sealed", "_pending", "_room", "_drained",
    )

    def __init__(
        self,
        pool: ConnectionPool,
        socket: web.WebSocketResponse,
        address: str,
        transport: asyncio.Transport | None = None,
        max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self.id = secrets.token_hex(8)
        self.address = address
        self.device_id: str | None = None
        self.claims: Claims | None = None
        self.created_at = time.time()
        self.last_activity = pool.clock()
        self.subscriptions: set[str] = set()
        # Encoded messages waiting to be sent, and their size in bytes.
        self.outgoing: deque[bytes] = deque()
        self.queued_bytes = 0
        self.max_queue_bytes = max_queue_bytes
        # When the queue last moved (or began to wait): the reaper's measure of a client not reading.
        self.last_delivery = pool.clock()
        self._pending = asyncio.Event()  # something waits to be sent
        self._room = asyncio.Event()  # the queue is under its byte limit (or the socket is done)
        self._room.set()
        self._drained = asyncio.Event()  # nothing waits to be sent
        self._drained.set()
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

    @property
    def has_room(self) -> bool:
        """Whether fewer than `max_queue_bytes` wait to be sent (else its requests are not read)."""
        return self._room.is_set()

    async def wait_for_room(self) -> None:
        """Wait until the queue is under its byte limit again, or the socket is done."""
        await self._room.wait()

    def send(self, data: bytes) -> bool:
        """Queue one encoded message (never refused while the socket is open)."""
        if self._sealed:
            return False
        if not self.queued_bytes:
            self.last_delivery = self.pool.clock()
        self.outgoing.append(data)
        self.queued_bytes += len(data)
        self._pending.set()
        self._drained.clear()
        if self.queued_bytes >= self.max_queue_bytes:
            self._room.clear()
        return True

    def stalled(self, timeout: float) -> bool:
        """Whether messages have waited `timeout` seconds without one being taken by the client."""
        return self.queued_bytes > 0 and self.last_delivery <= self.pool.clock() - timeout

    def _taken(self, data: bytes) -> None:
        """One message left the queue."""
        self.queued_bytes -= len(data)
        self.last_delivery = self.pool.clock()
        if self.queued_bytes < self.max_queue_bytes:
            self._room.set()
        if not self.queued_bytes:
            self._drained.set()

    async def _write(self) -> None:
        """Send queued messages in order, for as long as the socket is open."""
        queue = self.outgoing
        socket = self.socket
        metrics = self.pool.metrics
        try:
            while True:
                while not queue:
                    self._pending.clear()
                    await self._pending.wait()
                data = queue.popleft()
                try:
                    await socket.send_frame(data, WSMsgType.TEXT)
                finally:
                    self._taken(data)
                if metrics is not None:
                    metrics.ws_messages.inc(_OUT)
        except (ConnectionError, RuntimeError) as err:
            # The peer went away under us; the reading side sees it too and ends the session.
            _LOGGER.debug("WebSocket %s: write failed: %s", self.id, err)
            self._seal()

    def _seal(self) -> None:
        """Nothing more can be sent: drop what waits, and let readers and drain() stop waiting."""
        self._sealed = True
        self.outgoing.clear()
        self.queued_bytes = 0
        self._room.set()
        self._drained.set()

    def close(self, code: int, reason: str, grace: float = 0.0) -> None:
        """Start closing with `code`; the slot is freed now and the close frame follows.

        With `grace`, no new call runs and no event is delivered from now on, but the calls in
        flight get up to `grace` seconds to answer before the close frame is sent.
        """
        if self.close_code is not None:
            return
        self.close_code = code
        self._room.set()  # a reader waiting for room sees the close instead
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
        self._seal()
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
                    await self._drained.wait()
        except TimeoutError:
            _LOGGER.info(
                "WebSocket %s: closing with %d calls running and %d messages unsent",
                self.id, len(self.tasks), len(self.outgoing),
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


def principal_of(claims: Claims | None) -> str:
    """Whose a socket is, for the per-device limit and the audit log: a device id, or "admin"."""
    if claims is None:
        return "anonymous"
    return claims.device_id or "admin"


class ConnectionPool:
    """The open WebSockets of one server: at most `max_clients` authenticated ones."""

    __slots__ = (
        "max_clients", "max_clients_per_device", "max_authenticating", "max_authenticating_per_address",
        "max_queue_bytes", "metrics", "clock", "accepting", "_connections", "_authenticating",
    )

    def __init__(
        self,
        max_clients: int,
        max_authenticating: int = MAX_AUTHENTICATING,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_clients_per_device: int | None = None,
        max_authenticating_per_address: int = MAX_AUTHENTICATING_PER_ADDRESS,
        max_queue_bytes: int = DEFAULT_QUEUE_BYTES,
    ) -> None:
        self.max_clients = max_clients
        # None: no limit per device beyond max_clients.
        self.max_clients_per_device = max_clients_per_device
        self.max_authenticating = max_authenticating
        self.max_authenticating_per_address = max_authenticating_per_address
        self.max_queue_bytes = max_queue_bytes
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

    def auth_refusal(self, address: str) -> str | None:
        """Why a new socket from `address` may not wait for its `auth` message, or None if it may."""
        if len(self._authenticating) >= self.max_authenticating:
            return f"{self.max_authenticating} WebSockets are authenticating at once"
        waiting = sum(1 for c in self._authenticating.values() if c.address == address)
        if waiting >= self.max_authenticating_per_address:
            return f"{address} already has {waiting} WebSockets authenticating"
        return None

    def wait_for_auth(self, connection: ClientConnection) -> bool:
        """Hold an unauthenticated socket (no slot); False when `auth_refusal` says no."""
        if self.auth_refusal(connection.address) is not None:
            return False
        self._authenticating[connection.id] = connection
        return True

    def slot_refusal(self, claims: Claims | None) -> str | None:
        """The limit that leaves no slot for a socket with these claims, or None if one is free."""
        if len(self._connections) >= self.max_clients:
            return f"[server] max_clients = {self.max_clients}"
        per_device = self.max_clients_per_device
        if per_device is not None and claims is not None:
            owner = principal_of(claims)
            held = sum(1 for c in self._connections.values() if principal_of(c.claims) == owner)
            if held >= per_device:
                return f"[server] max_clients_per_device = {per_device}"
        return None

    def admit(self, connection: ClientConnection, claims: Claims | None = None) -> bool:
        """Give an authenticated connection a slot; False when `slot_refusal` says there is none."""
        self._authenticating.pop(connection.id, None)
        if self.slot_refusal(claims if claims is not None else connection.claims) is not None:
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
        """Connections with no call running and nothing to send that have sent nothing for `timeout` s."""
        cutoff = self.clock() - timeout
        return [
            c for c in self._connections.values() if c.last_activity <= cutoff and not c.tasks and not c.queued_bytes
        ]

    def not_reading(self, timeout: float) -> list[ClientConnection]:
        """Connections whose client has taken none of its waiting messages for `timeout` seconds."""
        return [c for c in self._connections.values() if c.stalled(timeout)]

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
