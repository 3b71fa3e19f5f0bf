"""status.get's service checks: database, scheduler, TLS certificate expiry and free disk space."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from osnova_server import __version__
from osnova_server.client import OsnovaClient
from osnova_server.services.status import (
    DISK_FREE_MINIMUM,
    certificate_status,
    disk_status,
    free_bytes,
)
from tests.conftest import RunningServer, make_config, running_server

NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=dt.UTC)


async def status_of(server: RunningServer, trust: ssl.SSLContext | None = None) -> dict[str, Any]:
    """status.get as admin."""
    async with OsnovaClient(server.url, server.admin_token(), ssl_context=trust) as client:
        result: dict[str, Any] = await client.call("status.get")
    return result


def by_name(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The services as name -> (kind, status)."""
    return {s["name"]: (s["kind"], s["status"]) for s in status["services"]}


async def test_without_tls_every_check_but_tls_runs_and_is_ok(osnova: RunningServer) -> None:
    status = await status_of(osnova)
    assert status["status"] == "ok"
    assert status["version"] == __version__
    assert by_name(status) == {
        "database": ("sqlite", "ok"),
        "scheduler": ("aiojobs", "ok"),
        "disk": ("filesystem", "ok"),
        "manifest-hosts": ("circuit-breaker", "ok"),
    }


def household_certificate(cert: Path, key: Path, days: int) -> None:
    """A certificate for 127.0.0.1 valid for `days` that init did not make, so the server never renews it."""
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "household")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.parent.mkdir(mode=0o700, exist_ok=True)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))


async def tls_server_status(state_dir: Path, days: int, *, break_cert: bool = False) -> dict[str, Any]:
    """Start a TLS server on a certificate valid for `days`, optionally garble the file, ask status.get."""
    cert, key = state_dir / "tls" / "server.crt", state_dir / "tls" / "server.key"
    # One init made would be renewed at start when it is this close to expiry (test_renewal.py).
    household_certificate(cert, key, days)
    config = make_config(state_dir, tls={"enabled": True, "cert_path": str(cert), "key_path": str(key)})
    trust = ssl.create_default_context(cafile=str(cert))
    async with running_server(config) as running:
        assert running.url.startswith("https://")
        if break_cert:
            cert.write_bytes(b"not a certificate")  # the loaded one keeps serving
        return await status_of(running, trust)


async def test_a_certificate_expiring_in_five_days_is_degraded(state_dir: Path) -> None:
    status = await tls_server_status(state_dir, days=5)
    assert by_name(status)["tls"] == ("certificate", "degraded")
    assert status["status"] == "degraded"


async def test_a_certificate_with_months_left_is_ok(state_dir: Path) -> None:
    status = await tls_server_status(state_dir, days=90)
    assert by_name(status)["tls"] == ("certificate", "ok")
    assert status["status"] == "ok"


async def test_an_unreadable_certificate_is_an_error(state_dir: Path) -> None:
    status = await tls_server_status(state_dir, days=90, break_cert=True)
    assert by_name(status)["tls"] == ("certificate", "error")
    assert status["status"] == "error"


@pytest.mark.parametrize(
    ("not_after", "expected"),
    [
        (NOW - dt.timedelta(days=1), "error"),
        (NOW, "error"),
        (NOW + dt.timedelta(seconds=1), "degraded"),
        (NOW + dt.timedelta(days=5), "degraded"),
        (NOW + dt.timedelta(days=14) - dt.timedelta(seconds=1), "degraded"),
        (NOW + dt.timedelta(days=14), "ok"),
        (NOW + dt.timedelta(days=400), "ok"),
    ],
)
def test_certificate_status(not_after: dt.datetime, expected: str) -> None:
    assert certificate_status(not_after, NOW) == expected


@pytest.mark.parametrize(
    ("free", "expected"),
    [
        (0, "degraded"),
        (DISK_FREE_MINIMUM - 1, "degraded"),
        (DISK_FREE_MINIMUM, "ok"),
        (50 * 1024**3, "ok"),
    ],
)
def test_disk_status(free: int, expected: str) -> None:
    assert DISK_FREE_MINIMUM == 100 * 1024 * 1024
    assert disk_status(free) == expected


def test_free_bytes_reads_the_real_file_system(state_dir: Path) -> None:
    assert free_bytes(state_dir) > 0
    with pytest.raises(FileNotFoundError):
        free_bytes(state_dir / "missing")
