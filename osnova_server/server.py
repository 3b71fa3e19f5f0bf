"""Run the server in the foreground: bind, serve, reload on SIGHUP, stop gracefully on SIGTERM.

The lifecycle is the contract's: sockets are bound before systemd hears READY=1; SIGTERM and
SIGINT stop accepting, give in-flight requests `[server] shutdown_timeout` seconds, send
STOPPING=1 and return 0; SIGHUP re-reads the config file and applies what can change without
dropping a connection (TLS certificate, log level, CORS origins, rate limits).
"""

from __future__ import annotations

import asyncio
import errno
import os
import logging
import signal
import ssl
from pathlib import Path
from typing import Final

from aiohttp import web

from osnova_server import config as config_module
from osnova_server import systemd
from osnova_server.app import create_app
from osnova_server.config import Config, ConfigError
from osnova_server.logs import LoggingHandle, setup_logging
from osnova_server.security.tls import TlsError, create_ssl_context, reload_ssl_context
from osnova_server.store import StoreError
from osnova_server.web.keys import STATE_KEY

_LOGGER = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


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
            access_log=logging.getLogger("aiohttp.access"),
            shutdown_timeout=float(config.server.shutdown_timeout),
        )
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        """Open the runtime and bind the listening socket."""
        if self.config.tls.enabled:
            try:
                self.ssl_context = create_ssl_context(Path(self.config.tls.cert_path), Path(self.config.tls.key_path))
            except TlsError as err:
                raise StartupError(str(err), EXIT_USAGE) from None
        try:
            await self.runner.setup()
        except (StoreError, ConfigError) as err:
            raise StartupError(str(err), EXIT_USAGE if isinstance(err, ConfigError) else EXIT_FAILURE) from None
        site = web.TCPSite(
            self.runner, self.config.host, self.config.port, ssl_context=self.ssl_context, reuse_address=True,
        )
        try:
            await site.start()
        except OSError as err:
            await self.runner.cleanup()
            if err.errno == errno.EADDRINUSE:
                raise StartupError(f"address {self.config.server.bind_address} is already in use") from None
            if err.errno == errno.EACCES:
                raise StartupError(
                    f"not allowed to bind {self.config.server.bind_address}; use a port above 1023"
                ) from None
            raise StartupError(f"cannot bind {self.config.server.bind_address}: {err.strerror}") from None
        _LOGGER.info(
            "osnova-server listening on %s://%s", self.config.scheme, _bound_address(site) or self.config.server.bind_address,
        )

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
        if new.tls.enabled and self.ssl_context is not None:
            try:
                reload_ssl_context(self.ssl_context, Path(new.tls.cert_path), Path(new.tls.key_path))
            except TlsError as err:
                _LOGGER.error("reload kept the old TLS certificate: %s", err)
                new = config_module.replace(new, "tls", **_as_dict(self.config.tls))
        if self.logging_handle is not None:
            self.logging_handle.set_level(new.logging.level)
        self.app[STATE_KEY].runtime.reload(new)
        self.config = new
        _LOGGER.info("configuration reloaded from %s", path or "embedded defaults")

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish within the grace period, close."""
        await self.runner.cleanup()


def _as_dict(section: object) -> dict[str, object]:
    """A section dataclass as keyword arguments."""
    return {name: getattr(section, name) for name in section.__slots__}  # type: ignore[attr-defined]


def _bound_address(site: web.TCPSite) -> str | None:
    """The name of the bound socket, e.g. 127.0.0.1:8080."""
    server = site._server  # aiohttp keeps the asyncio server here; only read for the log line
    sockets = getattr(server, "sockets", None) or []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None


async def serve(config: Config, logging_handle: LoggingHandle | None = None) -> int:
    """Run until SIGTERM or SIGINT; return the process exit code."""
    loop = asyncio.get_running_loop()
    server = Server(config, logging_handle)
    await server.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    systemd.notify(systemd.READY)
    watchdog = systemd.watchdog_interval()
    if watchdog is not None:
        await server.app[STATE_KEY].runtime.scheduler.spawn(_watchdog(watchdog))
    try:
        await server.stopping.wait()
    finally:
        _LOGGER.info("shutting down")
        systemd.notify(systemd.STOPPING)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await server.stop()
    _LOGGER.info("stopped")
    return EXIT_OK


async def _watchdog(interval: float) -> None:
    """Tell systemd we are alive every `interval` seconds (half of WatchdogSec)."""
    while True:
        systemd.notify(systemd.WATCHDOG)
        await asyncio.sleep(interval)


def run(config: Config) -> int:
    """Set up logging and run the server on a fresh event loop."""
    os.umask(0o077)  # the database, secret and keys are the household's alone
    handle = setup_logging(config.logging.level, config.logging.format, config.logging.file)
    try:
        return asyncio.run(serve(config, handle))
    finally:
        handle.stop()
