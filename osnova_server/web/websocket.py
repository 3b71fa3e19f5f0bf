"""GET /ws: JSON-RPC 2.0 both ways over one WebSocket, served by the same registry as /rpc.

The order of checks is CONTRACT 5's. Before the upgrade: a cross-origin page was refused with 403
(web/origin.py) and a bad header token with 401 (web/auth.py); the upgrade is charged to the
rate limiter (429); a full pool, a device already holding `max_clients_per_device` sockets, or
too many sockets still authenticating (16 in all, 4 from one address) is refused with 503 and
Retry-After. After the upgrade, a socket without a header token must send an `auth` request
within `[server] ws_auth_timeout` seconds or be closed with 4401 (silence counts as a failed
authentication towards a ban), and it takes a slot only once authenticated (1013 if none is
left by then). The first frame of an authenticated socket is the `connected` notification.

Each text frame is decoded, charged to the limiter (one token per batch member) and run at once
in the reading task; a call that has to wait goes on there while reading goes on in a new task,
so a slow call does not hold up the next (`_Reader`). At most MAX_IN_FLIGHT calls of a socket
wait at once; past that, or while more than `[limits] max_ws_queue_bytes` of answers and events
wait to be sent, the socket is not read, which lets TCP push back on the client. Answers and
events are written at once when nothing waits before them, else queued (web/pool.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any, Final

import aiojobs
from aiohttp import WSCloseCode, WSMsgType, web

from osnova_server.errors import RateLimited
from osnova_server.events import DEVICES_REVOKED, Event, Listener
from osnova_server.logs import audit
from osnova_server.rpc import codec, protocol
from osnova_server.rpc.context import Context
from osnova_server.rpc.protocol import Envelope, error_answer, resume_started
from osnova_server.runtime import Runtime
from osnova_server.security.ratelimit import retry_after_header
from osnova_server.security.tokens import Claims, TokenInvalid
from osnova_server.timestamps import rfc3339
from osnova_server.web.errors import json_error
from osnova_server.web.keys import CLAIMS_KEY, REMOTE_KEY, STATE_KEY, ServerState
from osnova_server.web.pool import (
    CLIENT_NOT_READING,
    CLOSE_TIMEOUT,
    WS_IDLE,
    WS_UNAUTHORIZED,
    ClientConnection,
    ConnectionPool,
    principal_of,
)
from osnova_server.web.ratelimit import bucket_key, charge

_LOGGER = logging.getLogger(__name__)

POOL_KEY: Final = web.AppKey("ws_pool", ConnectionPool)

# Calls of one socket waiting at once; past this the socket is not read until one finishes.
MAX_IN_FLIGHT: Final = 32
# Calls answered without waiting (a batch counts each member; a ping or a pong counts as one)
# in a row before the reader lets the loop run other sockets.
QUICK_RUN: Final = 64
# The reaper looks every idle_timeout / 4 seconds, but at least this often.
REAP_INTERVAL_MAX: Final = 5.0
# A revoked device's calls in flight may answer for this long before its sockets close.
REVOKE_GRACE: Final = 0.5
# What a refused upgrade is told to wait, in seconds.
RETRY_AFTER_BUSY: Final = 5

AUTH_EXAMPLE: Final = '{"jsonrpc": "2.0", "method": "auth", "params": {"token": "..."}, "id": 1}'
_IN: Final = {"direction": "in"}
# Looked up once: an enum member read off its class costs 60-70 ns, on every message.
_TEXT: Final = WSMsgType.TEXT


def setup_websocket(app: web.Application) -> None:
    """Add GET /ws, its connection pool, the event fan-out, the idle reaper and the shutdown close."""
    state = app[STATE_KEY]
    pool = ConnectionPool(max_clients=1, metrics=state.metrics)  # sized from the config at startup
    app[POOL_KEY] = pool
    app.router.add_get("/ws", websocket_view)
    # What start() opened, for stop() to close: the event-bus listener and the reaper job.
    listening: list[Callable[[], None]] = []
    reaping: list[aiojobs.Job[None]] = []

    async def start(app: web.Application) -> None:
        runtime = state.runtime
        pool.max_clients = runtime.config.server.max_clients
        pool.max_clients_per_device = runtime.config.server.max_clients_per_device
        pool.max_queue_bytes = runtime.config.limits.max_ws_queue_bytes
        pool.accepting = True
        runtime.connection_count = pool.__len__
        listening.append(runtime.events.listen(_event_listener(pool, runtime)))
        reaping.append(await runtime.scheduler.spawn(_reap(pool, runtime)))
        reaping.append(await runtime.scheduler.spawn(_heartbeat(pool, runtime)))

    async def stop(app: web.Application) -> None:
        pool.accepting = False
        while listening:
            listening.pop()()
        while reaping:
            await reaping.pop().close()
        await _close_all(pool, float(state.runtime.config.server.shutdown_timeout))

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


def _busy(message: str) -> web.Response:
    """The 503 answer to an upgrade the server has no room for."""
    return json_error(503, message, {"Retry-After": str(RETRY_AFTER_BUSY)}, retry_after=RETRY_AFTER_BUSY)


async def websocket_view(request: web.Request) -> web.StreamResponse:
    """Upgrade to a WebSocket and serve JSON-RPC on it until either side closes."""
    state = request.app[STATE_KEY]
    pool = request.app[POOL_KEY]
    config = state.runtime.config
    socket = web.WebSocketResponse(
        # None: the pool's heartbeat job pings silent sockets (`_heartbeat`); aiohttp's own
        # heartbeat re-arms a timer through a loop callback for every frame received.
        heartbeat=None,
        # aiohttp refuses a frame of exactly max_msg_size bytes; the limit is "at most N bytes".
        max_msg_size=config.limits.max_ws_message_bytes + 1,
        # Off: JSON-RPC messages are small, and a deflate context costs ~100 KiB per socket.
        compress=False,
        # Pings are answered here, so that a client's own pings count as activity for the reaper.
        autoping=False,
        timeout=CLOSE_TIMEOUT,
    )
    if not socket.can_prepare(request):
        return json_error(400, "GET /ws is a WebSocket endpoint; connect with a WebSocket client")
    refusal = await charge(request, 1)
    if refusal is not None:
        return refusal
    if not pool.accepting:
        return _busy("the server is shutting down; reconnect in a few seconds")
    if pool.full:
        return _busy(
            f"the server already holds its [server] max_clients = {pool.max_clients} WebSocket "
            "connections; try again later or close another client"
        )
    claims = request[CLAIMS_KEY]
    connection = ClientConnection(pool, socket, request[REMOTE_KEY], request.transport, pool.max_queue_bytes)
    if claims is None:
        waiting = pool.auth_refusal(connection.address)
        if waiting is not None:
            return _busy(f"{waiting}; authenticate the open ones or try again in a few seconds")
        pool.wait_for_auth(connection)
    else:
        held = pool.slot_refusal(claims)
        if held is not None:
            return _busy(_slot_refusal(held))
        pool.admit(connection, claims)
        connection.authenticate(claims)
        refused = await _claim_shared_slot(connection, state.runtime, claims)
        if refused is not None:
            pool.release(connection)
            return _busy(refused)
    try:
        await socket.prepare(request)
        connection.start()
        reader = await _open_session(connection, state, claims)
        # Awaited here, not in a helper, so an idle socket holds one frame fewer.
        if reader is not None and not await reader.read():
            await reader.finished()
    finally:
        state.runtime.slots.release(connection.id)
        connection.close(socket.close_code or WSCloseCode.OK, "")
        await connection.wait_closed()
        audit(
            "ws", outcome="closed", connection=connection.id, principal=principal_of(connection.claims),
            remote=connection.address, status=connection.close_code,
        )
    return socket


async def _open_session(connection: ClientConnection, state: ServerState, claims: Claims | None) -> _Reader | None:
    """Authenticate if needed and say `connected`; the socket's reader, or None once it is closing."""
    runtime = state.runtime
    pool = connection.pool
    if claims is None:
        authenticated = await _authenticate(connection, runtime)
        if authenticated is None:
            return None
        claims, request_id = authenticated
        held = pool.slot_refusal(claims)
        if held is not None:
            connection.close(WSCloseCode.TRY_AGAIN_LATER, _slot_refusal(held))  # it stops waiting too
            return None
        pool.admit(connection, claims)
        connection.authenticate(claims)
        refused = await _claim_shared_slot(connection, runtime, claims)
        if refused is not None:
            connection.close(WSCloseCode.TRY_AGAIN_LATER, refused)
            return None
        if request_id is not _NOTIFICATION:
            connection.send(codec.dumps({"jsonrpc": "2.0", "result": True, "id": request_id}))
    if connection.closing:
        return None
    runtime.record_seen(claims)
    connection.send(codec.dumps({
        "jsonrpc": "2.0", "method": "connected",
        "params": {"connection_id": connection.id, "timestamp": rfc3339()},
    }))
    audit(
        "ws", outcome="connected", connection=connection.id, principal=principal_of(claims),
        remote=connection.address,
    )
    return _Reader(connection, state, claims)


_NOTIFICATION: Final = object()


def _slot_refusal(limit: str) -> str:
    """Why an authenticated socket gets no slot, naming the limit."""
    if "per_device" in limit:
        return f"this device already holds {limit} WebSockets; close one first"
    return f"the server already holds its {limit} WebSockets; try again later or close another client"


async def _claim_shared_slot(connection: ClientConnection, runtime: Runtime, claims: Claims) -> str | None:
    """Take the socket's slot in the cluster's ledger (always granted on a single server).

    None when granted, else the refusal to send: the pool only counted this process's sockets.
    """
    server = runtime.config.server
    refused = await runtime.slots.claim(
        connection.id, principal_of(claims), server.max_clients, server.max_clients_per_device,
    )
    if refused is None:
        return None
    return (
        f"the servers already hold their [server] {refused} WebSocket connections; "
        "try again later or close another client"
    )


async def _authenticate(connection: ClientConnection, runtime: Runtime) -> tuple[Claims, Any] | None:
    """Wait for the `auth` request; its claims and id, or None once the socket is being closed."""
    socket = connection.socket
    timeout = runtime.config.server.ws_auth_timeout
    control = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await socket.receive()
                if message.type is WSMsgType.PING:
                    await socket.pong(message.data)
                elif message.type is not WSMsgType.PONG:
                    break
                connection.heard()
                # As in _Reader.read: a flood of pings in one read must not hold the loop.
                control += 1
                if control >= QUICK_RUN:
                    control = 0
                    await asyncio.sleep(0)
    except TimeoutError:
        # Holding an authentication slot without a word is squatting: it counts like a bad token.
        audit("auth", outcome="refused", reason="no auth message", remote=connection.address, transport="ws")
        runtime.record_auth_failure(connection.address, "websocket_auth")
        connection.close(WS_UNAUTHORIZED, f"no auth message within {timeout:g} s; send {AUTH_EXAMPLE} first")
        return None
    if message.type is WSMsgType.BINARY:
        _count_in(connection)
        connection.close(WSCloseCode.UNSUPPORTED_DATA, "binary frames are not accepted; send JSON-RPC as text")
        return None
    if message.type is not WSMsgType.TEXT:
        return None  # the client left, or aiohttp closed the socket (e.g. 1009, message too big)
    _count_in(connection)
    token, request_id = _auth_request(message.data)
    if token is None:
        connection.close(WS_UNAUTHORIZED, f"the first message must be {AUTH_EXAMPLE}")
        return None
    try:
        try:
            claims = runtime.tokens.verify(token)
        except TokenInvalid as err:
            claims = await runtime.verify_again(token, err)  # paired on another process just now?
    except TokenInvalid as err:
        audit("auth", outcome="refused", reason=err.reason, remote=connection.address, transport="ws")
        runtime.record_auth_failure(connection.address, "websocket_auth")
        connection.close(WS_UNAUTHORIZED, f"invalid access token: {err.reason}")
        return None
    return claims, request_id


def _auth_request(raw: str) -> tuple[str | None, Any]:
    """The token and id of an `auth` request, or (None, None) if `raw` is anything else."""
    try:
        message = codec.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or message.get("method") != "auth":
        return None, None
    params = message.get("params")
    token: Any = None
    if isinstance(params, dict) and set(params) == {"token"}:
        token = params["token"]
    elif isinstance(params, list) and len(params) == 1:
        token = params[0]
    if not isinstance(token, str):
        return None, None
    if "id" not in message:
        return token, _NOTIFICATION
    request_id = message["id"]
    if not _is_plain_id(request_id):
        return None, None
    return token, request_id


def _is_plain_id(request_id: Any) -> bool:
    """Whether an id is one JSON-RPC allows: a string, a whole number, or null (not a bool)."""
    if request_id is None or isinstance(request_id, str):
        return True
    if isinstance(request_id, bool):
        return False
    if isinstance(request_id, int):
        return True
    return isinstance(request_id, float) and request_id.is_integer()


def _count_in(connection: ClientConnection) -> None:
    """Count one message received."""
    metrics = connection.pool.metrics
    if metrics is not None:
        metrics.ws_messages.inc(_IN)


class _Reader:
    """Serves one authenticated socket's frames: each message runs at once, in the reading task.

    Most calls answer from memory without waiting for anything, and a task for each would cost
    more than the call (on a loop that runs little else, a third of the time of a round trip).
    So a message starts in the task that read it; if it finishes without waiting (the usual
    case), its answer is written and the next frame read. If it has to wait (a database read,
    a manifest fetch), it goes on in this task, which stops reading, and reading goes on in a new
    task; a call stays in the task it started in because what it captured before waiting (an
    `asyncio.timeout` holds `current_task()`) has to keep pointing at the task that runs it.
    The batch dispatcher does the same for a batch's members (rpc/protocol.py, `_run_batch`).

    At most MAX_IN_FLIGHT calls of one socket wait at once; past that, and while more than
    `[limits] max_ws_queue_bytes` of answers wait to be sent, the socket is not read.
    """

    __slots__ = ("connection", "ctx", "claims", "dispatcher", "runtime", "bucket", "messages", "ended", "tasks")

    def __init__(self, connection: ClientConnection, state: ServerState, claims: Claims) -> None:
        self.connection = connection
        self.claims = claims
        self.ctx = Context(state.runtime, claims, connection.address, "ws", connection)
        self.dispatcher = state.dispatcher
        self.runtime = state.runtime
        self.bucket = bucket_key(claims, connection.address)
        self.messages = state.metrics.ws_messages
        # Made when reading first moves to a new task; resolved by the task that sees the
        # socket end, for the first one to wait on.
        self.ended: asyncio.Future[None] | None = None
        # The tasks made to go on reading (each may be running a call that waited by now):
        # the loop keeps only weak references to tasks. Made with the first.
        self.tasks: set[asyncio.Task[None]] | None = None

    async def finished(self) -> None:
        """Wait until the task reading now sees the socket end (after `read` returned False)."""
        if self.ended is not None:
            await self.ended

    async def _read_on(self, ended: asyncio.Future[None]) -> None:
        """Go on reading in a task of its own while the call that waited runs in the previous one."""
        try:
            done = await self.read()
        except asyncio.CancelledError:
            ended.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - handed to the connection's own task, which raises it
            if not ended.done():
                ended.set_exception(err)
            return
        if done and not ended.done():
            ended.set_result(None)

    async def read(self) -> bool:
        """Read and run frames; True once the socket is done, False if reading went on in a new task."""
        connection = self.connection
        socket = connection.socket
        # Not bound methods: a local of this suspended frame lives as long as an idle socket.
        messages = self.messages
        runtime = self.runtime
        clock = connection.pool.clock
        claims = self.claims
        # Frames answered without waiting since the loop last ran other work (a batch counts
        # each member): a client that pipelines many quick calls, batches or pings (40,000 empty
        # ones fit in one socket read) must not keep the loop from every other socket.
        quick = 0
        while True:
            if quick >= QUICK_RUN:
                quick = 0
                await asyncio.sleep(0)
            if not connection.has_room:
                # More than max_ws_queue_bytes wait for this client: read none of its requests
                # until it takes some (aiohttp stops reading the socket too, so TCP pushes back).
                await connection.wait_for_room()
                if connection.closing:
                    return True
            message = await socket.receive()
            kind = message.type
            if kind is _TEXT:
                messages.inc(_IN)
                if connection.draining:
                    quick += 1
                    continue  # closing with a grace period: calls that arrive now are not run
                connection.last_activity = connection.last_heard = clock()  # touch(), inlined
                runtime.record_seen(claims)
                if connection.calls >= MAX_IN_FLIGHT:
                    await connection.wait_for_calls(MAX_IN_FLIGHT - 1)
                    if connection.draining:
                        quick += 1
                        continue
                # What the call sets while it runs stays in this task's context if it waits, so
                # reading goes on from the context as it was before it.
                before = contextvars.copy_context()
                serving = self.serve(message.data)
                try:
                    waiting_on = serving.send(None)
                except StopIteration as done:
                    quick += done.value
                    continue
                connection.call_started()
                if self.ended is None:
                    self.ended = asyncio.get_running_loop().create_future()
                try:
                    task = asyncio.get_running_loop().create_task(self._read_on(self.ended), context=before)
                    if self.tasks is None:
                        self.tasks = set()
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                    await resume_started(serving, waiting_on)
                finally:
                    connection.call_ended()
                return False
            if kind is WSMsgType.PING:
                connection.touch()
                await socket.pong(message.data)
            elif kind is WSMsgType.PONG:
                connection.heard()
            elif kind is WSMsgType.BINARY:
                messages.inc(_IN)
                connection.close(WSCloseCode.UNSUPPORTED_DATA, "binary frames are not accepted; send JSON-RPC as text")
                return True
            else:
                # CLOSE, CLOSING, CLOSED or ERROR: the socket is done; free its slot now, not
                # once the calls still waiting are over.
                connection.close(socket.close_code or WSCloseCode.OK, "")
                return True
            quick += 1  # a ping or a pong, answered without waiting too

    async def serve(self, raw: str) -> int:
        """Run one message and send its answer, if one is owed; how many calls it held (for QUICK_RUN)."""
        runtime = self.runtime
        limits = runtime.config.limits
        envelope: Envelope | None = None
        try:
            envelope = protocol.decode(raw, limits.max_batch)
            # The in-process limiter answers without waiting, so this message still runs inline.
            wait = await runtime.limiter.acquire(self.bucket, envelope.cost)
            if wait > 0:
                refused = _rate_limited(envelope, wait)
                answer = None if refused is None else codec.dumps(refused)
            else:
                answer = await self.dispatcher.respond(envelope, self.ctx, limits.max_response_bytes)
            if answer is not None:
                self.connection.send(answer)
        except Exception:
            _LOGGER.exception("WebSocket %s: a message could not be served", self.connection.id)
        return 1 if envelope is None else envelope.cost


def _request_id(member: Any) -> Any:
    """A member's id if it is a valid JSON-RPC id, else None."""
    request_id = member.get("id") if isinstance(member, dict) else None
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int, float)):
        return None
    return request_id


def _rate_limited(envelope: Envelope, wait: float) -> Any:
    """The -32029 answer to a message over the rate limit: one error per request it holds."""
    seconds = int(retry_after_header(wait))
    error = RateLimited(f"rate limit exceeded; retry in {seconds} s", data={"retry_after": seconds})
    if envelope.error is not None:
        return error_answer(error)
    answers = [
        error_answer(error, _request_id(member))
        for member in envelope.members
        if not (isinstance(member, dict) and "id" not in member)  # notifications get no answer
    ]
    if envelope.is_batch:
        return answers or None
    return answers[0] if answers else None


def _event_listener(pool: ConnectionPool, runtime: Runtime) -> Listener:
    """The event-bus listener: fan events out to subscribers the roles admit; close a revoked device's sockets."""

    def listener(event: Event) -> None:
        pool.deliver(event, lambda claims: runtime.receives(claims, event))
        if event.topic == DEVICES_REVOKED:
            device_id = event.data.get("device_id")
            if isinstance(device_id, str):
                for connection in pool.of_device(device_id):
                    connection.close(WS_UNAUTHORIZED, "this device was revoked; pair it again", REVOKE_GRACE)

    return listener


async def _reap(pool: ConnectionPool, runtime: Runtime) -> None:
    """Close connections silent for longer than [server] idle_timeout with 4408 (an aiojobs job)."""
    while True:
        timeout = runtime.config.server.idle_timeout
        await asyncio.sleep(min(timeout / 4, REAP_INTERVAL_MAX))
        for connection in pool.idle(timeout):
            _LOGGER.info(
                "closing WebSocket %s from %s: idle for more than %d s", connection.id, connection.address, timeout,
            )
            connection.close(WS_IDLE, f"idle for more than {timeout} s; send a message at least that often")
        for connection in pool.not_reading(timeout):
            _LOGGER.warning(
                "closing WebSocket %s from %s (device %s) with 1008: it read nothing for %d s, %d bytes waiting",
                connection.id, connection.address, connection.device_id or "-", timeout, connection.queued_bytes,
            )
            connection.close(WSCloseCode.POLICY_VIOLATION, CLIENT_NOT_READING)


async def _heartbeat(pool: ConnectionPool, runtime: Runtime) -> None:
    """Ping sockets silent for [server] ws_heartbeat seconds; drop those that do not answer (an aiojobs job).

    Every socket, authenticated or not, is looked at every ws_heartbeat / 4 seconds: one that
    sent nothing for ws_heartbeat seconds is pinged, and one that then sends nothing (no pong)
    for ws_heartbeat / 2 seconds more is dropped and its slot freed, as aiohttp's heartbeat does.
    """
    while True:
        interval = float(runtime.config.server.ws_heartbeat)
        await asyncio.sleep(interval / 4)
        for connection in pool.everyone():
            connection.keep_alive(interval)


async def _close_all(pool: ConnectionPool, timeout: float) -> None:
    """At shutdown: let each socket's calls answer, then close it with 1001."""
    connections = pool.everyone()
    if not connections:
        return
    calls = sum(connection.calls for connection in connections)
    _LOGGER.info("closing %d WebSockets; waiting for %d calls in flight", len(connections), calls)

    for connection in connections:
        connection.close(WSCloseCode.GOING_AWAY, "server shutting down; reconnect in a few seconds", timeout)
    await asyncio.gather(*(connection.wait_closed() for connection in connections))
