"""The Origin check on /rpc and /ws: 403 before the body, the upgrade or the token (web/origin.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from osnova_server.web.origin import origin_allowed
from tests.conftest import RunningServer, make_config, running_server

TRUSTED = "http://localhost:3000"
EVIL = "https://evil.example"


@pytest.fixture
async def server(state_dir: Path) -> AsyncIterator[RunningServer]:
    """A server that trusts one web origin and bans loopback like any other address."""
    config = make_config(state_dir, cors={"allowed_origins": [TRUSTED + "/"]}, ban={"ignore": []})
    async with running_server(config) as running:
        yield running


def refusal(origin: str) -> dict[str, str]:
    """The 403 body for a page at `origin`."""
    return {"error": f"web pages from {origin} may not call this server; if you trust that page, "
                     "add its origin to [cors] allowed_origins"}


async def test_a_cross_origin_text_plain_post_is_403_and_counts_nothing_towards_a_ban(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": "config.setServer",
                       "params": {"address": "http://evil.example"}, "id": 1})
    headers = {"Origin": EVIL, "Content-Type": "text/plain", "Authorization": "Bearer not-a-token"}
    for _ in range(3):
        async with http.post(f"{server.url}/rpc", data=body, headers=headers) as answer:
            assert answer.status == 403
            assert await answer.json() == refusal(EVIL)
            assert "Access-Control-Allow-Origin" not in answer.headers
    assert server.runtime.bans.failures("127.0.0.1") == 0
    assert await server.runtime.settings.get_server() is None
    # The same request without Origin (curl) is judged on its token, and that failure counts.
    del headers["Origin"]
    async with http.post(f"{server.url}/rpc", data=body, headers=headers) as answer:
        assert answer.status == 401
    assert server.runtime.bans.failures("127.0.0.1") == 1


async def test_a_cross_origin_public_call_runs_nothing(server: RunningServer, http: aiohttp.ClientSession) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": "pairing.complete", "params": {"token": "ABCD-1234"}, "id": 1})
    async with http.post(f"{server.url}/rpc", data=body, headers={"Origin": "null"}) as answer:
        assert answer.status == 403
        assert await answer.json() == refusal("null")
    assert server.runtime.bans.failures("127.0.0.1") == 0  # a wrong code would have counted


async def test_a_cross_origin_upgrade_is_refused_before_the_upgrade(
    server: RunningServer, http: aiohttp.ClientSession,
) -> None:
    url = server.url.replace("http", "ws", 1) + "/ws"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers={"Origin": EVIL, "Authorization": "Bearer not-a-token"})
    assert refused.value.status == 403
    assert server.runtime.bans.failures("127.0.0.1") == 0
    assert server.runtime.connection_count() == 0
    # The trusted page and the server's own pages may connect.
    for origin in (TRUSTED, server.url):
        async with http.ws_connect(url, headers={"Origin": origin, "Authorization": f"Bearer {server.admin_token()}"}) as ws:
            connected = await ws.receive_json()
            assert connected["method"] == "connected"


@pytest.mark.parametrize("origin", [TRUSTED, TRUSTED.upper(), "own"])
async def test_trusted_and_own_origins_and_no_origin_are_served(
    server: RunningServer, http: aiohttp.ClientSession, origin: str,
) -> None:
    body = json.dumps({"jsonrpc": "2.0", "method": "status.get", "id": 1})
    headers = {"Authorization": f"Bearer {server.admin_token()}",
               "Origin": server.url if origin == "own" else origin}
    async with http.post(f"{server.url}/rpc", data=body, headers=headers) as answer:
        assert answer.status == 200
        assert (await answer.json())["result"]["status"] == "ok"
    del headers["Origin"]
    async with http.post(f"{server.url}/rpc", data=body, headers=headers) as answer:
        assert answer.status == 200


async def test_other_routes_are_not_origin_checked(server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.url}/health", headers={"Origin": EVIL}) as answer:
        assert answer.status == 200
        assert "Access-Control-Allow-Origin" not in answer.headers


async def test_a_wildcard_allows_every_origin(state_dir: Path, http: aiohttp.ClientSession) -> None:
    async with running_server(make_config(state_dir, cors={"allowed_origins": ["*"]})) as server:
        body = json.dumps({"jsonrpc": "2.0", "method": "rpc.discover", "id": 1})
        async with http.post(f"{server.url}/rpc", data=body, headers={"Origin": EVIL}) as answer:
            assert answer.status == 200


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://127.0.0.1:8080", True),
    ("http://127.0.0.1:8080/", True),
    ("HTTP://127.0.0.1:8080", True),
    ("https://127.0.0.1:8080", False),
    ("http://127.0.0.1:8081", False),
    ("http://localhost:3000", True),
    ("http://localhost:3000.evil.example", False),
    ("null", False),
    ("", False),
])
def test_origin_allowed(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, "http://127.0.0.1:8080", ["http://localhost:3000/"]) is allowed
