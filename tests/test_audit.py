"""The audit log: one line per authentication attempt and per call, never a token, code or secret."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from osnova_server.client import RpcCallError, TransportError
from osnova_server.logs import AUDIT_LOGGER_NAME, JsonFormatter, TextFormatter
from tests.conftest import TEST_SECRET, RunningServer


def audit_fields(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    """The structured fields of the audit records."""
    return [getattr(r, "fields", {}) for r in records if r.name == AUDIT_LOGGER_NAME]


async def test_audit_lines_never_carry_secrets(
    osnova: RunningServer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    admin_token = osnova.admin_token()
    async with osnova.client(admin_token) as admin:
        payload = await admin.call("pairing.start", {"name": "phone"})
    code = payload["pairing"]["code"]
    async with osnova.client() as anonymous:
        with pytest.raises(RpcCallError):
            await anonymous.call("pairing.complete", {"token": "ZZZZ-ZZZZ"})
        grant = await anonymous.call("pairing.complete", {"token": code.lower()})
        renewed = await anonymous.call("auth.refresh", {"refresh_token": grant["refresh_token"]})
        with pytest.raises(RpcCallError):
            await anonymous.call("auth.refresh", {"refresh_token": grant["refresh_token"]})  # reuse
    async with osnova.client(renewed["access_token"]) as revoked:
        with pytest.raises(TransportError):
            await revoked.call("status.get")
    async with osnova.client("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.") as forged:
        with pytest.raises(TransportError):
            await forged.call("status.get")

    secrets = {
        "pairing code": code, "pairing code without dash": code.replace("-", ""), "lower-case code": code.lower(),
        "nonce": payload["pairing"]["nonce"], "admin token": admin_token,
        "access token": grant["access_token"], "refresh token": grant["refresh_token"],
        "renewed access token": renewed["access_token"], "renewed refresh token": renewed["refresh_token"],
        "forged token": "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.", "JWT secret": TEST_SECRET,
    }
    lines = [formatter.format(record) for record in caplog.records for formatter in (JsonFormatter(), TextFormatter())]
    assert lines
    for what, secret in secrets.items():
        leaking = [line for line in lines if secret in line]
        assert not leaking, f"the {what} reached the log: {leaking[0]}"

    fields = audit_fields(caplog.records)
    events = [(f["event"], f.get("outcome"), f.get("reason")) for f in fields]
    assert ("pairing.complete", "refused", "unknown") in events
    assert ("pairing.complete", "ok", None) in events
    assert ("auth.refresh", "ok", None) in events
    assert ("auth.refresh", "refused", "reused") in events
    assert ("devices.revoke", "ok", None) in events
    assert ("auth", "refused", "revoked") in events
    assert ("auth", "refused", "bad signature") in events or ("auth", "refused", "malformed") in events
    paired = next(f for f in fields if f["event"] == "pairing.complete" and f["outcome"] == "ok")
    assert paired["device_id"] == grant["device_id"] and paired["remote"] == "127.0.0.1"
    calls = [f for f in fields if f["event"] == "rpc"]
    assert {"principal", "method", "outcome", "duration_ms", "remote", "transport"} <= set(calls[0])
    assert ("admin", "pairing.start", "ok") in {(f["principal"], f["method"], f["outcome"]) for f in calls}
    revocation = next(f for f in fields if f["event"] == "devices.revoke")
    assert revocation["by"] == "refresh token reuse"


async def test_ban_is_audited(osnova: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER_NAME)
    for _ in range(osnova.config.ban.max_failures):
        osnova.runtime.record_auth_failure("192.0.2.10", "access_token")
    (ban,) = [f for f in audit_fields(caplog.records) if f["event"] == "ban"]
    assert ban["address"] == "192.0.2.10" and ban["failures"] == osnova.config.ban.max_failures
