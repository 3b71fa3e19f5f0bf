"""Paired devices: refresh-token rotation and theft detection, listing, revocation, last seen."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import aiohttp
import pytest

from osnova_server.client import OsnovaClient, RpcCallError, TransportError
from osnova_server.config import Config
from osnova_server.errors import FORBIDDEN, NOT_FOUND, UNAUTHORIZED
from osnova_server.events import DEVICES_REVOKED, Event
from osnova_server.services.devices import REFRESH_REFUSED
from osnova_server.store import DATABASE_NAME, Store
from osnova_server.timestamps import from_epoch
from tests.conftest import RunningServer, running_server
from tests.test_pairing import pair_device

# Run on SQLite and on PostgreSQL (tests/conftest.py).
BOTH_ENGINES = True

DEVICE_KEYS = {"device_id", "name", "role", "paired_at", "paired_by", "last_seen", "revoked"}


async def refresh(server: RunningServer, refresh_token: Any) -> dict[str, Any]:
    """Call auth.refresh anonymously."""
    async with server.client() as anonymous:
        grant: dict[str, Any] = await anonymous.call("auth.refresh", {"refresh_token": refresh_token})
    return grant


async def refused_refresh(server: RunningServer, refresh_token: Any) -> RpcCallError:
    """Call auth.refresh expecting -32002."""
    with pytest.raises(RpcCallError) as caught:
        await refresh(server, refresh_token)
    return caught.value


async def is_refused(server: RunningServer, access_token: str) -> bool:
    """Whether the server answers an access token with 401."""
    async with server.client(access_token) as client:
        try:
            await client.call("status.get")
        except TransportError as err:
            return err.status == 401
    return False


async def test_refresh_rotates(osnova: RunningServer) -> None:
    grant = await pair_device(osnova)
    renewed = await refresh(osnova, grant["refresh_token"])
    assert renewed["device_id"] == grant["device_id"]
    assert renewed["token_type"] == "Bearer"
    assert renewed["refresh_token"] != grant["refresh_token"]
    assert renewed["access_token"] != grant["access_token"]
    assert not await is_refused(osnova, renewed["access_token"])
    again = await refresh(osnova, renewed["refresh_token"])
    assert again["refresh_token"] not in (grant["refresh_token"], renewed["refresh_token"])


async def test_reused_refresh_token_revokes_the_device(osnova: RunningServer) -> None:
    revoked: list[Event] = []
    osnova.runtime.events.listen(revoked.append)
    grant = await pair_device(osnova)
    renewed = await refresh(osnova, grant["refresh_token"])
    error = await refused_refresh(osnova, grant["refresh_token"])
    assert (error.code, error.message) == (UNAUTHORIZED, REFRESH_REFUSED)
    # Both the thief's and the owner's tokens are dead now; the device must pair again.
    assert await is_refused(osnova, grant["access_token"])
    assert await is_refused(osnova, renewed["access_token"])
    assert (await refused_refresh(osnova, renewed["refresh_token"])).code == UNAUTHORIZED
    device = osnova.runtime.store.device(grant["device_id"])
    assert device is not None and device.revoked
    assert [(e.topic, e.data) for e in revoked if e.topic == DEVICES_REVOKED] == [
        (DEVICES_REVOKED, {"device_id": grant["device_id"]})
    ]


async def test_racing_refreshes_with_one_token_revoke_the_device(osnova: RunningServer) -> None:
    grant = await pair_device(osnova)
    outcomes = await asyncio.gather(
        refresh(osnova, grant["refresh_token"]), refresh(osnova, grant["refresh_token"]), return_exceptions=True,
    )
    assert sum(isinstance(outcome, dict) for outcome in outcomes) <= 1
    assert any(isinstance(outcome, RpcCallError) and outcome.code == UNAUTHORIZED for outcome in outcomes)
    device = osnova.runtime.store.device(grant["device_id"])
    assert device is not None and device.revoked


@pytest.mark.parametrize(
    "bad",
    ["", "x", "A" * 43, "A" * 300, "Bearer abc", "../../etc/passwd"],
)
async def test_bad_refresh_tokens_change_nothing(osnova: RunningServer, bad: str) -> None:
    grant = await pair_device(osnova)
    error = await refused_refresh(osnova, bad)
    assert (error.code, error.message) == (UNAUTHORIZED, REFRESH_REFUSED)
    device = osnova.runtime.store.device(grant["device_id"])
    assert device is not None and not device.revoked
    # The real token still works: nothing was rotated or revoked.
    await refresh(osnova, grant["refresh_token"])


@pytest.mark.parametrize("bad", [None, 42, ["list"], {"an": "object"}])
async def test_refresh_token_of_the_wrong_type_is_invalid_params(osnova: RunningServer, bad: Any) -> None:
    error = await refused_refresh(osnova, bad)
    assert error.code == -32602 and "'refresh_token'" in error.message


async def test_refresh_tokens_are_stored_hashed(osnova: RunningServer) -> None:
    grant = await pair_device(osnova)
    renewed = await refresh(osnova, grant["refresh_token"])
    rows = await osnova.runtime.store.engine.fetch_all(
        "SELECT lookup, hash, rotated FROM refresh_tokens ORDER BY rotated DESC"
    )
    expected = [
        (hashlib.sha256(grant["refresh_token"].encode()).hexdigest(), 1),
        (hashlib.sha256(renewed["refresh_token"].encode()).hexdigest(), 0),
    ]
    assert [(lookup, rotated) for lookup, _, rotated in rows] == expected
    assert all(stored.startswith("$argon2id$") for _, stored, _ in rows)
    if not osnova.config.store.url:  # SQLite: not in the database's files either
        files = b"".join(path.read_bytes() for path in osnova.config.state_dir.glob(f"{DATABASE_NAME}*"))
        for token in (grant["refresh_token"], renewed["refresh_token"]):
            assert token.encode() not in files


async def test_refresh_of_a_revoked_device_is_refused(osnova: RunningServer) -> None:
    grant = await pair_device(osnova)
    async with osnova.client(admin=True) as admin:
        assert await admin.call("devices.revoke", {"device_id": grant["device_id"]}) is True
    assert (await refused_refresh(osnova, grant["refresh_token"])).code == UNAUTHORIZED


async def test_devices_list_shape(osnova: RunningServer) -> None:
    first = await pair_device(osnova, name="one")
    second = await pair_device(osnova, name="two")
    async with osnova.client(admin=True) as admin:
        listed = await admin.call("devices.list")
    assert all(set(device) == DEVICE_KEYS for device in listed)
    assert {d["device_id"]: d["name"] for d in listed} == {first["device_id"]: "one", second["device_id"]: "two"}
    assert all(d["revoked"] is False and d["paired_at"].endswith("Z") for d in listed)
    assert all(d["role"] == "member" and d["paired_by"] == "admin" for d in listed)


async def test_admin_revokes_a_device(osnova: RunningServer) -> None:
    revoked: list[Event] = []
    osnova.runtime.events.listen(revoked.append)
    victim, other = await pair_device(osnova), await pair_device(osnova)
    async with osnova.client(admin=True) as admin:
        assert await admin.call("devices.revoke", [victim["device_id"]]) is True
        listed = {d["device_id"]: d["revoked"] for d in await admin.call("devices.list")}
    assert listed == {victim["device_id"]: True, other["device_id"]: False}
    assert await is_refused(osnova, victim["access_token"])
    assert not await is_refused(osnova, other["access_token"])
    assert [e.data for e in revoked if e.topic == DEVICES_REVOKED] == [{"device_id": victim["device_id"]}]


async def test_unknown_device_id_is_not_found_and_changes_nothing(osnova: RunningServer) -> None:
    grant = await pair_device(osnova)
    async with osnova.client(admin=True) as admin:
        with pytest.raises(RpcCallError) as caught:
            await admin.call("devices.revoke", {"device_id": "no-such-device"})
        listed = await admin.call("devices.list")
    assert caught.value.code == NOT_FOUND and "devices list" in caught.value.message
    assert [d["revoked"] for d in listed] == [False]
    assert not await is_refused(osnova, grant["access_token"])


async def test_a_device_may_revoke_itself(osnova: RunningServer) -> None:
    grant = await pair_device(osnova)
    async with osnova.client(grant["access_token"]) as device:
        assert await device.call("devices.revoke", {"device_id": grant["device_id"]}) is True
        with pytest.raises(TransportError) as caught:
            await device.call("status.get")
    assert caught.value.status == 401


@pytest.mark.parametrize("target", ["other", "no-such-device"])
async def test_a_device_may_not_revoke_another(osnova: RunningServer, target: str) -> None:
    caller, other = await pair_device(osnova), await pair_device(osnova)
    device_id = other["device_id"] if target == "other" else target
    async with osnova.client(caller["access_token"]) as device:
        with pytest.raises(RpcCallError) as caught:
            await device.call("devices.revoke", {"device_id": device_id})
    assert caught.value.code == FORBIDDEN
    assert not any(d.revoked for d in osnova.runtime.store.devices())
    assert not await is_refused(osnova, other["access_token"])


async def test_revocation_survives_a_restart(config: Config) -> None:
    async with running_server(config) as server:
        grant = await pair_device(server)
        async with server.client(admin=True) as admin:
            await admin.call("devices.revoke", {"device_id": grant["device_id"]})
    async with running_server(config) as server:
        assert await is_refused(server, grant["access_token"])
        assert (await refused_refresh(server, grant["refresh_token"])).code == UNAUTHORIZED


async def test_last_seen_is_flushed_and_written_at_shutdown(config: Config) -> None:
    async with running_server(config) as server:
        grant = await pair_device(server)
        device_id = grant["device_id"]
        async with OsnovaClient(server.url, grant["access_token"]) as device:
            await device.call("status.get")
        seen = server.runtime.last_seen[device_id]
        await server.runtime.devices.flush_last_seen()
        stored = server.runtime.store.device(device_id)
        assert stored is not None and stored.last_seen == from_epoch(seen)
        async with OsnovaClient(server.url, grant["access_token"]) as device:
            await device.call("status.get")
        server.runtime.last_seen[device_id] = seen + 3600  # seen again later, not flushed yet
    store = await Store.open(config.state_dir, config.store.url)  # what the server left behind
    try:
        row = await store.engine.fetch_one("SELECT last_seen FROM devices WHERE device_id = ?", (device_id,))
    finally:
        await store.close()
    assert row is not None and row[0] == from_epoch(seen + 3600)


async def test_status_counts_active_sessions(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    grant = await pair_device(osnova)
    async with http.get(f"{osnova.url}/status") as answer:
        assert (await answer.json())["active_sessions"] == 0
    async with osnova.client(grant["access_token"]) as device:
        await device.call("status.get")
    async with http.get(f"{osnova.url}/status") as answer:
        assert (await answer.json())["active_sessions"] == 1
