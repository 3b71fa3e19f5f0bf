"""Pairing codes in Redis: issued on one instance, redeemed on another; wrong tries count across."""

from __future__ import annotations

from pathlib import Path

from osnova_server.errors import UNAUTHORIZED
from tests.cluster import call, call_error, cluster_config, two_servers
from tests.conftest import running_server

NO_BANS = {"ban": {"max_failures": 1000}}


async def test_a_code_issued_on_a_is_redeemed_on_b_once(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url, **NO_BANS) as (a, b):
        payload = await call(a, "pairing.start", {"name": "kitchen tablet"})
        code = payload["pairing"]["code"]
        grant = await call(b, "pairing.complete", {"token": code}, token="")
        assert grant["token_type"] == "Bearer" and grant["device_id"]
        assert [d["name"] for d in await call(b, "devices.list")] == ["kitchen tablet"]
        for server in (a, b):  # used up everywhere
            assert (await call_error(server, "pairing.complete", {"token": code}, token="")).code == UNAUTHORIZED


async def test_five_wrong_tries_over_a_and_b_void_every_code(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url, **NO_BANS) as (a, b):
        codes = [(await call(a, "pairing.start"))["pairing"]["code"] for _ in range(2)]
        for server in (a, b, a, b, a):  # three on A, two on B: neither alone saw five
            err = await call_error(server, "pairing.complete", {"token": "ZZZZ-ZZZZ"}, token="")
            assert err.code == UNAUTHORIZED
        for server, code in zip((a, b), codes, strict=True):
            assert (await call_error(server, "pairing.complete", {"token": code}, token="")).code == UNAUTHORIZED
        assert await call(a, "devices.list") == [] and await call(b, "devices.list") == []


async def test_four_wrong_tries_leave_the_codes_valid(tmp_path: Path, redis_url: str) -> None:
    async with two_servers(tmp_path, redis_url, **NO_BANS) as (a, b):
        code = (await call(b, "pairing.start"))["pairing"]["code"]
        for server in (a, b, a, b):
            await call_error(server, "pairing.complete", {"token": "ZZZZ-ZZZZ"}, token="")
        assert (await call(a, "pairing.complete", {"token": code}, token=""))["device_id"]


async def test_codes_survive_a_restart_of_the_instance(tmp_path: Path, redis_url: str) -> None:
    config = cluster_config(tmp_path / "a", redis_url)
    async with running_server(config) as a:
        code = (await call(a, "pairing.start"))["pairing"]["code"]
    async with running_server(config) as a:
        assert (await call(a, "pairing.complete", {"token": code}, token=""))["device_id"]
