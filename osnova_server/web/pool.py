"""The open WebSockets: a bounded pool of authenticated clients, each with a bounded outgoing queue.

Only authenticated sockets hold one of the `max_clients` slots, and one device (or the admin)
at most `max_clients_per_device` of them. Sockets still waiting for their `auth` message are
counted apart: at most `max_authenticating` (16) may wait at once, and at most
`max_authenticating_per_address` (4) from one address, so anonymous sockets can neither take the
household's slots nor lock other clients out. A slot is given back the moment a close starts,
not when the close handshake ends, so a client that reconnects at once finds its slot free.

Everything sent to a client keeps its order, and a publisher never waits on a slow phone: when
nothing waits to be sent, a message is written to the transport at once (no task switch per
answer); otherwise it joins the socket's outgoing queue, which a writer task drains, made when
something has to wait and ended when nothing does. The queue is measured in bytes: while more than `[limits] max_ws_queue_bytes` wait, `has_room` is
false and the socket's reader stops reading its requests (web/websocket.py), so TCP pushes back
on the client instead of the server running work it cannot deliver. A client whose queue has
not moved for `idle_timeout` seconds reads nothing, and the reaper closes it with 1008.

A pool keeps a count of the slots each device holds, so admitting a socket costs the same with
ten thousand open as with one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Final

from aiohttp import WSCloseCode, WSMsgType, web

from osnova_server.events import Event
from osnova_server.rpc import codec
from osnova_server.rpc.protocol import resume_started

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
_NO_TOPICS: Final[frozenset[str]] = frozenset()
# Looked up once: an enum member read off its class costs 60-70 ns, on every message.
_TEXT: Final = WSMsgType.TEXT


class ClientConnection:
    """One WebSocket client: who it is, what it subscribed to, and what is waiting to be sent.

    An idle socket is most of what a household keeps open, so what only a busy one needs (the
    outgoing queue, the writer task, the futures its reader and closer wait on) is made when first
    needed, and an idle connection holds a handful of plain attributes.
    """

    __slots__ = (
        "id", "address", "device_id", "claims", "created_at", "last_activity", "subscriptions",
        "queued_bytes", "max_queue_bytes", "last_delivery", "socket", "calls", "close_code",
        "draining", "pool", "_transport", "_outgoing", "_writer", "_open", "_full", "_room", "_settled",
        "_closer", "_expiry", "_close_reason", "_grace", "_sealed", "slot_holder", "last_heard", "_pinged",
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
        # One shared empty set until the client subscribes to something.
        self.subscriptions: AbstractSet[str] = _NO_TOPICS
        # Bytes of the messages waiting to be sent (queued, or written and waiting for the
        # transport to drain), and the bound past which its requests are not read.
        self.queued_bytes = 0
        self.max_queue_bytes = max_queue_bytes
        # When the queue last moved (or began to wait): the reaper's measure of a client not reading.
        self.last_delivery = self.last_activity
        self.socket = socket
        # Calls of this client that are waiting for something (a database read, a fetch); the
        # ones that answer without waiting are done before the next frame is read.
        self.calls = 0
        # Set once a close has been decided: the code the client will be sent.
        self.close_code: int | None = None
        # Set while closing with a grace period: messages that arrive now are not run.
        self.draining = False
        self.pool = pool
        self._transport = transport
        # Encoded messages waiting for the writer, made with the first one that has to wait.
        self._outgoing: deque[bytes] | None = None
        # The task sending what waits, only while something does; None: the next message is written at once.
        self._writer: asyncio.Task[None] | None = None
        # Set by start(): the socket is open, messages may go on the wire.
        self._open = False
        # Whether max_queue_bytes wait (the reader stops), and the future a stopped reader waits on.
        self._full = False
        self._room: asyncio.Future[None] | None = None
        # The future waiters on `calls` wait on; resolved (and dropped) as each waiting call ends.
        self._settled: asyncio.Future[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._close_reason = ""
        self._grace = 0.0
        # Set when nothing more may be queued: the close frame is next, or the socket broke.
        self._sealed = False
        # Whose slot this is (a device id or "admin"), set by the pool while it holds one.
        self.slot_holder: str | None = None
        # When the client last sent any frame (pongs too), and when the server last pinged it:
        # the heartbeat's measures (`keep_alive`).
        self.last_heard = self.last_activity
        self._pinged = 0.0

    def __repr__(self) -> str:
        return f"<ClientConnection {self.id} {self.address} device={self.device_id}>"

    @property
    def closing(self) -> bool:
        """Whether a close has started."""
        return self.close_code is not None

    @property
    def outgoing(self) -> Sequence[bytes]:
        """The encoded messages waiting for the writer, oldest first."""
        return self._outgoing if self._outgoing is not None else ()

    def authenticate(self, claims: Claims) -> None:
        """Record whose token opened this connection; close with 4401 when that token expires."""
        self.claims = claims
        self.device_id = claims.device_id
        delay = max(claims.expires_at - time.time(), 0.0)
        self._expiry = asyncio.get_running_loop().call_later(delay, self._expired)

    def _expired(self) -> None:
        """The token that opened this connection expired."""
        self.close(WS_UNAUTHORIZED, "access token expired; reconnect with a fresh token")

    def touch(self) -> None:
        """Note that the client just sent a message or a ping (the reaper's measure of idleness)."""
        self.last_activity = self.last_heard = self.pool.clock()

    def heard(self) -> None:
        """Note that the client just sent a frame that does not count as activity (a pong)."""
        self.last_heard = self.pool.clock()

    def keep_alive(self, interval: float) -> None:
        """The heartbeat: ping a client silent for `interval` s; drop one that did not answer in `interval` / 2 s.

        The pool's heartbeat job calls this every `interval` / 4 seconds for every socket. It
        replaces aiohttp's own heartbeat, which re-arms a timer (through a loop callback) for
        every frame received; this costs nothing per message and no timer per socket.
        """
        if not self._open or self.close_code is not None:
            return
        now = self.pool.clock()
        if self._pinged > self.last_heard:  # a ping is unanswered
            if now - self._pinged >= interval / 2:
                self._drop(f"no answer to a ping within {interval / 2:g} s")
            return
        if now - self.last_heard >= interval:
            self._pinged = now
            pinging = self.socket.ping()
            try:
                pinging.send(None)
            except StopIteration:
                return
            except (ConnectionError, RuntimeError) as err:
                self._drop(f"the ping could not be sent: {err}")
                return
            # The frame is in the transport's buffer, which is past its high-water mark; the
            # writer, when there is one, waits for it to drain, so nothing here needs to.
            pinging.close()

    def _drop(self, why: str) -> None:
        """Abort a connection whose peer is gone; the slot is freed at once, no close frame is sent."""
        _LOGGER.info("dropping WebSocket %s from %s: %s", self.id, self.address, why)
        if self._transport is not None:
            self._transport.abort()
        self.close(WSCloseCode.ABNORMAL_CLOSURE, why)

    def subscribe(self, topics: list[str]) -> None:
        """Start delivering events of these topics."""
        self.subscriptions = {*self.subscriptions, *topics}

    def unsubscribe(self, topics: list[str]) -> None:
        """Stop delivering events of these topics."""
        self.subscriptions = self.subscriptions - set(topics)

    def start(self) -> None:
        """The socket is open: send what waits, or the close decided while it was opening."""
        self._open = True
        if self._outgoing:
            self._writer = asyncio.get_running_loop().create_task(self._write(), name=f"ws-writer-{self.id}")
        if self.close_code is not None:
            self._closer = asyncio.get_running_loop().create_task(
                self._close(self.close_code, self._close_reason, self._grace),
            )

    @property
    def has_room(self) -> bool:
        """Whether fewer than `max_queue_bytes` wait to be sent (else its requests are not read)."""
        return not self._full

    async def wait_for_room(self) -> None:
        """Wait until the queue is under its byte limit again, or the socket is done."""
        if self._full:
            if self._room is None:
                self._room = asyncio.get_running_loop().create_future()
            await self._room

    def _make_room(self) -> None:
        """The reader may read again."""
        self._full = False
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    def send(self, data: bytes) -> bool:
        """Send one encoded message, in order, without waiting (never refused while the socket is open).

        When nothing waits to be sent, the frame is written to the transport at once, here:
        a hand-off to a writer task would cost a task switch per answer. Only when something is
        already waiting, or the transport asks the writer to wait until it drains, does the
        message join the queue and a writer task send it.
        """
        if self._sealed:
            return False
        if self._writer is None and self._open:
            return self._write_now(data)
        if not self.queued_bytes:
            self.last_delivery = self.pool.clock()
        if self._outgoing is None:
            self._outgoing = deque()
        self._outgoing.append(data)
        self.queued_bytes += len(data)
        if self.queued_bytes >= self.max_queue_bytes:
            self._full = True
        if self._writer is None and self._open:
            self._writer = asyncio.get_running_loop().create_task(self._write(), name=f"ws-writer-{self.id}")
        return True

    def _write_now(self, data: bytes) -> bool:
        """Write one frame now; if the transport then has to drain first, the writer waits for it."""
        sending = self.socket.send_frame(data, _TEXT)
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            self._sent()
            return True
        except (ConnectionError, RuntimeError) as err:
            _LOGGER.debug("WebSocket %s: write failed: %s", self.id, err)
            self._seal()
            return False
        # The frame is in the transport's buffer, which is past its high-water mark: it counts
        # as waiting until the transport drains, and what comes next queues behind it.
        self.last_delivery = self.pool.clock()
        self.queued_bytes += len(data)
        if self.queued_bytes >= self.max_queue_bytes:
            self._full = True
        self._writer = asyncio.get_running_loop().create_task(
            self._write(resume_started(sending, waiting_on), len(data)), name=f"ws-writer-{self.id}",
        )
        return True

    def _sent(self) -> None:
        """Count one message sent."""
        metrics = self.pool.metrics
        if metrics is not None:
            metrics.ws_messages.inc(_OUT)

    def stalled(self, timeout: float) -> bool:
        """Whether messages have waited `timeout` seconds without one being taken by the client."""
        return self.queued_bytes > 0 and self.last_delivery <= self.pool.clock() - timeout

    def _taken(self, size: int) -> None:
        """One message of `size` bytes left the queue."""
        self.queued_bytes -= size
        self.last_delivery = self.pool.clock()
        if self._full and self.queued_bytes < self.max_queue_bytes:
            self._make_room()

    async def _write(self, first: Awaitable[None] | None = None, size: int = 0) -> None:
        """Send queued messages in order (after finishing `first`), until none waits; then end."""
        socket = self.socket
        try:
            if first is not None:
                try:
                    await first
                finally:
                    self._taken(size)
                self._sent()
            queue = self._outgoing
            while queue:
                data = queue.popleft()
                try:
                    await socket.send_frame(data, WSMsgType.TEXT)
                finally:
                    self._taken(len(data))
                del data  # sent: an idle socket holds none of its messages
                self._sent()
        except (ConnectionError, RuntimeError) as err:
            # The peer went away under us; the reading side sees it too and ends the session.
            _LOGGER.debug("WebSocket %s: write failed: %s", self.id, err)
            self._seal()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None

    def _seal(self) -> None:
        """Nothing more can be sent: drop what waits, and let readers and drain() stop waiting."""
        self._sealed = True
        if self._outgoing is not None:
            self._outgoing.clear()
        self.queued_bytes = 0
        self._make_room()

    def call_started(self) -> None:
        """A call of this client has to wait: it counts as in flight until `call_ended`."""
        self.calls += 1

    def call_ended(self) -> None:
        """A call counted by `call_started` answered."""
        self.calls -= 1
        settled, self._settled = self._settled, None
        if settled is not None and not settled.done():
            settled.set_result(None)

    async def wait_for_calls(self, at_most: int = 0) -> None:
        """Wait until at most `at_most` calls of this client are in flight."""
        while self.calls > at_most:
            if self._settled is None:
                self._settled = asyncio.get_running_loop().create_future()
            # Shielded: a waiter whose wait times out must not cancel the others' future.
            await asyncio.shield(self._settled)

    def close(self, code: int, reason: str, grace: float = 0.0) -> None:
        """Start closing with `code`; the slot is freed now and the close frame follows.

        With `grace`, no new call runs and no event is delivered from now on, but the calls in
        flight get up to `grace` seconds to answer before the close frame is sent.
        """
        if self.close_code is not None:
            return
        self.close_code = code
        self._make_room()  # a reader waiting for room sees the close instead
        self.subscriptions = _NO_TOPICS
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
                await self.wait_for_calls()
                writer = self._writer
                if writer is not None and not writer.done():
                    await asyncio.wait([writer])  # not `await writer`: a timeout here must not cancel it
        except TimeoutError:
            _LOGGER.info(
                "WebSocket %s: closing with %d calls running and %d messages unsent",
                self.id, self.calls, len(self.outgoing),
            )

    async def wait_closed(self) -> None:
        """Wait for the close to finish and for every call of this client to end."""
        if self._closer is not None:
            await self._closer
        await self.wait_for_calls()
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)


def principal_of(claims: Claims | None) -> str:
    """Whose a socket is, for the per-device limit and the audit log: a device id, or "admin"."""
    if claims is None:
        return "anonymous"
    return claims.device_id or "admin"


class ConnectionPool:
    """The open WebSockets of one server: at most `max_clients` authenticated ones."""

    __slots__ = (
        "max_clients", "max_clients_per_device", "max_authenticating", "max_authenticating_per_address",
        "max_queue_bytes", "metrics", "clock", "accepting", "_connections", "_authenticating", "_held",
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
        # Slots held per device (or "admin"), kept with _connections so admission is O(1).
        self._held: dict[str, int] = {}

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
        if per_device is not None and claims is not None and self._held.get(principal_of(claims), 0) >= per_device:
            return f"[server] max_clients_per_device = {per_device}"
        return None

    def admit(self, connection: ClientConnection, claims: Claims | None = None) -> bool:
        """Give an authenticated connection a slot; False when `slot_refusal` says there is none."""
        self._authenticating.pop(connection.id, None)
        if connection.id in self._connections:
            return True
        claims = claims if claims is not None else connection.claims
        if self.slot_refusal(claims) is not None:
            return False
        self._connections[connection.id] = connection
        holder = connection.slot_holder = principal_of(claims)
        self._held[holder] = self._held.get(holder, 0) + 1
        self._count()
        return True

    def release(self, connection: ClientConnection) -> None:
        """Forget a connection and free its slot (idempotent)."""
        self._authenticating.pop(connection.id, None)
        if self._connections.pop(connection.id, None) is not None:
            holder = connection.slot_holder
            if holder is not None:
                connection.slot_holder = None
                left = self._held[holder] - 1
                if left:
                    self._held[holder] = left
                else:
                    del self._held[holder]
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
            c for c in self._connections.values() if c.last_activity <= cutoff and not c.calls and not c.queued_bytes
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
