"""Every instance lists itself in Redis; status.get (and `osnova-server status`) shows them all."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import call, two_servers, wait_for


async def test_status_get_lists_every_live_instance(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url) as (a, b):
        async def names() -> list[str]:
            return [i["name"] for i in (await call(b, "status.get"))["instances"]]

        await wait_for(lambda: _equal(names(), ["a", "b"]), what="both instances listed")
        record = next(i for i in (await call(a, "status.get"))["instances"] if i["name"] == "a")
        assert record["address"] == a.url
        assert record["connections"] == 0
        await a.server.stop()
        # A left at shutdown: B lists only itself.
        assert await names() == ["b"]


async def _equal(names: object, expected: list[str]) -> bool:
    return await names == expected  # type: ignore[misc]
