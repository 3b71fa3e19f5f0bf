"""GET /health and GET /status through a real server on a loopback port."""

from __future__ import annotations

import re

import aiohttp

from osnova_server import __version__
from tests.conftest import RunningServer

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


async def test_health_answers_healthy_with_a_utc_timestamp(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{osnova.url}/health") as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body["status"] == "healthy"
    assert RFC3339_UTC.match(body["timestamp"])


async def test_status_reports_real_counts(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{osnova.url}/status") as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body["version"] == __version__
    assert body["mode"] == "server"
    assert body["connections"] == 0
    assert body["active_sessions"] == 0
    assert body["max_connections"] == osnova.config.server.max_clients
    assert 0 <= body["uptime"] < 60


async def test_security_headers_and_no_server_version(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    for path in ("/health", "/status", "/no-such-route"):
        async with http.get(f"{osnova.url}{path}") as answer:
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["Referrer-Policy"] == "no-referrer"
            assert "aiohttp" not in answer.headers.get("Server", "").lower()
            assert "python" not in answer.headers.get("Server", "").lower()


async def test_unknown_route_is_a_json_404(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{osnova.url}/nope") as answer:
        assert answer.status == 404
        assert answer.content_type == "application/json"
        assert (await answer.json())["error"] == "Not Found"
