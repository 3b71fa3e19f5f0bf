"""CORS: only configured origins are allowed, preflights state the allowed set, SIGHUP changes origins."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server import config as config_module
from osnova_server.config import Config
from tests.conftest import RunningServer, ServerProcess, free_port, make_config, running_server, write_config

APP_ORIGIN = "http://localhost:3000"
OTHER_ORIGIN = "https://evil.example"


@pytest.fixture
async def cors_server(state_dir: Path) -> AsyncIterator[RunningServer]:
    """A server that allows one origin (configured with a trailing slash, as people write it)."""
    async with running_server(make_config(state_dir, cors={"allowed_origins": [APP_ORIGIN + "/"]})) as server:
        yield server


def preflight_headers(origin: str, method: str = "POST", headers: str = "content-type, authorization") -> dict[str, str]:
    """The headers a browser sends before a cross-origin request."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def preflight(
    http: aiohttp.ClientSession, url: str, origin: str, **kwargs: Any,
) -> tuple[int, Mapping[str, str]]:
    """OPTIONS /rpc as a browser would; return status and headers."""
    async with http.options(f"{url}/rpc", headers=preflight_headers(origin, **kwargs)) as answer:
        await answer.read()
        return answer.status, answer.headers


@pytest.mark.parametrize("path", ["/rpc", "/health", "/status"])
async def test_preflight_from_a_configured_origin(
    cors_server: RunningServer, http: aiohttp.ClientSession, path: str,
) -> None:
    async with http.options(f"{cors_server.url}{path}", headers=preflight_headers(APP_ORIGIN, "GET")) as answer:
        assert answer.status == 200
        assert answer.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert answer.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
        assert answer.headers["Access-Control-Allow-Headers"] == "Content-Type, Authorization"
        assert answer.headers["Access-Control-Allow-Credentials"] == "true"
        assert answer.headers["Access-Control-Max-Age"] == "600"
        assert "Origin" in answer.headers["Vary"]


async def test_preflight_from_an_origin_not_configured(cors_server: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.options(f"{cors_server.url}/rpc", headers=preflight_headers(OTHER_ORIGIN)) as answer:
        assert answer.status == 403
        assert answer.content_type == "application/json"
        assert "Access-Control-Allow-Origin" not in answer.headers
        assert "Access-Control-Allow-Methods" not in answer.headers


@pytest.mark.parametrize(
    ("method", "headers"),
    [("PUT", "content-type"), ("DELETE", ""), ("POST", "x-custom"), ("POST", "content-type, cookie")],
)
async def test_preflight_for_what_is_not_allowed(
    cors_server: RunningServer, http: aiohttp.ClientSession, method: str, headers: str,
) -> None:
    status, answer = await preflight(http, cors_server.url, APP_ORIGIN, method=method, headers=headers)
    assert status == 403
    assert "Access-Control-Allow-Origin" not in answer


async def test_actual_requests(cors_server: RunningServer, http: aiohttp.ClientSession) -> None:
    call = b'{"jsonrpc":"2.0","method":"pairing.complete","params":{"token":"ZZZZ-ZZZZ"},"id":1}'
    async with http.post(f"{cors_server.url}/rpc", data=call, headers={"Origin": APP_ORIGIN}) as answer:
        assert answer.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
        assert set(answer.headers["Access-Control-Expose-Headers"].split(",")) == {"Retry-After", "WWW-Authenticate"}
    async with http.post(f"{cors_server.url}/rpc", data=call, headers={"Origin": OTHER_ORIGIN}) as answer:
        assert answer.status == 403  # a foreign page's call is refused outright (web/origin.py)
        assert "Access-Control-Allow-Origin" not in answer.headers
        assert "Origin" in answer.headers["Vary"]
    async with http.post(f"{cors_server.url}/rpc", data=call) as answer:
        assert "Access-Control-Allow-Origin" not in answer.headers


@pytest.mark.parametrize(("method", "path"), [("POST", "/rpc"), ("GET", "/health"), ("OPTIONS", "/rpc"), ("GET", "/nope")])
async def test_answers_without_origin_carry_no_cors_headers(
    cors_server: RunningServer, http: aiohttp.ClientSession, method: str, path: str,
) -> None:
    """What curl, the apps and the CLI get: no CORS header and no Vary, whatever the route."""
    call = b'{"jsonrpc":"2.0","method":"pairing.complete","params":{"token":"ZZZZ-ZZZZ"},"id":1}'
    async with http.request(method, f"{cors_server.url}{path}", data=call if method == "POST" else None) as answer:
        await answer.read()
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert not [name for name in answer.headers if name.lower().startswith("access-control-")]
        assert "Vary" not in answer.headers


async def test_a_401_is_readable_by_the_allowed_origin(cors_server: RunningServer, http: aiohttp.ClientSession) -> None:
    """A browser app must be able to see that its token expired."""
    async with http.post(f"{cors_server.url}/rpc", data=b"{}",
                         headers={"Origin": APP_ORIGIN, "Authorization": "Bearer expired"}) as answer:
        assert answer.status == 401
        assert answer.headers["Access-Control-Allow-Origin"] == APP_ORIGIN


async def test_wildcard_only_when_configured_and_without_credentials(
    state_dir: Path, http: aiohttp.ClientSession,
) -> None:
    async with running_server(make_config(state_dir, cors={"allowed_origins": ["*"]})) as server:
        status, headers = await preflight(http, server.url, OTHER_ORIGIN)
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == OTHER_ORIGIN
        assert "Access-Control-Allow-Credentials" not in headers


async def test_no_origins_configured_allows_none(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    assert osnova.config.cors.allowed_origins == []
    status, headers = await preflight(http, osnova.url, APP_ORIGIN)
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


async def test_reload_changes_origins(cors_server: RunningServer, http: aiohttp.ClientSession) -> None:
    config = cors_server.config
    cors_server.runtime.reload(make_config(config.state_dir, cors={"allowed_origins": [OTHER_ORIGIN]}))
    assert (await preflight(http, cors_server.url, OTHER_ORIGIN))[0] == 200
    assert (await preflight(http, cors_server.url, APP_ORIGIN))[0] == 403


def _sync_preflight(url: str, origin: str) -> int:
    """A blocking preflight for the process test (urllib raises on 403)."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/rpc", method="OPTIONS", headers=preflight_headers(origin))
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_sighup_changes_origins_without_a_restart(tmp_path: Path, server_process: Any) -> None:
    port = free_port()
    config = make_config(tmp_path / "state", server={"bind_address": f"127.0.0.1:{port}",
                                                     "state_dir": str(tmp_path / "state")},
                         cors={"allowed_origins": [APP_ORIGIN]})
    path = write_config(tmp_path / "server.toml", config)
    process: ServerProcess = server_process(path)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(url)
    pid = process.process.pid
    assert _sync_preflight(url, APP_ORIGIN) == 200
    assert _sync_preflight(url, OTHER_ORIGIN) == 403
    write_config(path, _with_origins(config, [OTHER_ORIGIN]))
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while _sync_preflight(url, OTHER_ORIGIN) != 200:
        assert time.monotonic() < deadline, "SIGHUP did not change the CORS origins"
        time.sleep(0.02)
    assert _sync_preflight(url, APP_ORIGIN) == 403
    assert process.process.poll() is None  # same process: no restart
    code, _ = process.stop()
    assert code == 0


def _with_origins(config: Config, origins: list[str]) -> Config:
    """`config` with other CORS origins."""
    return config_module.replace(config, "cors", allowed_origins=origins)
