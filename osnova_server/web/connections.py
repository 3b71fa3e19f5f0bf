"""TCP connections held at accept: the connection caps, the header timeout, the listening socket.

aiohttp's protocol (`RequestHandler`) hears of a connection only after its TLS handshake and has
no header timeout, so every accepted socket first meets a `ConnectionGuard`. The guard counts it
against `[limits] max_connections` and `max_connections_per_address` and closes it at once past
either (other addresses go on being served); runs the TLS handshake itself (asyncio's SSLProtocol), so
sockets still handshaking are counted and timed too; and closes, with 408, a connection that has
not finished its request line and headers within `[limits] header_timeout`. Then it hands every
byte on to aiohttp's handler unchanged. Idle keep-alive connections are aiohttp's own
`keepalive_timeout`, set from `[limits] keepalive_timeout` in app.py.

Running out of file descriptors makes the event loop report each failed accept; those reports
are folded into one warning a minute by `DescriptorShortage`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import resource
import socket
import ssl
import struct
import time
from asyncio import sslproto
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web

if TYPE_CHECKING:
    from aiohttp.web_protocol import RequestHandler

_LOGGER = logging.getLogger(__name__)

# Descriptors kept beyond max_connections: the database, the logs, manifest fetches, the
# listening sockets, and one accept burst (the listen backlog) of connections about to be closed.
RESERVED_DESCRIPTORS: Final = 256
LISTEN_BACKLOG: Final = 128
# Refusals and descriptor shortages are logged at most this often.
LOG_INTERVAL: Final = 60.0
_OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_REQUEST_TIMEOUT: Final = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%b"
)
# SO_LINGER on with a zero timeout: close() sends a reset.
_RESET: Final = struct.pack("ii", 1, 0)
_REQUEST_TIMEOUT_BODY: Final = b'{"error": "the request line and headers did not arrive in time; send them at once"}'

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def plain_address(peer: str) -> str:
    """The address as clients know it: an IPv4 client of a dual-stack socket without `::ffff:`."""
    if peer.startswith("::ffff:"):
        try:
            mapped = ipaddress.IPv6Address(peer).ipv4_mapped
        except ValueError:
            return peer
        if mapped is not None:
            return str(mapped)
    return peer


class LogThrottle:
    """Say something at most once per `interval` seconds, with how often it happened meanwhile."""

    __slots__ = ("interval", "clock", "_next", "_count")

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._next = 0.0
        self._count = 0

    def due(self) -> int:
        """Count one occurrence; how many happened since the last report if one is due now, else 0."""
        self._count += 1
        now = self.clock()
        if now < self._next:
            return 0
        count, self._count = self._count, 0
        self._next = now + self.interval
        return count


class ConnectionLimits:
    """Open connections, in all and per client address, against the configured caps."""

    __slots__ = ("max_total", "max_per_address", "exempt", "total", "_per_address", "_refusals")

    def __init__(self, max_total: int, max_per_address: int, exempt: Sequence[Network] = ()) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        # Trusted proxies carry many clients on one address: only the total applies to them.
        self.exempt = tuple(exempt)
        self.total = 0
        self._per_address: dict[str, int] = {}
        self._refusals = LogThrottle()

    def of(self, address: str) -> int:
        """Connections open from `address`."""
        return self._per_address.get(address, 0)

    def admit(self, address: str) -> bool:
        """Count a new connection from `address`, or refuse it (False) when a cap is reached."""
        if self.refuses(address):
            return False
        self._per_address[address] = self._per_address.get(address, 0) + 1
        self.total += 1
        return True

    def refuses(self, address: str) -> bool:
        """Whether a new connection from `address` is past a cap (a refusal, logged as one); counts nothing."""
        if self.total >= self.max_total:
            if count := self._refusals.due():
                self._report(f"{self.total} connections are open, [limits] max_connections = {self.max_total}", count)
            return True
        held = self._per_address.get(address, 0)
        if held >= self.max_per_address and not self._is_exempt(address):
            if count := self._refusals.due():
                self._report(f"{address} holds {held} connections, "
                             f"[limits] max_connections_per_address = {self.max_per_address}", count)
            return True
        return False

    def release(self, address: str) -> None:
        """Forget one connection from `address`."""
        held = self._per_address.get(address, 0)
        if held <= 1:
            self._per_address.pop(address, None)
        else:
            self._per_address[address] = held - 1
        self.total -= 1

    def _is_exempt(self, address: str) -> bool:
        """Whether `address` is a trusted proxy."""
        if not self.exempt:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.exempt)

    def _report(self, why: str, count: int) -> None:
        """Log the refusals since the last report (at most once a minute: a flood must not become a
        flood of log lines, nor of formatted strings that are never logged)."""
        _LOGGER.warning("closing new connections at accept: %s (%d refused since the last report)",
                        why, count)


class ConnectionGuard(asyncio.Protocol):
    """One accepted socket: counted, timed until its first request, then served by aiohttp."""

    __slots__ = (
        "_limits", "_make_handler", "_ssl_context", "_header_timeout", "_loop", "_address",
        "_raw", "_transport", "_handler", "_timer", "_deadline", "_in_request", "_counted",
    )

    def __init__(
        self,
        limits: ConnectionLimits,
        make_handler: Callable[[], RequestHandler],
        ssl_context: ssl.SSLContext | None,
        header_timeout: float,
    ) -> None:
        self._limits = limits
        self._make_handler = make_handler
        self._ssl_context = ssl_context
        self._header_timeout = header_timeout
        self._loop = asyncio.get_running_loop()
        self._address = ""
        self._raw: asyncio.Transport | None = None
        self._transport: asyncio.Transport | None = None
        self._handler: RequestHandler | None = None
        # The header clock: when the headers are due (0.0: not running), and the one timer that
        # checks it. Stopping the clock only clears the deadline, so a busy kept-alive connection
        # costs no timer per request: the timer fires at most once per header_timeout and re-arms
        # itself if the deadline moved.
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._in_request = False
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection or close it at once; then start TLS or hand it to aiohttp.

        With TLS this is called twice: for the TCP socket at accept, and for the encrypted
        stream once the handshake is done.
        """
        transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        if self._raw is not None:
            self._attach(transport)
            return
        self._raw = transport
        peer = transport.get_extra_info("peername")
        self._address = plain_address(str(peer[0])) if peer else "unknown"
        if not self._limits.admit(self._address):
            transport.abort()
            return
        self._counted = True
        self._arm()
        if self._ssl_context is None:
            self._attach(transport)
            return
        # The handshake is started here, synchronously, rather than with loop.start_tls(): an
        # event loop may read the socket between this call and a task's first step (uvloop
        # does), and those bytes would be lost to the handshake.
        handshake = self._loop.create_future()
        tls = sslproto.SSLProtocol(
            self._loop, self, self._ssl_context, handshake, server_side=True,
            ssl_handshake_timeout=self._header_timeout,  # type: ignore[arg-type]  # typeshed says int
        )
        transport.set_protocol(tls)
        tls.connection_made(transport)
        handshake.add_done_callback(self._handshake_done)

    def _handshake_done(self, handshake: asyncio.Future[None]) -> None:
        """A handshake that failed (or was cut short) leaves nothing counted."""
        error = None if handshake.cancelled() else handshake.exception()
        if self._handler is None:
            _LOGGER.debug("TLS handshake with %s failed: %s", self._address, error or "the client left")
            self._forget()

    def _attach(self, transport: asyncio.Transport) -> None:
        """Give the connection to a fresh aiohttp handler."""
        self._transport = transport
        self._handler = handler = self._make_handler()
        handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Pass bytes on; the first byte of a request on a kept-alive connection starts its clock."""
        handler = self._handler
        if handler is None:
            return
        if not self._deadline and not self._in_request:
            self._arm()
        handler.data_received(data)

    def eof_received(self) -> bool | None:
        """Pass the end of the client's stream on."""
        if self._handler is None:
            return None
        return self._handler.eof_received()  # type: ignore[func-returns-value]

    def pause_writing(self) -> None:
        """Pass flow control on."""
        if self._handler is not None:
            self._handler.pause_writing()

    def resume_writing(self) -> None:
        """Pass flow control on."""
        if self._handler is not None:
            self._handler.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        """Uncount the connection and tell aiohttp."""
        self._forget()
        if self._handler is not None:
            self._handler.connection_lost(exc)

    def request_started(self) -> None:
        """The request line and headers arrived: stop the header clock until the answer is sent."""
        self._in_request = True
        self._disarm()

    def request_finished(self, _task: object = None) -> None:
        """The answer went out; aiohttp's keep-alive timeout takes over while the connection idles."""
        self._in_request = False

    def _arm(self) -> None:
        """Start the header clock."""
        self._deadline = self._loop.time() + self._header_timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._expire)

    def _disarm(self) -> None:
        """Stop the header clock (its timer, if any, finds nothing due)."""
        self._deadline = 0.0

    def _expire(self) -> None:
        """The headers did not arrive in time: answer 408 if a request is under way, and close."""
        self._timer = None
        deadline = self._deadline
        if not deadline or self._in_request:
            return
        if self._loop.time() < deadline:  # the clock was restarted since this timer was set
            self._timer = self._loop.call_at(deadline, self._expire)
            return
        _LOGGER.debug("closing the connection from %s: no request headers within %g s",
                      self._address, self._header_timeout)
        if self._handler is None or self._transport is None:  # still in the TLS handshake
            if self._raw is not None:
                self._raw.abort()
            return
        # No answer is being written (the last one finished), so one can still be sent.
        self._transport.write(_REQUEST_TIMEOUT % (len(_REQUEST_TIMEOUT_BODY), _REQUEST_TIMEOUT_BODY))
        self._handler.force_close()

    def _forget(self) -> None:
        """Uncount the connection (once) and stop its clock."""
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._limits.release(self._address)


def guard_of(request: web.BaseRequest) -> ConnectionGuard | None:
    """The guard of the connection a request arrived on (None when served without one, e.g. in tests)."""
    transport = request.transport
    if transport is None:
        return None
    protocol = transport.get_protocol()
    return protocol if isinstance(protocol, ConnectionGuard) else None


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass through a `ConnectionGuard`; `[::]` serves IPv4 too."""

    __slots__ = ("_host", "_port", "_limits", "_header_timeout")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limits: ConnectionLimits,
        header_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=LISTEN_BACKLOG)
        self._host = host
        self._port = port
        self._limits = limits
        self._header_timeout = header_timeout

    @property
    def name(self) -> str:
        """The site's URL, as aiohttp names sites."""
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    @property
    def server(self) -> asyncio.AbstractServer | None:
        """The listening asyncio server, once started."""
        return self._server

    async def start(self) -> None:
        """Listen; every accepted socket gets its own guard."""
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        limits, context, timeout = self._limits, self._ssl_context, self._header_timeout

        def guard() -> ConnectionGuard:
            return ConnectionGuard(limits, server, context, timeout)

        sock = listening_socket(self._host, self._port, limits)
        if sock is not None:
            self._server = await loop.create_server(guard, sock=sock, backlog=self._backlog)
        else:  # a host name: asyncio resolves it and listens on each of its addresses
            self._server = await loop.create_server(
                guard, self._host, self._port, backlog=self._backlog, reuse_address=True,
            )


class AdmittingSocket(socket.socket):
    """A listening socket whose accept() resets, there and then, connections past a cap.

    asyncio's own event loop builds a task, a future and a transport for every socket it
    accepts, and schedules four callbacks, before the guard can refuse it: about 45 µs a
    connection, so an address re-opening 900 refused connections a second took bursts of tens of
    milliseconds from everyone else. Refused here, a connection costs its accept and its reset.
    uvloop accepts in C and never calls this method; there the guard refuses (in about 20 µs).
    The guard still counts, and checks again, every connection let through.
    """

    __slots__ = ("limits",)

    def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None,
                 limits: ConnectionLimits | None = None) -> None:
        super().__init__(family, type, proto, fileno)
        self.limits = limits

    def accept(self) -> tuple[socket.socket, Any]:
        """The next connection no cap refuses; BlockingIOError after a listen backlog of refusals.

        That error ends the event loop's accept loop for this turn, as an empty queue does, so
        a refusal flood cannot keep the loop from the connections already served.
        """
        limits = self.limits
        if limits is None:
            return super().accept()
        for _ in range(LISTEN_BACKLOG):
            conn, address = super().accept()
            if not limits.refuses(plain_address(str(address[0]))):
                return conn, address
            # A reset, not a FIN: nothing is left in TIME_WAIT for the refused.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            conn.close()
        raise BlockingIOError(errno.EAGAIN, "refused a listen backlog of connections; accepting again next turn")


def listening_socket(host: str, port: int, limits: ConnectionLimits) -> AdmittingSocket | None:
    """A bound `AdmittingSocket` for an IP address (None for a host name); `::` serves IPv4 too."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = AdmittingSocket(family, socket.SOCK_STREAM, limits=limits)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # asyncio sets IPV6_V6ONLY on every IPv6 socket; the wildcard should take IPv4 too.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if ip == ipaddress.IPv6Address("::") else 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def raise_descriptor_limit() -> int:
    """Raise the soft open-file limit to the hard one where allowed; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as err:  # e.g. systemd's SystemCallFilter=~@resources
            _LOGGER.debug("open-file limit stays at %d: %s", soft, err)
        else:
            soft = hard
    return soft


def descriptor_problem(max_connections: int, limit: int) -> str | None:
    """Why `max_connections` cannot fit under `limit` open files, or None when it fits."""
    usable = limit - RESERVED_DESCRIPTORS
    if max_connections <= usable:
        return None
    return (
        f"[limits] max_connections = {max_connections} does not fit under this process's open-file "
        f"limit of {limit} ({RESERVED_DESCRIPTORS} are kept for the server itself); lower it to "
        f"{max(usable, 1)} or raise the limit (LimitNOFILE= in the systemd unit, ulimit -n)"
    )


class DescriptorShortage:
    """The event loop's exception handler: failed accepts for lack of descriptors, once a minute."""

    __slots__ = ("_loop", "_previous", "_throttle")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._throttle = LogThrottle()

    def install(self) -> None:
        """Handle the loop's reports from now on."""
        self._loop.set_exception_handler(self)

    def uninstall(self) -> None:
        """Put the previous handler back."""
        self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Fold descriptor shortages into one line a minute; pass anything else on."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _OUT_OF_DESCRIPTORS:
            count = self._throttle.due()
            if count:
                _LOGGER.warning(
                    "out of file descriptors: new connections cannot be accepted (%s; %d times since the "
                    "last report); raise LimitNOFILE or lower [limits] max_connections",
                    exc.strerror or exc, count,
                )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
