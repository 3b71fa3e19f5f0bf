"""The daemon's lifecycle in real processes: graceful stop, SIGHUP reloads, bind errors, sd_notify,
HTTPS after `init --self-signed`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from osnova_server import config as config_module
from osnova_server.client import OsnovaClient, TransportError
from osnova_server.security.tls import certificate_fingerprint, generate_self_signed
from osnova_server.security.tokens import Scope, TokenAuthority
from osnova_server.server import event_loop_factory
from tests.conftest import TEST_SECRET, ServerProcess, cli, free_port, make_config, running_server, write_config
from tests.test_tls import spki_fingerprint

Start = Callable[..., ServerProcess]

MANIFEST: Final = {
    "id": "ant://slow-app",
    "name": "Slow app",
    "version": "1.0.0",
    "iconUri": "https://example.org/icon.png",
    "description": "served slowly on purpose",
    "components": [{"id": "ant://slow-app/ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
}


def _admin_token() -> str:
    """An admin token signed with the test secret every config here uses."""
    return TokenAuthority(TEST_SECRET.encode(), 86400).issue(Scope.ADMIN, None, 600)[0]


def _config_path(tmp_path: Path, port: int, level: str = "info", **sections: dict[str, Any]) -> Path:
    """Write a config for a server on 127.0.0.1:`port` that logs text lines to tmp/server.log."""
    log = {"level": level, "format": "text", "file": str(tmp_path / "server.log")}
    config = make_config(tmp_path / "state", logging=log, **sections)
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}")
    return write_config(tmp_path / "server.toml", config)


def _rewrite(path: Path, section: str, **changes: Any) -> None:
    """Change keys of one section of the config file in place."""
    config = config_module.load(path)
    write_config(path, config_module.replace(config, section, **changes))


def _wait_for_log(tmp_path: Path, pattern: str, after: int = 0, timeout: float = 10.0) -> str:
    """Wait until server.log has a line matching `pattern` past byte `after`; return the line."""
    log = tmp_path / "server.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text()[after:] if log.exists() else ""
        for line in text.splitlines():
            if re.search(pattern, line):
                return line
        time.sleep(0.02)
    raise AssertionError(f"no log line matching {pattern!r} in:\n{log.read_text() if log.exists() else ''}")


def _log_size(tmp_path: Path) -> int:
    """How far the log has been written, to look only at what comes next."""
    log = tmp_path / "server.log"
    return len(log.read_text()) if log.exists() else 0


def _refused(port: int) -> bool:
    """Whether a new TCP connection to the port is refused.

    A connect that lands in the listen queue just as the server closes its listening socket is
    reset instead: not a refusal yet, so the caller's next look sees the port closed for good.
    """
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        pass  # in the queue as the listener closed (see above): look again
    return False


# -- stopping -------------------------------------------------------------------------------------


@pytest.fixture
async def slow_manifest_server() -> AsyncIterator[tuple[str, asyncio.Event, asyncio.Event]]:
    """An HTTP server that holds each manifest request until `release` is set."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def manifest(request: web.Request) -> web.Response:
        """Answer only once the test lets go."""
        arrived.set()
        await release.wait()
        return web.json_response(MANIFEST)

    app = web.Application()
    app.router.add_get("/manifest.json", manifest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/manifest.json", arrived, release
    finally:
        release.set()
        await runner.cleanup()


async def test_sigterm_lets_an_in_flight_request_finish(
    tmp_path: Path, server_process: Start, slow_manifest_server: tuple[str, asyncio.Event, asyncio.Event]
) -> None:
    """SIGTERM stops accepting at once, the slow apps.install still answers, the exit is 0, and
    what it committed is there after a restart."""
    manifest_url, arrived, release = slow_manifest_server
    port = free_port()
    path = _config_path(tmp_path, port, apps={"allow_http": True})
    url = f"http://127.0.0.1:{port}"
    server = server_process(path)
    await asyncio.to_thread(server.wait_ready, url)
    async with OsnovaClient(url, _admin_token()) as client:
        install = asyncio.create_task(client.call("apps.install", {"manifest_uri": manifest_url}))
        await asyncio.wait_for(arrived.wait(), 10)
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not await asyncio.to_thread(_refused, port):
            assert time.monotonic() < deadline, "the server kept accepting connections after SIGTERM"
            await asyncio.sleep(0.02)
        assert not install.done()
        release.set()
        assert await asyncio.wait_for(install, 10) == MANIFEST["id"]
    # The one SIGTERM above is all it gets (stop() would send another, which can land after the
    # server has let go of its handler on the way out and kill it with -15).
    _, stderr = await asyncio.to_thread(server.process.communicate, timeout=15)
    assert server.process.returncode == 0, stderr
    again = server_process(path)
    await asyncio.to_thread(again.wait_ready, url)
    async with OsnovaClient(url, _admin_token()) as client:
        assert [app["id"] for app in await client.call("apps.list")] == [MANIFEST["id"]]


async def test_shutdown_timeout_bounds_the_grace(
    tmp_path: Path, server_process: Start, slow_manifest_server: tuple[str, asyncio.Event, asyncio.Event]
) -> None:
    """A request that outlasts [server] shutdown_timeout is cut off; the process still exits 0."""
    manifest_url, arrived, _ = slow_manifest_server
    port = free_port()
    path = _config_path(
        tmp_path, port, server={"shutdown_timeout": 1}, apps={"allow_http": True, "fetch_timeout": 60.0}
    )
    url = f"http://127.0.0.1:{port}"
    server = server_process(path)
    await asyncio.to_thread(server.wait_ready, url)
    async with OsnovaClient(url, _admin_token()) as client:
        install = asyncio.create_task(client.call("apps.install", {"manifest_uri": manifest_url}))
        await asyncio.wait_for(arrived.wait(), 10)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.process.wait, 15)
        took = time.monotonic() - signalled
        with pytest.raises(TransportError):
            await install
    assert code == 0
    assert 0.9 <= took < 4.0, took


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signals_exit_0(tmp_path: Path, server_process: Start, signum: signal.Signals) -> None:
    """SIGTERM and SIGINT both shut down cleanly: exit 0, "stopped" logged, port closed."""
    port = free_port()
    server = server_process(_config_path(tmp_path, port))
    server.wait_ready(f"http://127.0.0.1:{port}")
    server.process.send_signal(signum)
    assert server.process.wait(15) == 0
    assert _wait_for_log(tmp_path, r"INFO osnova_server\.server: stopped")
    assert _refused(port)


FLOODED_SIGTERM: Final = """
import asyncio, os, signal, sys, threading
from pathlib import Path
from osnova_server.server import serve
from tests.conftest import make_config

async def main() -> int:
    loop = asyncio.get_running_loop()
    serving = asyncio.ensure_future(serve(make_config(Path(sys.argv[1]))))
    while not serving.done() and not Path(sys.argv[1], "osnova.db").exists():
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)

    def flood() -> None:
        # What thousands of finishing thread-pool jobs do: fill the loop's self-pipe.
        for _ in range(5_000):
            loop.call_soon_threadsafe(lambda: None)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=flood)
    thread.start()
    thread.join()  # blocks the loop, so nothing drains the pipe before the signal arrives
    return await asyncio.wait_for(serving, 10)

print("exit", asyncio.run(main()))
"""


def test_sigterm_is_not_lost_when_the_loop_is_flooded(tmp_path: Path) -> None:
    """A SIGTERM that arrives while the event loop's self-pipe is full still stops the server."""
    result = subprocess.run(
        [sys.executable, "-c", FLOODED_SIGTERM, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert (result.returncode, result.stdout) == (0, "exit 0\n"), result.stderr


# -- SIGHUP ----------------------------------------------------------------------------------------


def test_sighup_reloads_the_log_level(tmp_path: Path, server_process: Start) -> None:
    """After the config's level goes to debug and SIGHUP, debug lines appear; before, none do."""
    port = free_port()
    path = _config_path(tmp_path, port, level="info")
    server = server_process(path)
    server.wait_ready(f"http://127.0.0.1:{port}")
    server.process.send_signal(signal.SIGHUP)
    _wait_for_log(tmp_path, r"INFO osnova_server\.server: configuration reloaded")
    assert " DEBUG " not in (tmp_path / "server.log").read_text()
    _rewrite(path, "logging", level="debug")
    mark = _log_size(tmp_path)
    server.process.send_signal(signal.SIGHUP)
    line = _wait_for_log(tmp_path, r" DEBUG osnova_server\.server: reload applied: log level debug", after=mark)
    assert "rate limit" in line
    code, stderr = server.stop()
    assert code == 0, stderr


async def test_sighup_reloads_rate_limits(tmp_path: Path, server_process: Start) -> None:
    """A burst of 2 refuses the third call with 429; after raising it and SIGHUP, calls pass."""
    port = free_port()
    path = _config_path(tmp_path, port, rate_limit={"requests_per_second": 0.01, "burst_size": 2})
    url = f"http://127.0.0.1:{port}"
    server = server_process(path)
    await asyncio.to_thread(server.wait_ready, url)
    async with OsnovaClient(url, _admin_token()) as client:
        for _ in range(2):
            assert (await client.call("status.get"))["version"]
        with pytest.raises(TransportError) as limited:
            await client.call("status.get")
        assert limited.value.status == 429
        _rewrite(path, "rate_limit", requests_per_second=1000.0, burst_size=1000)
        mark = _log_size(tmp_path)
        server.process.send_signal(signal.SIGHUP)
        await asyncio.to_thread(_wait_for_log, tmp_path, "configuration reloaded", mark)
        for _ in range(5):
            assert (await client.call("status.get"))["version"]
    code, stderr = await asyncio.to_thread(server.stop)
    assert code == 0, stderr


def _allowed_origin(port: int, origin: str) -> str | None:
    """The Access-Control-Allow-Origin answered to a GET /status from `origin`."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/status", headers={"Origin": origin})
    with urllib.request.urlopen(request, timeout=5) as answer:
        allowed: str | None = answer.headers.get("Access-Control-Allow-Origin")
        return allowed


def test_sighup_reloads_cors_origins(tmp_path: Path, server_process: Start) -> None:
    """An origin added to [cors] allowed_origins is honoured after SIGHUP, a removed one no longer."""
    port = free_port()
    path = _config_path(tmp_path, port, cors={"allowed_origins": ["http://old.example"]})
    server = server_process(path)
    server.wait_ready(f"http://127.0.0.1:{port}")
    assert _allowed_origin(port, "http://old.example") == "http://old.example"
    assert _allowed_origin(port, "http://new.example") is None
    _rewrite(path, "cors", allowed_origins=["http://new.example"])
    server.process.send_signal(signal.SIGHUP)
    _wait_for_log(tmp_path, "configuration reloaded")
    assert _allowed_origin(port, "http://new.example") == "http://new.example"
    assert _allowed_origin(port, "http://old.example") is None


def test_sighup_with_a_broken_config_keeps_running(tmp_path: Path, server_process: Start) -> None:
    """A config that no longer validates is refused on SIGHUP, logged, and nothing changes."""
    port = free_port()
    path = _config_path(tmp_path, port)
    server = server_process(path)
    server.wait_ready(f"http://127.0.0.1:{port}")
    path.write_text(path.read_text().replace("max_clients = 5", "max_clients = 0"))
    server.process.send_signal(signal.SIGHUP)
    line = _wait_for_log(tmp_path, "reload refused")
    assert line.endswith(
        "reload refused, keeping the running config: [server] max_clients must be at least 1, "
        "not 0; set it to 1 or more"
    )
    server.wait_ready(f"http://127.0.0.1:{port}", timeout=2)
    assert server.process.poll() is None


def test_sighup_warns_about_keys_that_need_a_restart(tmp_path: Path, server_process: Start) -> None:
    """Changing bind_address and then SIGHUP says a restart is needed, and keeps the old port."""
    port = free_port()
    path = _config_path(tmp_path, port)
    server = server_process(path)
    server.wait_ready(f"http://127.0.0.1:{port}")
    _rewrite(path, "server", bind_address=f"127.0.0.1:{free_port()}")
    server.process.send_signal(signal.SIGHUP)
    line = _wait_for_log(tmp_path, "take effect only after a restart")
    assert "WARNING osnova_server.server: changes to [server] bind_address take effect only after a restart" in line
    server.wait_ready(f"http://127.0.0.1:{port}", timeout=2)


# -- TLS reload ------------------------------------------------------------------------------------


class TlsConnection:
    """One kept-alive HTTPS connection, read by hand so the test sees exactly which socket it uses."""

    def __init__(self, port: int) -> None:
        """Connect and handshake, accepting whatever certificate is served."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test compares the certificate itself
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))
        self.reader = self.sock.makefile("rb")

    @property
    def fingerprint(self) -> str:
        """`sha256:` and the hex digest of the certificate this connection was served."""
        der = self.sock.getpeercert(binary_form=True)
        assert der is not None
        return spki_fingerprint(x509.load_der_x509_certificate(der))

    def health(self) -> int:
        """GET /health on this connection, keeping it open; return the status code."""
        self.sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n")
        status = int(self.reader.readline().split()[1])
        length = 0
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        json.loads(self.reader.read(length))
        return status

    def close(self) -> None:
        """Close the connection."""
        self.reader.close()
        self.sock.close()


@pytest.fixture
def tls_server(tmp_path: Path, server_process: Start) -> Iterator[tuple[int, Path, Path, ServerProcess]]:
    """A server process with TLS on, serving tmp/server.crt; yields (port, cert, key, process)."""
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    generate_self_signed(cert, key)
    port = free_port()
    path = _config_path(tmp_path, port, tls={"enabled": True, "cert_path": str(cert), "key_path": str(key)})
    server = server_process(path)
    deadline = time.monotonic() + 15
    while True:
        try:
            TlsConnection(port).close()
            break
        except OSError:
            assert server.process.poll() is None and time.monotonic() < deadline, "TLS server did not start"
            time.sleep(0.02)
    yield port, cert, key, server


def test_sighup_serves_a_new_certificate_and_keeps_open_connections(
    tmp_path: Path, tls_server: tuple[int, Path, Path, ServerProcess]
) -> None:
    """New handshakes get the new certificate; a kept-alive connection goes on working."""
    port, cert, key, server = tls_server
    old = certificate_fingerprint(cert)
    kept = TlsConnection(port)
    assert (kept.health(), kept.fingerprint) == (200, old)
    generate_self_signed(cert, key)
    new = certificate_fingerprint(cert)
    assert new != old
    server.process.send_signal(signal.SIGHUP)
    _wait_for_log(tmp_path, f"TLS certificate reloaded from {re.escape(str(cert))} \\({new}\\)")
    fresh = TlsConnection(port)
    assert (fresh.health(), fresh.fingerprint) == (200, new)
    assert (kept.health(), kept.fingerprint) == (200, old)
    kept.close()
    fresh.close()


def test_sighup_with_a_broken_certificate_keeps_the_old_one(
    tmp_path: Path, tls_server: tuple[int, Path, Path, ServerProcess]
) -> None:
    """A garbled new certificate is refused with a logged reason; handshakes keep the old one."""
    port, cert, _, server = tls_server
    old = certificate_fingerprint(cert)
    cert.write_text("-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n")
    server.process.send_signal(signal.SIGHUP)
    line = _wait_for_log(tmp_path, "reload kept the old TLS certificate")
    assert line.endswith(
        f"ERROR osnova_server.server: reload kept the old TLS certificate: certificate {cert} is not a "
        "PEM certificate (-----BEGIN CERTIFICATE-----); point [tls] cert_path at one or run "
        "`osnova-server init --self-signed` or set [tls] enabled = false"
    )
    connection = TlsConnection(port)
    assert (connection.health(), connection.fingerprint) == (200, old)
    connection.close()
    assert server.process.poll() is None


# -- start-up failures -----------------------------------------------------------------------------


def test_address_in_use_is_exit_1_with_one_line(tmp_path: Path) -> None:
    """Another process on the port: exit 1 and exactly one line naming the address."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        path = _config_path(tmp_path, port, level="warning")
        result = cli("--config", str(path), "serve")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"osnova-server: address 127.0.0.1:{port} is already in use\n"


# -- systemd notifications ------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's (short path: AF_UNIX allows 108 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="osn", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / "notify"))
    sock.settimeout(10)
    yield sock
    sock.close()
    shutil.rmtree(directory)


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, server_process: Start, notify_socket: socket.socket) -> None:
    """READY=1 once the port accepts, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1 on SIGTERM."""
    port = free_port()
    server = server_process(
        _config_path(tmp_path, port),
        env={"NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000"},
    )
    assert notify_socket.recv(256) == b"READY=1"
    # READY came after the bind: /health answers on the first try.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
        assert answer.status == 200
    pings: list[bytes] = []
    started = time.monotonic()
    while len(pings) < 4:
        pings.append(notify_socket.recv(256))
    assert set(pings) == {b"WATCHDOG=1"}
    assert time.monotonic() - started < 2.0  # 4 pings 0.1 s apart, with room for a loaded CI machine
    server.process.send_signal(signal.SIGTERM)
    messages: list[bytes] = []
    while b"STOPPING=1" not in messages:
        messages.append(notify_socket.recv(256))
    assert set(messages) <= {b"WATCHDOG=1", b"STOPPING=1"}
    assert server.process.wait(15) == 0


# -- HTTPS out of the box -------------------------------------------------------------------------


def test_init_self_signed_then_serve_answers_over_https(tmp_path: Path, server_process: Start) -> None:
    """`init --self-signed` then `serve`: HTTPS verifies by name and address, TLS 1.1 is refused."""
    port = free_port()
    path = tmp_path / "server.toml"
    result = cli(
        "--config",
        str(path),
        "init",
        "--state-dir",
        str(tmp_path / "state"),
        "--bind",
        f"127.0.0.1:{port}",
        "--self-signed",
    )
    assert result.returncode == 0, result.stderr
    cert = tmp_path / "state" / "certs" / "server.crt"
    server = server_process(path, env={"OSNOVA_JWT_SECRET": ""})
    trusting = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=trusting, timeout=2) as answer:
                body = json.loads(answer.read())
                break
        except OSError:
            assert server.process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    assert body["status"] == "healthy"
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        trusting.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert _handshake(port, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError) as refused:
        _handshake(port, ssl.TLSVersion.TLSv1_1)
    # The same client gets TLS 1.2 above, so it is the server that ends a TLS 1.1 handshake (asyncio's
    # TLS layer may close the connection without flushing the protocol_version alert).
    assert refused.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING")
    assert _handshake(port, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    code, stderr = server.stop()
    assert code == 0, stderr


def _handshake(port: int, highest: ssl.TLSVersion) -> str | None:
    """Handshake offering at most `highest` (and as low as TLS 1.0); return the version agreed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated: that is the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = highest
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old suites; only the server may refuse
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        return tls.version()


def test_start_to_ready_is_quick(tmp_path: Path) -> None:
    """Process start to /health answering takes well under the 5 s a systemd start should take."""
    port = free_port()
    server = ServerProcess(_config_path(tmp_path, port, level="warning"))
    try:
        started = time.monotonic()
        server.wait_ready(f"http://127.0.0.1:{port}")
        took = time.monotonic() - started
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr
    assert took < 5.0, took


@pytest.mark.parametrize("access_log", [True, False])
async def test_the_access_log_can_be_switched_off(
    state_dir: Path, access_log: bool, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running_server(make_config(state_dir, logging={"access_log": access_log})) as server:
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/health") as answer:
            assert answer.status == 200
        async with server.client(admin=True) as client:
            await client.call("status.get")
    access = [record for record in caplog.records if record.name == "aiohttp.access"]
    assert len(access) == (2 if access_log else 0)
    calls = [record for record in caplog.records if getattr(record, "fields", {}).get("event") == "rpc"]
    assert len(calls) == 1, "the audit line of each call stays, whatever the access log"


def test_the_event_loop_is_uvloop_only_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    uvloop = pytest.importorskip("uvloop")
    assert event_loop_factory() is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if the `speedups` extra were not installed
    assert event_loop_factory() is None
