"""The bearer-token attack list through a real server: each is 401 with a challenge and nothing runs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import jwt
import pytest

from osnova_server.client import RpcCallError
from osnova_server.errors import FORBIDDEN, UNAUTHORIZED
from tests.conftest import TEST_SECRET, RunningServer
from tests.test_pairing import pair_device, start_pairing

SECRET = TEST_SECRET.encode()


def b64(data: bytes) -> str:
    """Base64url without padding, as in JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    """Valid admin claims for now, with some changed or (None) removed."""
    now = int(time.time())
    values: dict[str, Any] = {"sub": "admin", "device_id": None, "scope": "admin", "iat": now,
                              "exp": now + 600, "jti": "forged"}
    values.update(changes)
    return {k: v for k, v in values.items() if v is not None or k == "device_id"}


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes = SECRET) -> str:
    """A token with any header, signed HMAC-SHA256 with `key`."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A token with no signature at all, as `alg: none` asks."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def tampered() -> str:
    """A real device-scope token whose payload was swapped for an admin one, signature kept."""
    now = int(time.time())
    real = jwt.encode({"sub": "d", "device_id": "d", "scope": "device", "iat": now, "exp": now + 600, "jti": "j"},
                      SECRET, algorithm="HS256")
    header, _, signature = real.split(".")
    return f"{header}.{b64(json.dumps(claims()).encode())}.{signature}"


FORGED: dict[str, Callable[[], str]] = {
    "alg none": lambda: unsigned({"alg": "none", "typ": "JWT"}, claims()),
    "another key": lambda: jwt.encode(claims(), b"another-key-another-key-another-key!", algorithm="HS256"),
    "RS256 header over an HMAC signature": lambda: hand_signed({"alg": "RS256", "typ": "JWT"}, claims()),
    "HS512 with the right key": lambda: jwt.encode(claims(), SECRET, algorithm="HS512"),
    "expired": lambda: jwt.encode(claims(iat=int(time.time()) - 700, exp=int(time.time()) - 100), SECRET,
                                  algorithm="HS256"),
    "issued in the future": lambda: jwt.encode(claims(iat=int(time.time()) + 3600, exp=int(time.time()) + 7200),
                                               SECRET, algorithm="HS256"),
    "not before the future": lambda: jwt.encode(claims(nbf=int(time.time()) + 3600), SECRET, algorithm="HS256"),
    "without exp": lambda: jwt.encode(claims(exp=None), SECRET, algorithm="HS256"),
    "tampered payload": tampered,
    "not a JWT": lambda: "not-a-jwt",
    "huge": lambda: "a" * 5000,
}


async def post_rpc(
    http: aiohttp.ClientSession, server: RunningServer, payload: Any, authorization: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST a JSON-RPC payload; return status, headers and the decoded body."""
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with http.post(f"{server.url}/rpc", data=json.dumps(payload), headers=headers) as answer:
        body = await answer.json(content_type=None) if answer.status != 204 else None
        return answer.status, dict(answer.headers), body


def mischief(device_id: str) -> list[dict[str, Any]]:
    """A batch that would leave traces: a pairing code and a revoked device."""
    return [
        {"jsonrpc": "2.0", "method": "pairing.start", "id": 1},
        {"jsonrpc": "2.0", "method": "devices.revoke", "params": {"device_id": device_id}, "id": 2},
    ]


def assert_nothing_ran(server: RunningServer, device_id: str) -> None:
    """No pairing code was issued and the device is not revoked."""
    assert server.runtime.pairing.outstanding() == 0
    device = server.runtime.store.device(device_id)
    assert device is not None and not device.revoked


def assert_challenge(status: int, headers: dict[str, str], body: Any) -> None:
    """401 with the Bearer challenge and a JSON body saying why."""
    assert status == 401
    assert headers["WWW-Authenticate"] == "Bearer"
    assert headers["Content-Type"].startswith("application/json")
    assert isinstance(body["error"], str) and body["error"]


@pytest.mark.filterwarnings("ignore:The HMAC key is")  # the HS512 forgery's key is short for SHA-512
@pytest.mark.parametrize("kind", sorted(FORGED))
async def test_forged_tokens_are_refused_and_nothing_runs(
    osnova: RunningServer, http: aiohttp.ClientSession, kind: str,
) -> None:
    victim = await pair_device(osnova)
    token = FORGED[kind]()
    status, headers, body = await post_rpc(http, osnova, mischief(victim["device_id"]), f"Bearer {token}")
    assert_challenge(status, headers, body)
    assert token not in body["error"]
    assert_nothing_ran(osnova, victim["device_id"])
    assert osnova.runtime.bans.failures("127.0.0.1") == 1


async def test_token_of_a_revoked_device(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    victim, revoked = await pair_device(osnova), await pair_device(osnova)
    async with osnova.client(revoked["access_token"]) as device:
        assert await device.call("status.get")
    async with osnova.client(admin=True) as admin:
        await admin.call("devices.revoke", {"device_id": revoked["device_id"]})
    status, headers, body = await post_rpc(
        http, osnova, mischief(victim["device_id"]), f"Bearer {revoked['access_token']}",
    )
    assert_challenge(status, headers, body)
    assert "revoked" in body["error"]
    assert_nothing_ran(osnova, victim["device_id"])


@pytest.mark.parametrize(
    "authorization",
    ["Basic dXNlcjpwYXNzd29yZA==", "Bearer", "Bearer ", "Token abc", "Digest username=x", "bearer"],
)
async def test_authorization_that_is_not_bearer(
    osnova: RunningServer, http: aiohttp.ClientSession, authorization: str,
) -> None:
    victim = await pair_device(osnova)
    status, headers, body = await post_rpc(http, osnova, mischief(victim["device_id"]), authorization)
    assert_challenge(status, headers, body)
    assert "Bearer <token>" in body["error"]
    assert_nothing_ran(osnova, victim["device_id"])


async def test_anonymous_non_public_call_is_refused_before_anything_runs(
    osnova: RunningServer, http: aiohttp.ClientSession,
) -> None:
    victim = await pair_device(osnova)
    status, headers, body = await post_rpc(http, osnova, mischief(victim["device_id"]))
    assert_challenge(status, headers, body)
    assert_nothing_ran(osnova, victim["device_id"])
    # Not a failed authentication: no credential was presented.
    assert osnova.runtime.bans.failures("127.0.0.1") == 0


async def test_anonymous_batch_mixing_public_and_private_runs_nothing(
    osnova: RunningServer, http: aiohttp.ClientSession,
) -> None:
    code = (await start_pairing(osnova))["pairing"]["code"]
    batch = [
        {"jsonrpc": "2.0", "method": "pairing.complete", "params": {"token": code}, "id": 1},
        {"jsonrpc": "2.0", "method": "devices.list", "id": 2},
    ]
    status, headers, body = await post_rpc(http, osnova, batch)
    assert_challenge(status, headers, body)
    assert osnova.runtime.store.devices() == []
    # The code was not spent: it still pairs.
    status, _, answer = await post_rpc(http, osnova, batch[0])
    assert status == 200 and answer["result"]["token_type"] == "Bearer"


async def test_anonymous_public_call_runs(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    status, _, body = await post_rpc(
        http, osnova, {"jsonrpc": "2.0", "method": "pairing.complete", "params": {"token": "ZZZZ-ZZZZ"}, "id": 7},
    )
    assert status == 200
    assert body["id"] == 7 and body["error"]["code"] == UNAUTHORIZED


async def test_bearer_scheme_is_case_insensitive(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    status, _, body = await post_rpc(
        http, osnova, {"jsonrpc": "2.0", "method": "status.get", "id": 1}, f"bearer {osnova.admin_token()}",
    )
    assert status == 200 and "result" in body


@pytest.mark.parametrize("method", ["bans.list", "bans.lift"])
async def test_device_tokens_cannot_call_admin_methods(osnova: RunningServer, method: str) -> None:
    grant = await pair_device(osnova)
    osnova.runtime.bans.ban("192.0.2.50", "test")
    async with osnova.client(grant["access_token"]) as device:
        with pytest.raises(RpcCallError) as caught:
            await device.call(method, {"address": "192.0.2.50"} if method == "bans.lift" else None)
    assert caught.value.code == FORBIDDEN
    assert [ban.address for ban in osnova.runtime.bans.active()] == ["192.0.2.50"]
