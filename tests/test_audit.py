"""The audit log: one line per authentication attempt and per call, never a token, code or secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server import logs
from osnova_server.client import RpcCallError, TransportError
from osnova_server.logs import AUDIT_LOGGER_NAME, JsonFormatter, TextFormatter, call_fields
from tests.conftest import TEST_SECRET, RunningServer


def audit_fields(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    """The structured fields of each audit line (a record of a message's calls stands for a line per call)."""
    fields: list[dict[str, Any]] = []
    for record in records:
        if record.name == AUDIT_LOGGER_NAME:
            fields.extend(call_fields(record) if hasattr(record, "calls") else [getattr(record, "fields", {})])
    return fields


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


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[Path]:
    """The server's log as JSON lines at level info, through the real logging pipeline."""
    path = tmp_path / "server.log"
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    handle = logs.setup_logging("info", "json", str(path))
    yield path
    handle.stop()
    root.setLevel(level)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)


def rpc_lines(path: Path) -> list[dict[str, Any]]:
    """The audit lines of calls in a JSON log file."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line["logger"] == AUDIT_LOGGER_NAME and line.get("event") == "rpc"]


async def test_a_batch_writes_one_audit_line_per_call_in_order(osnova: RunningServer, audit_log: Path) -> None:
    # Methods that answer from memory, so they end in the order of the batch.
    methods = ["identity.status", "apps.list", "nope.nothing", "identity.status", "apps.list"] * 2
    batch = [{"jsonrpc": "2.0", "method": method, "id": index} for index, method in enumerate(methods)]
    headers = {"Authorization": f"Bearer {osnova.admin_token()}"}
    async with aiohttp.ClientSession() as session, session.post(f"{osnova.url}/rpc", json=batch, headers=headers) as answer:
        assert answer.status == 200
        assert len(await answer.json()) == 10
    assert logs._current is not None
    logs._current.stop()  # writes everything queued
    lines = rpc_lines(audit_log)
    assert [line["method"] for line in lines] == [m if m != "nope.nothing" else "(unknown)" for m in methods]
    assert [line["outcome"] for line in lines] == [("method_not_found" if m == "nope.nothing" else "ok") for m in methods]
    for line in lines:
        assert list(line) == [
            "ts", "level", "logger", "msg", "event", "principal", "method", "outcome", "duration_ms", "remote",
            "transport",
        ]
        assert (line["level"], line["msg"], line["principal"], line["remote"], line["transport"]) == (
            "INFO", "rpc", "admin", "127.0.0.1", "http",
        )
        assert isinstance(line["duration_ms"], float) and 0 <= line["duration_ms"] < 10_000
    stamps = [line["ts"] for line in lines]
    assert stamps == sorted(stamps), "each line carries its own call's end, in the order the calls ended"
