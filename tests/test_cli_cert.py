"""`cert renew` and `rotate-secret` against real server processes, real TLS and real WebSockets."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from osnova_server import config as config_module
from osnova_server.client import OsnovaClient, RpcCallError, TransportError
from osnova_server.errors import UNAUTHORIZED
from osnova_server.security.tls import certificate_fingerprint, generate_self_signed
from tests.conftest import ServerProcess, cli, free_port, lock_holder, make_config, write_config
from tests.test_tls import spki_fingerprint, write_pair

Start = Callable[..., ServerProcess]


def _insecure() -> ssl.SSLContext:
    """A client context that takes any certificate: the tests compare certificates themselves."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _served(port: int) -> x509.Certificate | None:
    """The certificate a new handshake on `port` is served, or None while nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, _insecure().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _init_tls_server(tmp_path: Path, start: Start) -> tuple[Path, int, ServerProcess]:
    """`init --self-signed` a config, serve it, wait for TLS handshakes; (config, port, process)."""
    port = free_port()
    path = tmp_path / "server.toml"
    made = cli("--config", str(path), "init", "--state-dir", str(tmp_path / "state"),
               "--bind", f"127.0.0.1:{port}", "--self-signed")
    assert made.returncode == 0, made.stderr
    process = start(path)
    deadline = time.monotonic() + 15
    while _served(port) is None:
        assert process.process.poll() is None and time.monotonic() < deadline, "TLS server did not start"
        time.sleep(0.05)
    return path, port, process


def _token(path: Path) -> str:
    """An admin token minted by the CLI from the secret in the state dir."""
    made = cli("--config", str(path), "token")
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


# -- cert renew -------------------------------------------------------------------------------------


async def test_cert_renew_keeps_the_pairing_fingerprint_and_the_open_websocket(
    tmp_path: Path, server_process: Start
) -> None:
    path, port, _ = _init_tls_server(tmp_path, server_process)
    cert = tmp_path / "state" / "certs" / "server.crt"
    url = f"https://127.0.0.1:{port}"
    before = _served(port)
    assert before is not None
    token = _token(path)
    async with OsnovaClient(url, token, ssl_context=_insecure()) as admin:
        pinned = (await admin.call("pairing.start"))["server"]["fingerprint"]
        assert pinned == spki_fingerprint(before)
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"wss://127.0.0.1:{port}/ws", ssl=_insecure(), headers={"Authorization": f"Bearer {token}"},
        ) as ws:
            assert (await _answer(ws, "status.get", 6))["id"] == 6

            renewed = await _run_cli("--config", str(path), "cert", "renew", "--days", "200")
            assert renewed.returncode == 0, renewed.stderr
            lines = renewed.stdout.splitlines()
            assert lines[0].startswith(f"renewed {cert}: valid until ")
            assert f"fingerprint {pinned} (pairings stay valid)" in lines[0]
            assert lines[1].startswith("the running server (PID ") and "serves it to new connections" in lines[1]

            # The open socket stays open on its old handshake and goes on answering.
            answer = await _answer(ws, "status.get", 7)
            assert "result" in answer
            peer = ws.get_extra_info("ssl_object").getpeercert(binary_form=True)
            assert peer == before.public_bytes(serialization.Encoding.DER)
        after = _served(port)
        assert after is not None
        assert after.serial_number != before.serial_number
        assert after.public_bytes(serialization.Encoding.PEM) == cert.read_bytes()
        days = (after.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
        assert 198 <= days <= 200
        assert (await admin.call("pairing.start"))["server"]["fingerprint"] == pinned
        assert certificate_fingerprint(cert) == pinned


async def _answer(ws: aiohttp.ClientWebSocketResponse, method: str, call_id: int) -> dict[str, Any]:
    """Call `method` over the socket and return its answer, skipping notifications."""
    await ws.send_json({"jsonrpc": "2.0", "method": method, "id": call_id})
    while True:
        message = await ws.receive_json(timeout=30)
        if message.get("id") == call_id:
            return dict(message)


async def _run_cli(*args: str) -> Any:
    """The CLI in a thread, so the test's own WebSocket keeps being served meanwhile."""
    import asyncio

    return await asyncio.to_thread(cli, *args, timeout=90)  # the command itself waits up to 30 s


def test_cert_renew_without_a_server_says_the_next_start_serves_it(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    assert cli("--config", str(path), "init", "--state-dir", str(tmp_path / "state"), "--self-signed").returncode == 0
    cert = tmp_path / "state" / "certs" / "server.crt"
    old = x509.load_pem_x509_certificate(cert.read_bytes())
    assert 396 <= (old.not_valid_after_utc - dt.datetime.now(dt.UTC)).days <= 397  # what init makes

    result = cli("--config", str(path), "cert", "renew")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        "no server is running on this state directory; it serves the new certificate when it starts"
    )
    new = x509.load_pem_x509_certificate(cert.read_bytes())
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject
    assert new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == (
        old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert spki_fingerprint(new) == spki_fingerprint(old)


def test_cert_renew_leaves_a_running_migration_alone(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    state = tmp_path / "state"
    assert cli("--config", str(path), "init", "--state-dir", str(state), "--self-signed").returncode == 0
    # A `migrate` (or `restore`) holding the state dir: SIGHUP, meant for a server, would kill it.
    with lock_holder(state, "migrate") as holder:
        result = cli("--config", str(path), "cert", "renew")
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1] == (
            "no server is running on this state directory; it serves the new certificate when it starts"
        )
        assert holder.poll() is None  # not signalled


def test_cert_renew_with_tls_off_exits_2_saying_why(tmp_path: Path) -> None:
    path = write_config(tmp_path / "server.toml", make_config(tmp_path / "state"))
    result = cli("--config", str(path), "cert", "renew")
    assert result.returncode == 2
    assert result.stderr == (
        f"osnova-server: TLS is off ([tls] enabled = false in {path}), so there is no certificate to "
        "renew; `osnova-server init --self-signed` makes one\n"
    )
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("issuer", ["self", "ca"])
def test_cert_renew_of_a_certificate_init_did_not_make_exits_2(tmp_path: Path, issuer: str) -> None:
    if issuer == "self":
        pair = write_pair(tmp_path, "household")  # self-signed, but not by init
        cert, key, why = pair.cert, pair.key, "its subject CN=household is not one init writes"
    else:
        cert, key = _issued_by_a_ca(tmp_path)
        why = "it was issued by CN=Household CA"
    config = make_config(tmp_path / "state", tls={"enabled": True, "cert_path": str(cert), "key_path": str(key)})
    path = write_config(tmp_path / "server.toml", config)
    before = cert.read_bytes()

    result = cli("--config", str(path), "cert", "renew")

    assert result.returncode == 2
    assert result.stderr == (
        f"osnova-server: certificate {cert} was not made by `osnova-server init --self-signed` ({why}); "
        "renew it where it was issued, then run `systemctl reload osnova-server`\n"
    )
    assert cert.read_bytes() == before


def _issued_by_a_ca(directory: Path) -> tuple[Path, Path]:
    """A server certificate signed by a separate CA key; (cert, key)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "osnova-server lan")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Household CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=20))
        .sign(ca_key, hashes.SHA256())
    )
    cert, key_path = directory / "lan.crt", directory / "lan.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    return cert, key_path


def test_cert_renew_refuses_more_than_397_days(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    assert cli("--config", str(path), "init", "--state-dir", str(tmp_path / "state"), "--self-signed").returncode == 0
    before = (tmp_path / "state" / "certs" / "server.crt").read_bytes()
    result = cli("--config", str(path), "cert", "renew", "--days", "398")
    assert result.returncode == 2
    assert "must be at most 397 (phones refuse longer)" in result.stderr
    assert (tmp_path / "state" / "certs" / "server.crt").read_bytes() == before


# -- rotate-secret ----------------------------------------------------------------------------------


def _secret_file_server(tmp_path: Path, start: Start) -> tuple[Path, str, ServerProcess]:
    """A server whose secret lives in state/jwt.secret (as `init` sets it up); (config, url, process)."""
    port = free_port()
    config = make_config(tmp_path / "state", auth={"jwt_secret": "", "jwt_secret_file": str(tmp_path / "state" / "jwt.secret")})
    config = config_module.replace(config, "server", bind_address=f"127.0.0.1:{port}")
    path = write_config(tmp_path / "server.toml", config)
    process = start(path)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(url)
    return path, url, process


async def test_rotate_secret_refuses_old_tokens_keeps_refresh_and_voids_codes(
    tmp_path: Path, server_process: Start
) -> None:
    path, url, _ = _secret_file_server(tmp_path, server_process)
    old_admin = _token(path)
    old_secret = (tmp_path / "state" / "jwt.secret").read_bytes()
    async with OsnovaClient(url, old_admin) as admin, OsnovaClient(url) as anonymous:
        code = (await admin.call("pairing.start"))["pairing"]["code"]
        grant = await anonymous.call("pairing.complete", {"token": code})
        outstanding = (await admin.call("pairing.start"))["pairing"]["code"]
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{url}/ws", headers={"Authorization": f"Bearer {grant['access_token']}"},
        ) as ws:
            assert "result" in await _answer(ws, "apps.list", 1)

            rotated = await _run_cli("--config", str(path), "rotate-secret")
            assert rotated.returncode == 0, rotated.stderr
            assert rotated.stdout.splitlines()[0] == f"wrote a new JWT secret to {tmp_path / 'state' / 'jwt.secret'}"
            assert "every access token issued before is refused" in rotated.stdout

            # The socket opened with the old token is closed: its client must reconnect.
            closed = await ws.receive(timeout=30)
            assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 4401)
            assert closed.extra == "the server's secret was replaced; reconnect with a fresh token"

        secret_file = tmp_path / "state" / "jwt.secret"
        assert secret_file.read_bytes() != old_secret
        assert secret_file.stat().st_mode & 0o777 == 0o600
        assert len(secret_file.read_text().strip()) == 64

        for old in (old_admin, grant["access_token"]):
            async with OsnovaClient(url, old) as stale:
                with pytest.raises(TransportError) as refused:
                    await stale.call("apps.list")
                assert refused.value.status == 401
        with pytest.raises(RpcCallError) as void:
            await anonymous.call("pairing.complete", {"token": outstanding})
        assert void.value.code == UNAUTHORIZED

        refreshed = await anonymous.call("auth.refresh", {"refresh_token": grant["refresh_token"]})
        assert refreshed["device_id"] == grant["device_id"]
        async with OsnovaClient(url, refreshed["access_token"]) as device:
            assert await device.call("apps.list") == []
    async with OsnovaClient(url, _token(path)) as fresh:
        [device_row] = await fresh.call("devices.list")
        assert device_row["revoked"] is False


def test_rotate_secret_without_a_server_writes_the_file(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", auth={"jwt_secret": "", "jwt_secret_file": str(tmp_path / "state" / "jwt.secret")})
    path = write_config(tmp_path / "server.toml", config)
    result = cli("--config", str(path), "rotate-secret")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == (
        "no server is running on this state directory; it signs with the new secret when it starts"
    )
    assert (tmp_path / "state" / "jwt.secret").stat().st_mode & 0o777 == 0o600


def test_rotate_secret_refuses_a_secret_kept_in_the_config_or_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path / "server.toml", make_config(tmp_path / "state"))  # jwt_secret in the file
    before = path.read_bytes()
    in_config = cli("--config", str(path), "rotate-secret")
    assert in_config.returncode == 2
    assert in_config.stderr == (
        f"osnova-server: the JWT secret is written in {path} ([auth] jwt_secret); put a new one there "
        "(`openssl rand -hex 32`) and reload, or remove it to use jwt_secret_file\n"
    )
    in_env = cli("--config", str(path), "rotate-secret", env={"OSNOVA_JWT_SECRET": "x" * 40})
    assert in_env.returncode == 2
    assert in_env.stderr == (
        "osnova-server: the JWT secret comes from $OSNOVA_JWT_SECRET; set a new value there "
        "(`openssl rand -hex 32`) and restart the server\n"
    )
    assert path.read_bytes() == before
    assert not (tmp_path / "state").exists()


def test_generated_certificates_are_valid_397_days(tmp_path: Path) -> None:
    generate_self_signed(tmp_path / "c.crt", tmp_path / "k.key")
    made = x509.load_pem_x509_certificate((tmp_path / "c.crt").read_bytes())
    lifetime = made.not_valid_after_utc - made.not_valid_before_utc
    assert dt.timedelta(days=397) <= lifetime <= dt.timedelta(days=397, minutes=5)
    assert os.stat(tmp_path / "k.key").st_mode & 0o777 == 0o600
