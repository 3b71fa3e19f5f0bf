"""The server renews the certificate init made, 30 days before it expires, and serves it at once."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from osnova_server.security.renewal import CertificateRenewal
from osnova_server.security.tls import certificate_fingerprint, certificate_not_after, generate_self_signed
from tests.conftest import make_config, running_server
from tests.test_cli_cert import _served
from tests.test_tls import write_pair


def _tls(cert: Path, key: Path) -> dict[str, object]:
    """The [tls] section serving these files."""
    return {"enabled": True, "cert_path": str(cert), "key_path": str(key)}


async def _scrape(url: str) -> str:
    """GET /metrics (from loopback, which may read it), accepting the self-signed certificate."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics", ssl=False) as answer:
        assert answer.status == 200
        return await answer.text()


def _never(*_: object) -> None:
    """An on_renewed callback for checks that must not renew."""
    raise AssertionError("renewed")


def test_a_certificate_is_renewed_only_within_30_days_of_expiry(tmp_path: Path) -> None:
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    generate_self_signed(cert, key)  # 397 days
    before = cert.read_bytes()
    expires = certificate_not_after(cert).timestamp()
    paths = lambda: (cert, key)

    assert CertificateRenewal(paths, _never, clock=lambda: expires - 31 * 86400).check() is False
    assert cert.read_bytes() == before

    assert CertificateRenewal(paths, _never, clock=lambda: expires - 29 * 86400).check() is True
    assert cert.read_bytes() != before
    assert certificate_not_after(cert).timestamp() > expires - 86400  # 397 days from now again


def test_a_certificate_init_did_not_make_is_left_alone_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pair = write_pair(tmp_path, "household")  # valid one day
    before = pair.cert.read_bytes()
    with caplog.at_level(logging.WARNING, logger="osnova_server.security.renewal"):
        assert CertificateRenewal(lambda: (pair.cert, pair.key), _never).check() is False
    assert pair.cert.read_bytes() == before
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"TLS certificate {pair.cert} expires on ")
    assert "was not made by `osnova-server init --self-signed`" in line


async def test_the_server_renews_its_certificate_and_shows_the_expiry_metric(
    state_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = state_dir / "certs" / "server.crt", state_dir / "certs" / "server.key"
    generate_self_signed(cert, key, days=10)
    pinned = certificate_fingerprint(cert)
    old_expiry = certificate_not_after(cert)
    with caplog.at_level(logging.INFO, logger="osnova_server.security.tls"):
        async with running_server(make_config(state_dir, tls=_tls(cert, key))) as running:
            port = running.server.port
            deadline = time.monotonic() + 10
            while certificate_not_after(cert) == old_expiry:
                assert time.monotonic() < deadline, "the certificate was not renewed"
                await asyncio.sleep(0.05)
            renewed = x509.load_pem_x509_certificate(cert.read_bytes())
            deadline = time.monotonic() + 10
            while (served := await asyncio.to_thread(_served, port)) is None or served != renewed:
                assert time.monotonic() < deadline, "the renewed certificate is not served"
                await asyncio.sleep(0.05)
            metrics = await _scrape(f"https://127.0.0.1:{port}")
    assert (renewed.not_valid_after_utc - dt.datetime.now(dt.UTC)).days >= 396
    assert certificate_fingerprint(cert) == pinned  # same key: every pairing stays valid
    assert served.public_bytes(serialization.Encoding.DER) == renewed.public_bytes(serialization.Encoding.DER)
    [value] = re.findall(r"^tls_certificate_expiry_timestamp_seconds (\S+)$", metrics, re.MULTILINE)
    assert float(value) == renewed.not_valid_after_utc.timestamp()
    assert any(
        r.getMessage().startswith(f"renewed the self-signed certificate {cert} with the same key") for r in caplog.records
    )


async def test_the_expiry_metric_names_the_served_certificate(state_dir: Path) -> None:
    cert, key = state_dir / "certs" / "server.crt", state_dir / "certs" / "server.key"
    generate_self_signed(cert, key)
    async with running_server(make_config(state_dir, tls=_tls(cert, key))) as running:
        metrics = await _scrape(f"https://127.0.0.1:{running.server.port}")
    assert "# TYPE tls_certificate_expiry_timestamp_seconds gauge" in metrics
    [value] = re.findall(r"^tls_certificate_expiry_timestamp_seconds (\S+)$", metrics, re.MULTILINE)
    assert float(value) == certificate_not_after(cert).timestamp()


async def test_without_tls_there_is_no_expiry_metric(state_dir: Path) -> None:
    async with running_server(make_config(state_dir)) as running:
        metrics = await _scrape(running.url)
    assert not re.search(r"^tls_certificate_expiry_timestamp_seconds ", metrics, re.MULTILINE)
