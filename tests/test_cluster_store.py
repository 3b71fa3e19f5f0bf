"""Two instances on one PostgreSQL and one Redis: shared rows, caches kept in step, outages."""

from __future__ import annotations

import json
import time
from pathlib import Path

import aiohttp

from osnova_server.errors import INTERNAL_ERROR
from osnova_server.events import APPS_INSTALLED
from tests import services
from tests.cluster import call, call_error, pair, socket, two_servers, wait_for

NO_BANS = {"ban": {"max_failures": 1000}}


def write_manifest(directory: Path, app_id: str = "ant://notes", version: str = "1.0.0") -> str:
    """A valid manifest file; its file:// URI (admin tokens may install those)."""
    path = directory / f"{app_id.rsplit('/', 1)[-1]}-{version}.json"
    path.write_text(json.dumps({
        "id": app_id, "name": "Notes", "version": version, "iconUri": "https://example.com/n.png",
        "description": "Take notes",
        "components": [{"id": "ant://notes-ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
    }))
    return path.as_uri()


async def test_an_app_installed_through_a_is_listed_by_b_and_its_event_reaches_b(
    tmp_path: Path, redis_url: str, pg_url: str,
) -> None:
    async with two_servers(tmp_path, redis_url, pg_url) as (a, b), socket(b, b.admin_token()) as ws:
        subscribe = {"jsonrpc": "2.0", "method": "events.subscribe", "params": {"topics": [APPS_INSTALLED]}, "id": 1}
        await ws.send_json(subscribe)
        assert (await ws.receive_json(timeout=10))["result"] is True
        assert await call(a, "apps.install", {"manifest_uri": write_manifest(tmp_path)}) == "ant://notes"
        event = await ws.receive_json(timeout=10)
        assert event["params"]["topic"] == APPS_INSTALLED and event["params"]["data"]["id"] == "ant://notes"
        # The event came after B's cache was refreshed: B lists the app at once.
        assert [app["id"] for app in await call(b, "apps.list")] == ["ant://notes"]
        assert await call(b, "apps.uninstall", {"app_id": "ant://notes"}) is True
        await wait_for(lambda: a.runtime.store.apps() == [], what="A forgetting the app")


async def test_a_device_paired_on_a_refreshes_on_b_and_is_listed_by_both(
    tmp_path: Path, redis_url: str, pg_url: str,
) -> None:
    async with two_servers(tmp_path, redis_url, pg_url, **NO_BANS) as (a, b):
        grant = await pair(a, b)
        again = await call(a, "auth.refresh", {"refresh_token": grant["refresh_token"]}, token="")
        assert again["device_id"] == grant["device_id"]
        for server in (a, b):
            await wait_for(
                lambda server=server: [d.device_id for d in server.runtime.store.devices()] == [grant["device_id"]],
                what="the device in both caches",
            )


async def test_a_revocation_on_a_closes_the_device_socket_on_b_within_a_second(
    tmp_path: Path, redis_url: str, pg_url: str,
) -> None:
    async with two_servers(tmp_path, redis_url, pg_url, **NO_BANS) as (a, b):
        grant = await pair(b, a)
        async with socket(b, grant["access_token"]) as ws:
            started = time.monotonic()
            assert await call(a, "devices.revoke", {"device_id": grant["device_id"]}) is True
            await ws.receive(timeout=5)
            elapsed = time.monotonic() - started
        assert ws.close_code == 4401
        assert elapsed < 1.0
        device = b.runtime.store.device(grant["device_id"])
        assert device is not None and device.revoked


async def test_postgresql_stopped_answers_database_unavailable_and_health_stays_up(
    tmp_path: Path, redis_url: str, own_postgres: services.PostgresServer,
) -> None:
    url = own_postgres.new_database()
    async with two_servers(tmp_path, redis_url, url) as (a, b), aiohttp.ClientSession() as session:
        uri = write_manifest(tmp_path)
        assert await call(a, "apps.install", {"manifest_uri": uri}) == "ant://notes"
        await wait_for(lambda: b.runtime.store.apps(), what="B learning of the app")
        own_postgres.stop()
        err = await call_error(b, "apps.install", {"manifest_uri": write_manifest(tmp_path, "ant://todo")})
        assert err.code == INTERNAL_ERROR and err.message.startswith("database unavailable")
        # What each process knows is still served.
        assert [app["id"] for app in await call(b, "apps.list")] == ["ant://notes"]
        async with session.get(f"{b.url}/health") as health:
            assert health.status == 200
        async with session.get(f"{b.url}/status") as status:
            body = await status.json()
        assert status.status == 200 and body["status"] == "error"
        assert {s["name"]: s["status"] for s in body["services"]}["database"] == "error"

        own_postgres.start()
        await wait_for(
            lambda: _installs(b, write_manifest(tmp_path, "ant://todo")), timeout=20, what="installs working again",
        )
        # A missed the announcement's rows while its pool reconnected; it reads them again soon.
        await wait_for(
            lambda: {app.id for app in a.runtime.store.apps()} == {"ant://notes", "ant://todo"},
            timeout=15, what="A listing both apps",
        )


async def _installs(server: object, uri: str) -> bool:
    """Whether apps.install succeeds now."""
    try:
        return bool(await call(server, "apps.install", {"manifest_uri": uri}))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - still down: poll again
        return False


async def test_with_redis_down_a_revocation_on_a_is_read_from_postgresql_by_b(
    tmp_path: Path, own_redis: services.RedisServer, pg_url: str,
) -> None:
    async with two_servers(tmp_path, own_redis.url, pg_url, **NO_BANS) as (a, b):
        grant = await pair(a, b)
        await wait_for(lambda: b.runtime.store.device(grant["device_id"]), what="B knowing the device")
        async with socket(b, grant["access_token"]) as ws:
            own_redis.stop()
            assert await call(a, "devices.revoke", {"device_id": grant["device_id"]}) is True
            # No bus: B finds the revocation in PostgreSQL on its next look (every 2 s).
            await ws.receive(timeout=10)
        assert ws.close_code == 4401
        assert b.runtime.tokens.is_revoked(grant["device_id"])
        async with aiohttp.ClientSession() as session, session.post(
            f"{b.url}/rpc", json={"jsonrpc": "2.0", "method": "config.getServer", "id": 1},
            headers={"Authorization": f"Bearer {grant['access_token']}"},
        ) as answer:
            assert answer.status == 401
