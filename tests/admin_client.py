"""An HTTP client that does what the admin page's script does: sign in by link, then call as the page."""

from __future__ import annotations

from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiohttp

from tests.conftest import RunningServer

CSRF: Final = "X-CSRF-Token"
COOKIE: Final = "osnova_admin"
# What Chromium sends with the page's own fetches; tests that forge requests change it.
SAME_ORIGIN: Final = {"Sec-Fetch-Site": "same-origin"}


async def login_link(server: RunningServer, ttl: int | None = None) -> dict[str, Any]:
    """Call admin.loginLink with an admin token, as `osnova-server admin-url` does."""
    async with server.client(admin=True) as client:
        result: dict[str, Any] = await client.call("admin.loginLink", {} if ttl is None else {"ttl": ttl})
        return result


def link_secret(url: str) -> str:
    """The secret a login link carries in its fragment."""
    return urlsplit(url).fragment


class AdminPage:
    """A cookie-keeping client signed into the admin page, with the session's CSRF token."""

    def __init__(self, server: RunningServer) -> None:
        self.server = server
        # unsafe: the server is addressed by IP, and aiohttp keeps no IP cookies otherwise.
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    @property
    def cookie(self) -> str | None:
        """The session cookie the client holds."""
        for cookie in self.http.cookie_jar:
            if cookie.key == COOKIE:
                return cookie.value
        return None

    async def submit_secret(self, secret: str, headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
        """POST the login form as the landing page's script does; redirects are not followed."""
        async with self.http.post(
            f"{self.server.url}/admin/login", data={"secret": secret},
            headers={**SAME_ORIGIN, **(headers or {})}, allow_redirects=False,
        ) as response:
            await response.read()
            return response

    async def sign_in(self) -> AdminPage:
        """Follow a fresh link and pick up the CSRF token, as the page does on load."""
        response = await self.submit_secret(link_secret((await login_link(self.server))["url"]))
        assert response.status == 303, response.status
        async with self.http.get(f"{self.server.url}/admin/api/session") as answer:
            assert answer.status == 200
            self.csrf = (await answer.json())["csrf_token"]
        return self

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST JSON to an admin endpoint with the CSRF token (unless `headers` say otherwise)."""
        sent = {**SAME_ORIGIN, CSRF: self.csrf, **(headers or {})}
        sent = {key: value for key, value in sent.items() if value is not None}
        async with self.http.post(f"{self.server.url}{path}", json=body, headers=sent) as response:
            return response.status, await response.json(content_type=None)

    async def rpc(self, method: str, params: Any = None, headers: dict[str, str] | None = None) -> Any:
        """Call a method through /admin/rpc; the whole JSON-RPC answer."""
        status, answer = await self.post(
            "/admin/rpc", {"jsonrpc": "2.0", "id": 1, "method": method, "params": params or {}}, headers,
        )
        assert status == 200, answer
        return answer

    async def call(self, method: str, params: Any = None) -> Any:
        """The result of a method called through /admin/rpc."""
        answer = await self.rpc(method, params)
        assert "result" in answer, answer
        return answer["result"]
