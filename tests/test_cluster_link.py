"""Redis going away and coming back: degraded, still serving, then shared again without a restart."""

from __future__ import annotations

from pathlib import Path

from osnova_server.errors import INTERNAL_ERROR
from tests import services
from tests.cluster import call, call_error, pair, two_servers, wait_for

NO_BANS = {"ban": {"max_failures": 1000}}


def _redis_status(answer: dict[str, object]) -> str:
    services_ = answer["services"]
    assert isinstance(services_, list)
    return next(s["status"] for s in services_ if s["name"] == "redis")


async def test_redis_stopped_and_started_again(tmp_path: Path, own_redis: services.RedisServer) -> None:
    async with two_servers(tmp_path, own_redis.url, **NO_BANS) as (a, b):
        grant = await pair(a, a)
        status = await call(a, "status.get")
        assert status["status"] == "ok" and _redis_status(status) == "ok"
        assert status["instance"] == "a"

        own_redis.stop()
        status = await call(a, "status.get")
        assert status["status"] == "degraded" and _redis_status(status) == "degraded"
        # Authenticated calls go on, on what each process knows.
        assert await call(a, "config.getServer", token=grant["access_token"]) is None
        assert await call(b, "apps.list") == []
        # Pairing needs the shared codes: a clear error, no traceback.
        err = await call_error(b, "pairing.start")
        assert err.code == INTERNAL_ERROR and "Redis" in err.message and "try again" in err.message
        async with a.client() as client:
            assert (await client.get_json("/status"))["status"] == "degraded"

        own_redis.start()
        for server in (a, b):
            await wait_for(
                lambda server=server: _status_ok(server), timeout=15, what="status back to ok",
            )
        # Shared again: a code from B works on A.
        assert (await pair(b, a))["device_id"]


async def _status_ok(server: object) -> bool:
    answer = await call(server, "status.get")  # type: ignore[arg-type]
    return bool(answer["status"] == "ok")
