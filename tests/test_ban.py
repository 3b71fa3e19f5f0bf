"""IP bans: counting failures, 403 on every route, the admin RPC methods, and surviving restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server.client import RpcCallError, TransportError
from osnova_server.config import BanSection, Config
from osnova_server.errors import INVALID_PARAMS, NOT_FOUND
from osnova_server.services.bans import BanList
from osnova_server.store import Store
from tests.clock import FakeClock
from tests.conftest import RunningServer, make_config, running_server
from tests.test_pairing import pair_device

ATTACKER = "127.0.0.3"
BYSTANDER = "127.0.0.2"
NOW = 1_900_000_000.0


@asynccontextmanager
async def session_from(address: str, limit: int = 32) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session whose connections leave from `address` (any 127.x works on Linux)."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=limit)
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def bad_token_call(session: aiohttp.ClientSession, url: str) -> int:
    """POST /rpc with a bad bearer token; return the HTTP status."""
    async with session.post(f"{url}/rpc", data=b'{"jsonrpc":"2.0","method":"status.get","id":1}',
                            headers={"Authorization": "Bearer not.a.token"}) as answer:
        await answer.read()
        return answer.status


async def health_status(session: aiohttp.ClientSession, url: str) -> int:
    """GET /health; return the HTTP status."""
    async with session.get(f"{url}/health") as answer:
        await answer.read()
        return answer.status


async def provoke_ban(server: RunningServer, address: str) -> None:
    """Send bad tokens from `address` until it is banned."""
    async with session_from(address) as session:
        for _ in range(server.config.ban.max_failures):
            await bad_token_call(session, server.url)
    assert server.runtime.bans.banned(address) is not None


# -- the service, over a real store --------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store in a temp dir."""
    opened = await Store.open(tmp_path)
    yield opened
    await opened.close()


def settings(**changes: Any) -> BanSection:
    """[ban] settings: 3 failures in 60 s earn 600 s, unless changed."""
    values: dict[str, Any] = {"max_failures": 3, "window": 60, "duration": 600}
    values.update(changes)
    return BanSection(**values)


async def test_failures_within_the_window_earn_a_ban(store: Store) -> None:
    clock = FakeClock(NOW)
    bans = BanList(store, settings(), clock)
    assert bans.record_failure("192.0.2.1") is None
    assert bans.record_failure("192.0.2.1") is None
    ban = bans.record_failure("192.0.2.1")
    assert ban is not None and ban.banned_until == NOW + 600
    assert bans.banned("192.0.2.1") == ban
    assert bans.banned("192.0.2.2") is None
    clock.now += 600
    assert bans.banned("192.0.2.1") is None


async def test_failures_spread_beyond_the_window_do_not(store: Store) -> None:
    clock = FakeClock(NOW)
    bans = BanList(store, settings(), clock)
    for _ in range(10):
        assert bans.record_failure("192.0.2.1") is None
        clock.now += 31
    assert bans.banned("192.0.2.1") is None
    assert bans.failures("192.0.2.1") == 1  # only the last one is within 60 s of now


async def test_failure_counts_stay_bounded_under_100k_addresses(store: Store) -> None:
    bans = BanList(store, settings(), FakeClock(NOW), max_tracked=1000)
    for index in range(100_000):
        bans.record_failure(f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}")
    assert bans.tracked() == 1000
    assert bans.active() == []


async def test_disabled_bans_neither_count_nor_refuse(store: Store) -> None:
    bans = BanList(store, settings(), FakeClock(NOW))
    bans.ban("192.0.2.9", "earlier")
    bans.reconfigure(settings(enabled=False))
    for _ in range(10):
        assert bans.record_failure("192.0.2.1") is None
    assert bans.banned("192.0.2.1") is None
    assert bans.banned("192.0.2.9") is None


async def test_reload_keeps_counts_unless_the_threshold_changes(store: Store) -> None:
    bans = BanList(store, settings(), FakeClock(NOW))
    bans.record_failure("192.0.2.1")
    bans.reconfigure(settings(duration=60))
    assert bans.failures("192.0.2.1") == 1
    bans.reconfigure(settings(max_failures=5))
    assert bans.failures("192.0.2.1") == 0


async def test_bans_are_stored_and_lifted(store: Store) -> None:
    bans = BanList(store, settings(), FakeClock(NOW))
    bans.ban("192.0.2.1", "test")
    await bans.flush()
    assert [b.address for b in await store.bans()] == ["192.0.2.1"]
    reloaded = BanList(store, settings(), FakeClock(NOW))
    await reloaded.load()
    assert reloaded.banned("192.0.2.1") is not None
    assert await reloaded.lift("192.0.2.1") is True
    assert await store.bans() == []
    assert await reloaded.lift("192.0.2.1") is False


# -- through the server ----------------------------------------------------------------------


async def test_thousand_bad_tokens_ban_the_address_and_the_server_stays_responsive(osnova: RunningServer) -> None:
    latencies: list[float] = []
    flooding = True

    async def bystander() -> None:
        async with session_from(BYSTANDER, limit=1) as session:
            while flooding or not latencies:
                started = time.perf_counter()
                assert await health_status(session, osnova.url) == 200
                latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.01)

    watcher = asyncio.create_task(bystander())
    async with session_from(ATTACKER) as session:
        statuses = await asyncio.gather(*(bad_token_call(session, osnova.url) for _ in range(1000)))
        banned_health = await health_status(session, osnova.url)
    flooding = False
    await watcher
    max_failures = osnova.config.ban.max_failures
    assert statuses.count(401) == max_failures
    assert statuses.count(403) == 1000 - max_failures
    assert banned_health == 403  # the ban applies to /health too
    assert latencies and max(latencies) < 1.0
    assert [b.address for b in osnova.runtime.bans.active()] == [ATTACKER]


async def test_ban_answer(osnova: RunningServer) -> None:
    await provoke_ban(osnova, ATTACKER)
    async with session_from(ATTACKER) as session:
        for path in ("/health", "/status", "/metrics"):
            async with session.get(f"{osnova.url}{path}") as answer:
                body = await answer.json()
                assert answer.status == 403
                assert 1 <= int(answer.headers["Retry-After"]) <= osnova.config.ban.duration
                assert f"osnova-server bans lift {ATTACKER}" in body["error"]


@pytest.mark.parametrize(
    ("method", "params"),
    [("pairing.complete", {"token": "ZZZZ-ZZZZ"}), ("auth.refresh", {"refresh_token": "stolen?"})],
)
async def test_wrong_codes_and_refresh_tokens_count(
    osnova: RunningServer, method: str, params: dict[str, Any],
) -> None:
    request = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
    async with session_from(ATTACKER) as session:
        for _ in range(osnova.config.ban.max_failures):
            async with session.post(f"{osnova.url}/rpc", json=request) as answer:
                assert answer.status == 200
        async with session.post(f"{osnova.url}/rpc", json=request) as answer:
            assert answer.status == 403
    assert osnova.runtime.bans.banned(ATTACKER) is not None


async def test_ban_survives_a_restart(config: Config) -> None:
    async with running_server(config) as server:
        await provoke_ban(server, ATTACKER)
    async with running_server(config) as server:
        async with session_from(ATTACKER) as session:
            assert await health_status(session, server.url) == 403
        async with session_from(BYSTANDER) as session:
            assert await health_status(session, server.url) == 200


async def test_ban_runs_out(osnova: RunningServer) -> None:
    await provoke_ban(osnova, ATTACKER)
    osnova.runtime.bans.clock = lambda: time.time() + osnova.config.ban.duration
    async with session_from(ATTACKER) as session:
        assert await health_status(session, osnova.url) == 200


async def test_bans_list_and_lift(osnova: RunningServer) -> None:
    await provoke_ban(osnova, ATTACKER)
    async with osnova.client(admin=True) as admin:
        listed = await admin.call("bans.list")
        assert [(b["address"], b["reason"]) for b in listed] == [(ATTACKER, "too many failed authentications")]
        assert listed[0]["banned_until"].endswith("Z") and listed[0]["created_at"].endswith("Z")
        assert await admin.call("bans.lift", [ATTACKER]) is True
        assert await admin.call("bans.list") == []
    async with session_from(ATTACKER) as session:
        assert await health_status(session, osnova.url) == 200
        # Lifting also forgot the failures: one more bad token does not ban again.
        assert await bad_token_call(session, osnova.url) == 401
        assert await health_status(session, osnova.url) == 200
    assert await osnova.runtime.store.bans() == []


@pytest.mark.parametrize(
    ("address", "code"),
    [("192.0.2.77", NOT_FOUND), ("not-an-ip", INVALID_PARAMS), ("", INVALID_PARAMS), ("10.0.0.0/8", INVALID_PARAMS)],
)
async def test_bans_lift_bad_input_changes_nothing(osnova: RunningServer, address: str, code: int) -> None:
    await provoke_ban(osnova, ATTACKER)
    async with osnova.client(admin=True) as admin:
        with pytest.raises(RpcCallError) as caught:
            await admin.call("bans.lift", {"address": address})
    assert caught.value.code == code
    if code == INVALID_PARAMS:
        assert "'address'" in caught.value.message
    assert [b.address for b in osnova.runtime.bans.active()] == [ATTACKER]


async def test_banned_loopback_still_admits_an_admin_token(osnova: RunningServer) -> None:
    """So `osnova-server bans lift` works from the server's own machine."""
    await provoke_ban(osnova, "127.0.0.1")
    async with osnova.client() as anonymous:
        with pytest.raises(TransportError) as caught:
            await anonymous.call("pairing.complete", {"token": "ZZZZ-ZZZZ"})
    assert caught.value.status == 403
    async with osnova.client(admin=True) as admin:
        assert await admin.call("bans.lift", {"address": "127.0.0.1"}) is True
    async with osnova.client() as anonymous:
        with pytest.raises(RpcCallError):
            await anonymous.call("pairing.complete", {"token": "ZZZZ-ZZZZ"})


async def test_device_token_from_a_banned_address_is_refused(osnova: RunningServer) -> None:
    grant = await pair_device(osnova)
    await provoke_ban(osnova, "127.0.0.1")
    async with osnova.client(grant["access_token"]) as device:
        with pytest.raises(TransportError) as caught:
            await device.call("status.get")
    assert caught.value.status == 403


async def test_reload_changes_the_threshold(osnova: RunningServer, state_dir: Path) -> None:
    osnova.runtime.reload(make_config(state_dir, ban={"max_failures": 2}))
    async with session_from(ATTACKER) as session:
        assert [await bad_token_call(session, osnova.url) for _ in range(3)] == [401, 401, 403]



# -- [ban] ignore ---------------------------------------------------------------------------------


async def test_ignored_addresses_are_never_counted_nor_banned(store: Store) -> None:
    bans = BanList(store, settings(ignore=["127.0.0.0/8", "::1/128", "192.168.1.0/24"]), FakeClock(NOW))
    for address in ("127.0.0.1", "::1", "192.168.1.7", "::ffff:127.0.0.1"):
        for _ in range(5):
            assert bans.record_failure(address) is None
        assert bans.failures(address) == 0 and bans.banned(address) is None
    for _ in range(3):
        bans.record_failure("192.168.2.7")
    assert bans.banned("192.168.2.7") is not None


async def test_a_ban_on_an_address_later_ignored_is_not_enforced(store: Store) -> None:
    bans = BanList(store, settings(ignore=[]), FakeClock(NOW))
    bans.ban("10.0.0.5", "test")
    assert bans.banned("10.0.0.5") is not None
    bans.reconfigure(settings(ignore=["10.0.0.0/8"]))  # a SIGHUP adding it to the list
    assert bans.banned("10.0.0.5") is None
    bans.reconfigure(settings(ignore=[]))
    assert bans.banned("10.0.0.5") is not None


async def test_loopback_is_ignored_by_default(state_dir: Path) -> None:
    config = make_config(state_dir, ban={"ignore": BanSection().ignore, "max_failures": 2})
    async with running_server(config) as server, session_from("127.0.0.9") as session:
        for _ in range(4):
            assert await bad_token_call(session, server.url) == 401
        assert server.runtime.bans.banned("127.0.0.9") is None
        assert await health_status(session, server.url) == 200
