"""Tests for osnova_server.security.tls: real keys, real certificates, real TLS handshakes."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from cryptography.x509.oid import NameOID

from osnova_server.security.tls import (
    TlsError,
    certificate_fingerprint,
    certificate_not_after,
    create_ssl_context,
    generate_self_signed,
    reload_ssl_context,
)

HOST: Final = "127.0.0.1"
REQUEST: Final = b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n"


@dataclass(frozen=True)
class Pair:
    """A certificate and its key written to disk."""

    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        """Return the fingerprint computed here, independently of the module under test."""
        return spki_fingerprint(x509.load_pem_x509_certificate(self.cert.read_bytes()))


def spki_fingerprint(certificate: x509.Certificate) -> str:
    """`sha256:` and the hex SHA-256 of the certificate's DER SubjectPublicKeyInfo (CONTRACT 4)."""
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def make_key(kind: str) -> CertificateIssuerPrivateKeyTypes:
    """Return a fresh RSA-2048 or EC P-256 private key."""
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def write_pair(
    directory: Path,
    name: str,
    kind: str = "ec",
    key_format: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8,
) -> Pair:
    """Write a self-signed certificate `name.crt` and its key `name.key` in `directory`."""
    key = make_key(kind)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, key_format, serialization.NoEncryption())
    )
    return pair


def insecure_client() -> ssl.SSLContext:
    """Return a client context that accepts any certificate, for reading what is served."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_fingerprint(writer: asyncio.StreamWriter) -> str:
    """Return the fingerprint of the certificate the server presented on this connection."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    return spki_fingerprint(x509.load_der_x509_certificate(der))


async def close(writer: asyncio.StreamWriter) -> None:
    """Close a client connection, ignoring the peer having gone first."""
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass


async def get_ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send one keep-alive HTTP request on an open connection and return its body."""
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


@asynccontextmanager
async def https_site(context: ssl.SSLContext) -> AsyncIterator[int]:
    """Run an aiohttp HTTPS site on an ephemeral port with `context`; yield the port."""

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application()
    app.router.add_get("/ping", ping)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, HOST, 0, ssl_context=context).start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TLS connection to the local server."""
    return await asyncio.open_connection(HOST, port, ssl=insecure_client())


async def fingerprint_of_new_connection(port: int) -> str:
    """Return the fingerprint a fresh connection is served, after a successful request."""
    reader, writer = await connect(port)
    try:
        assert await get_ping(reader, writer) == b"pong"
        return served_fingerprint(writer)
    finally:
        await close(writer)


@pytest.fixture(autouse=True)
def _restore_umask() -> Iterator[None]:
    """Keep umask changes made by a test from leaking into the next."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield
    os.umask(previous)


# create_ssl_context


@pytest.mark.parametrize(
    ("kind", "key_format", "header"),
    [
        ("ec", serialization.PrivateFormat.PKCS8, b"-----BEGIN PRIVATE KEY-----"),
        ("rsa", serialization.PrivateFormat.PKCS8, b"-----BEGIN PRIVATE KEY-----"),
        ("rsa", serialization.PrivateFormat.TraditionalOpenSSL, b"-----BEGIN RSA PRIVATE KEY-----"),
        ("ec", serialization.PrivateFormat.TraditionalOpenSSL, b"-----BEGIN EC PRIVATE KEY-----"),
    ],
)
async def test_key_formats_serve_the_certificate(
    tmp_path: Path, kind: str, key_format: serialization.PrivateFormat, header: bytes
) -> None:
    """PKCS#8, PKCS#1 RSA and SEC1 EC keys all load and serve their certificate."""
    pair = write_pair(tmp_path, "server", kind, key_format)
    assert pair.key.read_bytes().startswith(header)

    context = create_ssl_context(pair.cert, pair.key)

    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    async with https_site(context) as port:
        assert await fingerprint_of_new_connection(port) == pair.fingerprint


def issue(
    subject: str,
    key: CertificateIssuerPrivateKeyTypes,
    issuer: str,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    *,
    ca: bool,
) -> x509.Certificate:
    """Return a certificate for `subject`'s key signed by `issuer_key`."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


async def test_chain_file_serves_leaf_and_intermediate(tmp_path: Path) -> None:
    """A PEM file holding leaf then intermediate is served whole, so root-only clients verify."""
    root_key, intermediate_key, leaf_key = (make_key("ec") for _ in range(3))
    root = issue("root CA", root_key, "root CA", root_key, ca=True)
    intermediate = issue("intermediate CA", intermediate_key, "root CA", root_key, ca=True)
    leaf = issue("localhost", leaf_key, "intermediate CA", intermediate_key, ca=False)
    pem = serialization.Encoding.PEM
    cert_path, key_path = tmp_path / "chain.pem", tmp_path / "leaf.key"
    cert_path.write_bytes(leaf.public_bytes(pem) + intermediate.public_bytes(pem))
    key_path.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    client = ssl.create_default_context(cadata=root.public_bytes(pem).decode())

    async with https_site(create_ssl_context(cert_path, key_path)) as port:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client, server_hostname="localhost"
        )
        try:
            assert await get_ping(reader, writer) == b"pong"
        finally:
            await close(writer)


def _garbage(path: Path) -> None:
    path.write_text("this is not PEM\n")


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _missing(path: Path) -> None:
    path.unlink()


def _encrypt_key(path: Path) -> None:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )


@pytest.mark.parametrize(
    ("target", "damage", "expected"),
    [
        ("cert", _missing, "not found; run `osnova-server init --self-signed`"),
        ("key", _missing, "not found; run `osnova-server init --self-signed`"),
        ("cert", _directory, "cannot be read"),
        ("key", _directory, "cannot be read"),
        ("cert", _garbage, "is not a PEM certificate"),
        ("key", _garbage, "is not a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC)"),
        ("key", _encrypt_key, "is encrypted"),
    ],
)
def test_bad_files_raise_one_line_naming_the_file(
    tmp_path: Path, target: str, damage: Callable[[Path], None], expected: str
) -> None:
    """Each user-made problem names the broken file and says how to fix it."""
    pair = write_pair(tmp_path, "server")
    path = pair.cert if target == "cert" else pair.key
    damage(path)

    with pytest.raises(TlsError) as caught:
        create_ssl_context(pair.cert, pair.key)

    message = str(caught.value)
    assert str(path) in message
    assert expected in message
    assert "\n" not in message


def test_certificate_for_another_key_is_refused(tmp_path: Path) -> None:
    """A certificate with someone else's key is refused, naming both files."""
    mine = write_pair(tmp_path, "mine")
    other = write_pair(tmp_path, "other")

    with pytest.raises(TlsError, match="does not match private key") as caught:
        create_ssl_context(mine.cert, other.key)

    assert str(mine.cert) in str(caught.value)
    assert str(other.key) in str(caught.value)


# reload_ssl_context


@pytest.mark.parametrize(("old_kind", "new_kind"), [("ec", "ec"), ("rsa", "ec"), ("ec", "rsa")])
async def test_reload_serves_new_certificate_and_keeps_open_connections(
    tmp_path: Path, old_kind: str, new_kind: str
) -> None:
    """After a reload new handshakes get the new certificate; an open connection keeps working.

    The EC-to-RSA case guards against loading into the live context, which keeps the old EC
    certificate in its own slot and goes on serving it.
    """
    old = write_pair(tmp_path, "old", old_kind)
    new = write_pair(tmp_path, "new", new_kind)
    context = create_ssl_context(old.cert, old.key)

    async with https_site(context) as port:
        reader, writer = await connect(port)
        try:
            assert await get_ping(reader, writer) == b"pong"
            assert served_fingerprint(writer) == old.fingerprint

            reload_ssl_context(context, new.cert, new.key)

            assert await fingerprint_of_new_connection(port) == new.fingerprint
            assert await get_ping(reader, writer) == b"pong"
            assert served_fingerprint(writer) == old.fingerprint
        finally:
            await close(writer)


@pytest.mark.parametrize("broken", ["garbage cert", "wrong key", "missing key"])
async def test_failed_reload_keeps_serving_current_certificate(
    tmp_path: Path, broken: str
) -> None:
    """A reload that fails raises TlsError and changes nothing, even after an earlier reload."""
    first = write_pair(tmp_path, "first")
    second = write_pair(tmp_path, "second", "rsa")
    other = write_pair(tmp_path, "other")
    context = create_ssl_context(first.cert, first.key)
    bad_cert, bad_key = second.cert, second.key
    if broken == "garbage cert":
        bad_cert = tmp_path / "garbage.crt"
        bad_cert.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    elif broken == "wrong key":
        bad_key = other.key
    else:
        bad_key = tmp_path / "absent.key"

    async with https_site(context) as port:
        reload_ssl_context(context, second.cert, second.key)
        with pytest.raises(TlsError):
            reload_ssl_context(context, bad_cert, bad_key)

        assert await fingerprint_of_new_connection(port) == second.fingerprint


async def test_reload_works_on_a_context_made_elsewhere(tmp_path: Path) -> None:
    """A plain server context gains reload support on its first reload."""
    old = write_pair(tmp_path, "old")
    new = write_pair(tmp_path, "new", "rsa")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(old.cert, old.key)

    async with https_site(context) as port:
        assert await fingerprint_of_new_connection(port) == old.fingerprint
        reload_ssl_context(context, new.cert, new.key)
        assert await fingerprint_of_new_connection(port) == new.fingerprint


# generate_self_signed


def test_self_signed_files_modes_and_directories(tmp_path: Path) -> None:
    """The key is 0600 PKCS#8, the certificate 0644, new parent directories 0700."""
    os.umask(0)  # the most permissive umask must not widen anything
    tmp_mode = stat.S_IMODE(tmp_path.stat().st_mode)
    cert_path = tmp_path / "state" / "certs" / "server.crt"
    key_path = tmp_path / "state" / "keys" / "server.pk8"

    generate_self_signed(cert_path, key_path)

    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    for directory in (tmp_path / "state", cert_path.parent, key_path.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(tmp_path.stat().st_mode) == tmp_mode
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)


def test_self_signed_certificate_contents(tmp_path: Path) -> None:
    """SANs are typed DNS and IP names, the cert is no CA, and it lasts `days` days."""
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    before = dt.datetime.now(dt.UTC)

    generate_self_signed(cert_path, key_path, ["osnova.lan", "192.168.1.20"], days=30)

    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "localhost",
        socket.gethostname().lower(),
        "osnova.lan",
    }
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.168.1.20"),
    }
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    assert certificate_not_after(cert_path) == certificate.not_valid_after_utc
    expected_end = before + dt.timedelta(days=30)
    assert abs(certificate_not_after(cert_path) - expected_end) < dt.timedelta(minutes=1)


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
async def test_self_signed_verifies_by_name_and_address(
    tmp_path: Path, server_hostname: str
) -> None:
    """A client trusting the generated certificate verifies it by DNS name and by IP."""
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    generate_self_signed(cert_path, key_path)
    client = ssl.create_default_context(cafile=cert_path)

    async with https_site(create_ssl_context(cert_path, key_path)) as port:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=client, server_hostname=server_hostname
        )
        try:
            assert await get_ping(reader, writer) == b"pong"
        finally:
            await close(writer)


def test_self_signed_replaces_existing_files_atomically(tmp_path: Path) -> None:
    """Generating again replaces key and certificate and leaves no temporary files."""
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    generate_self_signed(cert_path, key_path)
    first = certificate_fingerprint(cert_path)

    generate_self_signed(cert_path, key_path)

    assert certificate_fingerprint(cert_path) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.crt", "server.key"]
    create_ssl_context(cert_path, key_path)  # the new key matches the new certificate


def test_self_signed_refuses_non_positive_days(tmp_path: Path) -> None:
    """A zero-day certificate is a mistake, refused before anything is written."""
    with pytest.raises(ValueError, match="days"):
        generate_self_signed(tmp_path / "c.crt", tmp_path / "k.key", days=0)
    assert list(tmp_path.iterdir()) == []


# certificate_fingerprint / certificate_not_after


def test_fingerprint_is_sha256_of_the_public_key_info(tmp_path: Path) -> None:
    """The fingerprint is `sha256:` and 64 lowercase hex digits of the DER SubjectPublicKeyInfo."""
    pair = write_pair(tmp_path, "server")

    fingerprint = certificate_fingerprint(pair.cert)

    assert fingerprint == pair.fingerprint
    der = x509.load_pem_x509_certificate(pair.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert fingerprint != "sha256:" + hashlib.sha256(der).hexdigest()  # not the whole certificate's
    digest = fingerprint.removeprefix("sha256:")
    assert len(digest) == 64
    assert digest == digest.lower()


def test_not_after_is_utc_aware(tmp_path: Path) -> None:
    """The expiry is timezone-aware UTC, comparable with now."""
    pair = write_pair(tmp_path, "server")

    not_after = certificate_not_after(pair.cert)

    assert not_after.utcoffset() == dt.timedelta(0)
    assert dt.datetime.now(dt.UTC) < not_after < dt.datetime.now(dt.UTC) + dt.timedelta(days=2)


@pytest.mark.parametrize("function", [certificate_fingerprint, certificate_not_after])
def test_inspecting_a_missing_certificate_raises_tls_error(
    tmp_path: Path, function: Callable[[Path], object]
) -> None:
    """Inspection helpers report a missing file the same way as loading does."""
    with pytest.raises(TlsError, match="not found"):
        function(tmp_path / "absent.crt")


# TLS 1.2: ECDHE key exchange and AEAD ciphers only


def tls12_client(ciphers: str) -> ssl.SSLContext:
    """A TLS 1.2-only client offering exactly these cipher suites."""
    context = insecure_client()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


CBC_ONLY: Final = (
    "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
    "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:ECDHE-RSA-AES128-SHA256:AES128-SHA:AES256-SHA:AES128-SHA256"
)
RSA_KEY_EXCHANGE: Final = "AES128-GCM-SHA256:AES256-GCM-SHA384"


@pytest.mark.parametrize(("kind", "refused"), [("ec", CBC_ONLY), ("rsa", CBC_ONLY), ("rsa", RSA_KEY_EXCHANGE)])
async def test_tls12_clients_without_ecdhe_aead_suites_are_refused(tmp_path: Path, kind: str, refused: str) -> None:
    pair = write_pair(tmp_path, "server", kind)
    async with https_site(create_ssl_context(pair.cert, pair.key)) as port:
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # a handshake failure, or the reset after it
            _, writer = await asyncio.open_connection(HOST, port, ssl=tls12_client(refused))
            await close(writer)


@pytest.mark.parametrize(("kind", "suite"), [
    ("ec", "ECDHE-ECDSA-AES128-GCM-SHA256"), ("ec", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ("rsa", "ECDHE-RSA-AES256-GCM-SHA384"),
])
async def test_tls12_ecdhe_aead_clients_are_served(tmp_path: Path, kind: str, suite: str) -> None:
    pair = write_pair(tmp_path, "server", kind)
    async with https_site(create_ssl_context(pair.cert, pair.key)) as port:
        reader, writer = await asyncio.open_connection(HOST, port, ssl=tls12_client(suite))
        try:
            assert await get_ping(reader, writer) == b"pong"
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.2"
            assert ssl_object.cipher()[0] == suite
        finally:
            await close(writer)


async def test_tls13_is_unchanged(tmp_path: Path) -> None:
    pair = write_pair(tmp_path, "server")
    async with https_site(create_ssl_context(pair.cert, pair.key)) as port:
        reader, writer = await connect(port)
        try:
            assert await get_ping(reader, writer) == b"pong"
            assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        finally:
            await close(writer)


def test_the_tls12_suites_offered_are_ecdhe_and_aead(tmp_path: Path) -> None:
    pair = write_pair(tmp_path, "server")
    context = create_ssl_context(pair.cert, pair.key)
    tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    assert all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12), tls12
