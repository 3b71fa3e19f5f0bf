"""Run the server in the foreground: bind, serve, reload on SIGHUP, stop gracefully on SIGTERM.

The lifecycle is the contract's: sockets are bound before systemd hears READY=1; SIGTERM and
SIGINT stop accepting, give in-flight requests `[server] shutdown_timeout` seconds, send
STOPPING=1 and return 0; SIGHUP re-reads the config file and applies what can change without
dropping a connection (TLS certificate, log level, CORS origins, rate limits).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import signal
import ssl
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Final

from aiohttp import web

from osnova_server import config as config_module
from osnova_server import systemd
from osnova_server.app import create_app
from osnova_server.bind import bind_problem
from osnova_server.config import Config, ConfigError
from osnova_server.discovery import Advertising
from osnova_server.logs import LoggingHandle, setup_logging
from osnova_server.runtime import StateDirUnusable
from osnova_server.security.renewal import CertificateRenewal
from osnova_server.security.secret import configured_secret
from osnova_server.security.tls import TlsError, certificate_not_after, create_ssl_context, reload_ssl_context
from osnova_server.services.pairing import server_fingerprint
from osnova_server.statelock import StateDirBusy, StateDirLockError, holder_pid
from osnova_server.store import StoreError
from osnova_server.web.access_log import AccessLog
from osnova_server.web.connections import (
    ConnectionLimits,
    DescriptorShortage,
    GuardedSite,
    descriptor_problem,
    raise_descriptor_limit,
)
from osnova_server.web.keys import STATE_KEY
from osnova_server.web.pool import WS_UNAUTHORIZED
from osnova_server.web.websocket import POOL_KEY

_LOGGER = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
# What a SIGHUP cannot change in a running server; a change to one of these needs a restart.
RESTART_ONLY: Final = (
    ("server", "bind_address"),
    ("server", "state_dir"),
    ("server", "trusted_proxies"),
    ("server", "shutdown_timeout"),
    ("server", "max_clients"),
    ("server", "max_clients_per_device"),
    ("tls", "enabled"),
    ("auth", "jwt_secret"),
    ("auth", "jwt_secret_file"),
    ("auth", "token_expiry"),
    ("logging", "format"),
    ("logging", "file"),
    ("logging", "access_log"),
    ("limits", "max_body_bytes"),
    ("limits", "max_connections"),
    ("limits", "max_connections_per_address"),
    ("limits", "header_timeout"),
    ("limits", "keepalive_timeout"),
    ("limits", "max_ws_queue_bytes"),
    ("metrics", "allow_from"),
    ("apps", "allow_http"),
    ("apps", "ant_gateway"),
    ("apps", "fetch_timeout"),
    ("tracing", "enabled"),
    ("tracing", "otlp_endpoint"),
    ("tracing", "service_name"),
    ("tracing", "sample_ratio"),
    ("discovery", "mdns"),
)


class StartupError(Exception):
    """The server cannot start; `exit_code` says whether it is the config's fault (2) or not (1)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Server:
    """One running server: its application, runner, site and TLS context."""

    def __init__(self, config: Config, logging_handle: LoggingHandle | None = None) -> None:
        self.config = config
        self.logging_handle = logging_handle
        self.ssl_context: ssl.SSLContext | None = None
        self.app = create_app(config)
        self.runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=logging.getLogger("aiohttp.access") if config.logging.access_log else None,
            access_log_class=AccessLog,
            shutdown_timeout=float(config.server.shutdown_timeout),
        )
        self.stopping = asyncio.Event()
        limits = config.limits
        proxies = [ipaddress.ip_network(proxy, strict=False) for proxy in config.server.trusted_proxies]
        self.connections = ConnectionLimits(limits.max_connections, limits.max_connections_per_address, proxies)
        self._shortage: DescriptorShortage | None = None
        self.advertising: Advertising | None = None

    async def start(self) -> None:
        """Open the runtime and bind the listening socket."""
        try:
            # Checked before anything is created, so a bad secret leaves no state behind.
            configured_secret(self.config)
        except ConfigError as err:
            raise StartupError("\n".join(err.problems), EXIT_USAGE) from None
        problem = descriptor_problem(self.config.limits.max_connections, raise_descriptor_limit())
        if problem is not None:
            raise StartupError(problem, EXIT_USAGE)
        if self.config.tls.enabled:
            try:
                self.ssl_context = create_ssl_context(Path(self.config.tls.cert_path), Path(self.config.tls.key_path))
            except TlsError as err:
                raise StartupError(str(err), EXIT_USAGE) from None
        # Before the runtime opens (and creates the state dir): a port in use leaves nothing behind.
        # A server already on this state dir holds the port too; the lock then names its PID.
        held = holder_pid(self.config.state_dir) is not None
        refusal = None if held else bind_problem(self.config)
        if refusal is not None:
            raise StartupError(refusal.message, EXIT_USAGE if refusal.config_fault else EXIT_FAILURE)
        try:
            await self.runner.setup()
        except ConfigError as err:
            raise StartupError("\n".join(err.problems), EXIT_USAGE) from None
        except (StoreError, StateDirBusy, StateDirLockError, StateDirUnusable) as err:
            raise StartupError(str(err), EXIT_FAILURE) from None
        site = GuardedSite(
            self.runner, self.config.host, self.config.port, self.connections,
            self.config.limits.header_timeout, self.ssl_context,
        )
        self._shortage = DescriptorShortage(asyncio.get_running_loop())
        self._shortage.install()
        try:
            await site.start()
        except OSError as err:
            await self.stop()
            if err.errno == errno.EADDRINUSE:
                raise StartupError(f"address {self.config.server.bind_address} is already in use") from None
            if err.errno == errno.EACCES:
                raise StartupError(
                    f"not allowed to bind {self.config.server.bind_address}; use a port above 1023"
                ) from None
            raise StartupError(f"cannot bind {self.config.server.bind_address}: {err.strerror}") from None
        bound = _bound_address(site) or self.config.server.bind_address
        if self.config.port == 0:
            # Port 0 asks the kernel for a free port; pairing payloads must name the real one.
            self._pin_port()
        _LOGGER.info("osnova-server listening on %s://%s", self.config.scheme, bound)
        runtime = self.app[STATE_KEY].runtime
        # In the background: a LAN without multicast, or a slow one, never delays serving.
        self.advertising = Advertising(self.config, self.port, lambda: server_fingerprint(runtime))
        self.advertising.start()
        if self.ssl_context is not None:
            self._observe_certificate()
            renewal = CertificateRenewal(self._certificate_paths, self._serve_renewed_certificate)
            await self.app[STATE_KEY].runtime.scheduler.spawn(renewal.run())

    def _certificate_paths(self) -> tuple[Path, Path]:
        """The certificate and key the running config names."""
        return Path(self.config.tls.cert_path), Path(self.config.tls.key_path)

    def _observe_certificate(self) -> None:
        """Show when the served certificate expires in /metrics."""
        try:
            expires_at = certificate_not_after(Path(self.config.tls.cert_path)).timestamp()
        except TlsError as err:
            _LOGGER.warning("cannot read the served certificate's expiry: %s", err)
            return
        self.app[STATE_KEY].metrics.observe_certificate(expires_at)

    def _serve_renewed_certificate(self) -> None:
        """After the renewal job reissued the certificate: serve it from the next handshake on."""
        assert self.ssl_context is not None
        try:
            reload_ssl_context(self.ssl_context, *self._certificate_paths())
        except TlsError as err:
            _LOGGER.error("the renewed TLS certificate could not be loaded; still serving the old one: %s", err)
            return
        self._observe_certificate()
        if self.advertising is not None:
            self.advertising.reload(self.config)  # the record's fp follows the certificate

    def _pin_port(self) -> None:
        """Record the kernel-chosen port in the running config (what pairing addresses use)."""
        host = self.config.host
        address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self.config = config_module.replace(self.config, "server", bind_address=address)
        self.app[STATE_KEY].runtime.config = self.config

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        for address in self.runner.addresses:
            if isinstance(address, tuple):
                return int(address[1])
        return self.config.port

    def reload(self) -> None:
        """Apply a re-read config file; on any problem keep everything as it was and log why."""
        path = self.config.source
        try:
            new = config_module.load(path)
        except ConfigError as err:
            _LOGGER.error("reload refused, keeping the running config: %s", err)
            return
        if new.port == 0:  # the socket stays bound where it is; keep naming that port
            new = config_module.replace(new, "server", bind_address=self.config.server.bind_address)
        if new.tls.enabled and self.ssl_context is not None:
            try:
                reload_ssl_context(self.ssl_context, Path(new.tls.cert_path), Path(new.tls.key_path))
            except TlsError as err:
                _LOGGER.error("reload kept the old TLS certificate: %s", err)
                new = config_module.replace(new, "tls", **_as_dict(self.config.tls))
        if self.logging_handle is not None:
            self.logging_handle.set_level(new.logging.level)
        self.app[STATE_KEY].runtime.reload(new)
        self._follow_secret(new)
        if self.advertising is not None:
            self.advertising.reload(new)
        needs_restart = [
            f"[{section}] {key}"
            for section, key in RESTART_ONLY
            if getattr(getattr(new, section), key) != getattr(getattr(self.config, section), key)
        ]
        if needs_restart:
            _LOGGER.warning("changes to %s take effect only after a restart", ", ".join(needs_restart))
        self.config = new
        if self.ssl_context is not None:
            self._observe_certificate()
        _LOGGER.info("configuration reloaded from %s", path or "embedded defaults")
        _LOGGER.debug(
            "reload applied: log level %s, rate limit %s/s (burst %s), CORS origins %s",
            new.logging.level, new.rate_limit.requests_per_second, new.rate_limit.burst_size,
            new.cors.allowed_origins,
        )

    def _follow_secret(self, new: Config) -> None:
        """Sign with the secret the config now gives (`rotate-secret` wrote a new one), if it changed."""
        runtime = self.app[STATE_KEY].runtime
        try:
            secret = configured_secret(new)
        except ConfigError as err:
            _LOGGER.error("reload kept the old JWT secret: %s", "; ".join(err.problems))
            return
        if secret is None or secret == runtime.secret:
            return
        runtime.rotate_secret(secret)
        # Their tokens no longer verify: the clients reconnect with fresh ones.
        for connection in self.app[POOL_KEY].everyone():
            connection.close(WS_UNAUTHORIZED, "the server's secret was replaced; reconnect with a fresh token")

    async def stop(self) -> None:
        """Withdraw the mDNS record, stop accepting, let in-flight requests finish within the grace period."""
        try:
            if self.advertising is not None:
                await self.advertising.stop()
            await self.runner.cleanup()
        finally:
            if self._shortage is not None:
                self._shortage.uninstall()
                self._shortage = None


def _as_dict(section: object) -> dict[str, object]:
    """A section dataclass as keyword arguments."""
    return {name: getattr(section, name) for name in section.__slots__}  # type: ignore[attr-defined]


def _bound_address(site: GuardedSite) -> str | None:
    """The name of the bound socket, e.g. 127.0.0.1:8080."""
    server = site.server
    sockets = getattr(server, "sockets", None) or []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None


_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class SignalRoutes:
    """Route process signals to callbacks on the event loop; put the old handlers back after.

    asyncio's `loop.add_signal_handler` learns which signal arrived only from a byte written to
    its self-pipe; when that pipe is full (thousands of thread-pool completions queued at once)
    the byte is lost, and with it a SIGTERM. A Python-level handler always runs, so it is used
    instead, and hands the callback to the loop.
    """

    __slots__ = ("_loop", "_previous")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Route signals to `loop`; nothing is changed until `route`."""
        self._loop = loop
        self._previous: dict[signal.Signals, _Handler] = {}

    def route(self, signum: signal.Signals, callback: Callable[[], object]) -> None:
        """From now on, `signum` runs `callback` on the loop."""
        loop = self._loop

        def handler(_signum: int, _frame: FrameType | None) -> None:
            """Runs in the main thread between two bytecodes: only hand over to the loop."""
            if not loop.is_closed():
                loop.call_soon_threadsafe(callback)

        self._previous.setdefault(signum, signal.getsignal(signum))
        signal.signal(signum, handler)

    def restore(self) -> None:
        """Put back the handlers that were there before."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


async def serve(config: Config, logging_handle: LoggingHandle | None = None) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code."""
    server = Server(config, logging_handle)
    signals = SignalRoutes(asyncio.get_running_loop())
    try:
        # A SIGTERM while starting lets the start finish, then shuts down at once.
        signals.route(signal.SIGTERM, server.stopping.set)
        signals.route(signal.SIGINT, server.stopping.set)
        await server.start()
        signals.route(signal.SIGHUP, server.reload)
        systemd.notify(systemd.READY)
        watchdog = systemd.watchdog_interval()
        if watchdog is not None:
            await server.app[STATE_KEY].runtime.scheduler.spawn(_watchdog(watchdog))
        try:
            await server.stopping.wait()
        finally:
            _LOGGER.info("shutting down; in-flight requests get %s s", server.config.server.shutdown_timeout)
            systemd.notify(systemd.STOPPING)
            # The grace is bounded by shutdown_timeout already; a repeated signal must not turn a
            # clean exit 0 into death by signal (systemd escalates to SIGKILL itself if it must).
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signals.route(signum, lambda: _LOGGER.info("already shutting down"))
            await server.stop()
    finally:
        signals.restore()
    _LOGGER.info("stopped")
    return EXIT_OK


async def _watchdog(interval: float) -> None:
    """Tell systemd we are alive every `interval` seconds (half of WatchdogSec)."""
    while True:
        systemd.notify(systemd.WATCHDOG)
        await asyncio.sleep(interval)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when the `speedups` extra is installed (BENCHMARKS.md: it pays), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(config: Config) -> int:
    """Set up logging and run the server on a fresh event loop."""
    os.umask(0o077)  # the database, secret and keys are the household's alone
    try:
        handle = setup_logging(config.logging.level, config.logging.format, config.logging.file)
    except ValueError as err:
        raise StartupError(str(err), EXIT_USAGE) from None
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(serve(config, handle))
    finally:
        handle.stop()
