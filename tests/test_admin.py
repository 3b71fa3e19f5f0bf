"""The admin page over HTTP (web/admin/views.py): sign-in, sessions, CSRF, origins, headers, the RPC bridge."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import aiohttp
import pytest

from osnova_server.errors import FORBIDDEN, INVALID_PARAMS
from tests.admin_client import CSRF, SAME_ORIGIN, AdminPage, link_secret, login_link
from tests.clock import FakeClock
from tests.conftest import RunningServer, make_config, running_server
from tests.test_pairing import pair_device

CSP: Final = "default-src 'self'; frame-ancestors 'none'"
NEW_LINK_HINT: Final = "osnova-server admin-url"


@pytest.fixture
async def page(osnova: RunningServer) -> AsyncIterator[AdminPage]:
    """A client signed into the admin page."""
    async with AdminPage(osnova) as signed_in:
        yield await signed_in.sign_in()


# -- admin.loginLink -----------------------------------------------------------------------


async def test_login_link_points_at_the_server_and_expires_by_default_in_ten_minutes(osnova: RunningServer) -> None:
    before = time.time()
    link = await login_link(osnova)
    assert set(link) == {"url", "expires_at"}
    base, _, secret = link["url"].partition("/admin/login#")
    assert base == osnova.url
    assert len(secret) >= 43
    expires = time.mktime(time.strptime(link["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 599 <= expires <= time.time() + 601


@pytest.mark.parametrize("ttl", [59, 3601, 0, -1])
async def test_login_link_ttl_outside_60_to_3600_is_invalid_params(osnova: RunningServer, ttl: int) -> None:
    async with osnova.client(admin=True) as client:
        answer = await client.post({"jsonrpc": "2.0", "id": 1, "method": "admin.loginLink", "params": {"ttl": ttl}})
    assert answer["error"]["code"] == INVALID_PARAMS
    assert "'ttl'" in answer["error"]["message"]


async def test_an_owner_device_gets_a_working_link_and_a_member_is_forbidden(osnova: RunningServer) -> None:
    owner = await pair_device(osnova, name="owner phone", role="owner")
    member = await pair_device(osnova, name="member phone")
    async with osnova.client(owner["access_token"]) as client:
        link = await client.call("admin.loginLink", {"ttl": 60})
    async with AdminPage(osnova) as page:
        assert (await page.submit_secret(link_secret(link["url"]))).status == 303
    async with osnova.client(member["access_token"]) as client:
        answer = await client.post({"jsonrpc": "2.0", "id": 1, "method": "admin.loginLink"})
    assert answer["error"]["code"] == FORBIDDEN


async def test_login_link_is_refused_to_anonymous_callers(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{osnova.url}/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "admin.loginLink"}) as answer:
        assert answer.status == 401


# -- signing in ----------------------------------------------------------------------------


async def test_the_link_sets_the_contract_cookie_and_leads_to_the_page(osnova: RunningServer) -> None:
    async with AdminPage(osnova) as page:
        response = await page.submit_secret(link_secret((await login_link(osnova))["url"]))
        assert response.status == 303
        assert response.headers["Location"] == "/admin/"
        cookie = response.headers["Set-Cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert cookie.startswith("osnova_admin=")
        assert {"httponly", "path", "samesite", "max-age"} <= attributes
        assert "Path=/admin" in cookie and "SameSite=Strict" in cookie and "Max-Age=43200" in cookie
        assert "secure" not in attributes  # plain HTTP; the TLS test below sees it
        async with page.http.get(f"{osnova.url}/admin/") as answer:
            assert answer.status == 200
            assert '<script src="/admin/static/admin.js" defer></script>' in await answer.text()


async def test_the_landing_page_is_served_without_a_session(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{osnova.url}/admin/login") as answer:
        assert answer.status == 200
        assert '<script src="/admin/static/login.js" defer></script>' in await answer.text()


async def test_a_used_link_is_refused_with_a_page_saying_how_to_get_a_new_one(osnova: RunningServer) -> None:
    secret = link_secret((await login_link(osnova))["url"])
    async with AdminPage(osnova) as first:
        assert (await first.submit_secret(secret)).status == 303
    async with AdminPage(osnova) as second:
        async with second.http.post(
            f"{osnova.url}/admin/login", data={"secret": secret}, headers=SAME_ORIGIN, allow_redirects=False,
        ) as refused:
            assert refused.status == 403
            assert refused.content_type == "text/html"
            assert "Set-Cookie" not in refused.headers
            text = await refused.text()
        assert "already used or has expired" in text
        assert NEW_LINK_HINT in text
        assert second.cookie is None


async def test_an_expired_link_is_refused(osnova: RunningServer) -> None:
    clock = FakeClock(time.time())
    osnova.runtime.admin_sessions.clock = clock  # type: ignore[attr-defined]
    secret = link_secret((await login_link(osnova, ttl=60))["url"])
    clock.advance(60)
    async with AdminPage(osnova) as page:
        assert (await page.submit_secret(secret)).status == 403
        assert page.cookie is None


@pytest.mark.parametrize("form", [{}, {"secret": ""}, {"secret": "x" * 129}, {"other": "y"}])
async def test_a_malformed_login_form_is_refused(osnova: RunningServer, form: dict[str, str]) -> None:
    async with AdminPage(osnova) as page, page.http.post(
        f"{osnova.url}/admin/login", data=form, headers=SAME_ORIGIN, allow_redirects=False,
    ) as answer:
        assert answer.status == 403
        assert NEW_LINK_HINT in await answer.text()


async def test_a_cross_origin_login_post_is_refused_and_spends_nothing(osnova: RunningServer) -> None:
    secret = link_secret((await login_link(osnova))["url"])
    async with AdminPage(osnova) as page:
        refused = await page.submit_secret(secret, {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"})
        assert refused.status == 403
        assert page.cookie is None
        assert (await page.submit_secret(secret)).status == 303  # the link is still good


# -- without a session ---------------------------------------------------------------------


async def test_without_the_cookie_nothing_is_served_but_how_to_sign_in(osnova: RunningServer, page: AdminPage) -> None:
    async with aiohttp.ClientSession() as stranger:
        async with stranger.get(f"{osnova.url}/admin/") as answer:
            assert answer.status == 401
            text = await answer.text()
            assert NEW_LINK_HINT in text and "admin.js" not in text
        async with stranger.get(f"{osnova.url}/admin/api/session") as answer:
            assert answer.status == 401
            assert "csrf_token" not in await answer.text()
        # Even with the right CSRF token, no cookie is no session.
        async with stranger.post(f"{osnova.url}/admin/rpc", headers={CSRF: page.csrf, **SAME_ORIGIN},
                                 json={"jsonrpc": "2.0", "id": 1, "method": "devices.list"}) as answer:
            assert answer.status == 401
            body = await answer.json()
        assert body["signed_out"] is True and NEW_LINK_HINT in body["error"]
        async with stranger.get(f"{osnova.url}/admin/live") as answer:
            assert answer.status == 401


async def test_a_bearer_token_does_not_open_the_admin_endpoints(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"Bearer {osnova.admin_token()}", **SAME_ORIGIN}
    async with http.post(f"{osnova.url}/admin/rpc", headers=headers,
                         json={"jsonrpc": "2.0", "id": 1, "method": "devices.list"}) as answer:
        assert answer.status == 401


async def test_GET_admin_redirects_to_the_page(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{osnova.url}/admin", allow_redirects=False) as answer:
        assert answer.status == 308
        assert answer.headers["Location"] == "/admin/"


# -- the RPC bridge, CSRF and origins ------------------------------------------------------


async def test_a_session_acts_as_admin_through_the_one_dispatcher(page: AdminPage, tmp_path: Path) -> None:
    manifest = tmp_path / "notes.json"
    manifest.write_text(json.dumps({
        "id": "ant://notes", "name": "Notes", "version": "1.0.0", "iconUri": "https://example.com/n.png",
        "description": "Take notes",
        "components": [{"id": "ant://notes-ui", "name": "UI", "kind": "frontend", "version": "1.0.0"}],
    }))
    # file:// manifests are for admins only: the session passes.
    assert await page.call("apps.install", {"manifest_uri": manifest.as_uri()}) == "ant://notes"
    assert [app["id"] for app in await page.call("apps.list")] == ["ant://notes"]
    batch_status, batch = await page.post("/admin/rpc", [
        {"jsonrpc": "2.0", "id": 1, "method": "status.get"},
        {"jsonrpc": "2.0", "id": 2, "method": "no.such"},
    ])
    assert batch_status == 200
    assert batch[0]["result"]["status"] in ("ok", "degraded") and batch[1]["error"]["code"] == -32601


@pytest.mark.parametrize("csrf", [None, "", "wrong", "x" * 43])
async def test_a_state_change_without_the_right_csrf_token_is_403_and_changes_nothing(
    page: AdminPage, csrf: str | None,
) -> None:
    before = await page.call("config.getServer")
    status, answer = await page.post(
        "/admin/rpc", {"jsonrpc": "2.0", "id": 1, "method": "config.setServer", "params": ["http://csrf.example:1"]},
        {CSRF: csrf},
    )
    assert status == 403
    assert "X-CSRF-Token" in answer["error"]
    assert await page.call("config.getServer") == before
    # Logging out is a state change too: without the token the session lives on.
    status, _ = await page.post("/admin/logout", {}, {CSRF: csrf})
    assert status == 403
    assert await page.call("config.getServer") == before


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
    {"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:9"},  # another port of this host
    {"Sec-Fetch-Site": None, "Origin": "http://evil.example"},  # a browser without Fetch Metadata
])
async def test_a_cross_origin_form_post_is_403_and_changes_nothing(page: AdminPage, headers: dict[str, str]) -> None:
    before = await page.call("config.getServer")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "config.setServer", "params": ["http://evil.example:1"]})
    sent = {key: value for key, value in {**headers, CSRF: page.csrf}.items() if value is not None}
    for path, form in (("/admin/rpc", {"payload": body}), ("/admin/logout", {}), ("/admin/qr", {"text": "x"})):
        async with page.http.post(f"{page.server.url}{path}", data=form, headers=sent) as answer:
            assert answer.status == 403, path
            assert "must come from the admin page" in (await answer.json())["error"]
    assert await page.call("config.getServer") == before


async def test_the_pages_own_post_under_no_referrer_passes(page: AdminPage) -> None:
    """Under `Referrer-Policy: no-referrer` a browser's own POSTs say `Origin: null`; the token decides."""
    answer = await page.rpc("status.get", headers={"Sec-Fetch-Site": None, "Origin": "null"})
    assert "result" in answer
    same = await page.rpc("status.get", headers={"Sec-Fetch-Site": None, "Origin": page.server.url})
    assert "result" in same


async def test_a_cross_origin_read_is_refused_and_never_granted_cors(state_dir: Path) -> None:
    """A configured CORS origin (a dev server on the same host) gets nothing of the admin page."""
    dev = "http://127.0.0.1:3000"
    async with running_server(make_config(state_dir, cors={"allowed_origins": [dev]})) as server, \
            AdminPage(server) as page:
        await page.sign_in()
        async with page.http.get(f"{server.url}/admin/api/session",
                                 headers={"Origin": dev, "Sec-Fetch-Site": "same-site"}) as answer:
            assert answer.status == 403
            assert "Access-Control-Allow-Origin" not in answer.headers
            assert page.csrf not in await answer.text()
        preflight = {"Origin": dev, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "x-csrf-token"}
        async with page.http.options(f"{server.url}/admin/rpc", headers=preflight) as answer:
            assert "Access-Control-Allow-Origin" not in answer.headers
        async with page.http.get(f"{server.url}/status", headers={"Origin": dev}) as answer:
            assert answer.headers["Access-Control-Allow-Origin"] == dev  # CORS itself still works


# -- logging out ---------------------------------------------------------------------------


async def test_logout_ends_the_session_and_a_replayed_cookie_is_refused(page: AdminPage) -> None:
    cookie = page.cookie
    assert cookie is not None
    status, answer = await page.post("/admin/logout", {})
    assert (status, answer) == (200, {"signed_out": True})
    assert page.cookie in (None, "")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as replay:
        headers = {"Cookie": f"osnova_admin={cookie}", CSRF: page.csrf, **SAME_ORIGIN}
        async with replay.get(f"{page.server.url}/admin/api/session", headers=headers) as answer:
            assert answer.status == 401
        async with replay.post(f"{page.server.url}/admin/rpc", headers=headers,
                               json={"jsonrpc": "2.0", "id": 1, "method": "devices.list"}) as answer:
            assert answer.status == 401
        async with replay.get(f"{page.server.url}/admin/", headers=headers) as answer:
            assert answer.status == 401


# -- headers and files ---------------------------------------------------------------------


@pytest.mark.parametrize(("path", "content_type"), [
    ("/admin/", "text/html"),
    ("/admin/login", "text/html"),
    ("/admin/static/admin.js", "javascript"),
    ("/admin/static/login.js", "javascript"),
    ("/admin/static/admin.css", "text/css"),
    ("/admin/static/favicon.svg", "image/svg+xml"),
    ("/admin/api/session", "application/json"),
])
async def test_every_admin_answer_carries_the_contract_headers(page: AdminPage, path: str, content_type: str) -> None:
    async with page.http.get(f"{page.server.url}{path}") as answer:
        assert answer.status == 200
        assert answer.content_type == content_type or (
            content_type == "javascript" and answer.content_type in ("text/javascript", "application/javascript")
        )
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["Referrer-Policy"] == "no-referrer"
        assert "Access-Control-Allow-Origin" not in answer.headers


async def test_refusals_carry_the_headers_too(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{osnova.url}/admin/") as answer:
        assert answer.status == 401
        assert answer.headers["Content-Security-Policy"] == CSP
        assert answer.headers["Cache-Control"] == "no-store"


async def test_the_pages_hold_no_inline_script_or_style() -> None:
    """What the CSP forbids is not in the files: no <style>, no style= and no inline <script>."""
    root = Path(__file__).resolve().parent.parent / "osnova_server" / "web" / "admin"
    for path in root.glob("templates/*.html"):
        text = path.read_text()
        assert "<style" not in text and "style=" not in text, path
        for chunk in text.split("<script")[1:]:
            assert chunk.lstrip().startswith("src="), path
            assert chunk.split(">", 1)[1].startswith("</script>"), path
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", text), path  # no onclick= and the like


# -- the QR image --------------------------------------------------------------------------


async def test_the_qr_image_is_a_same_origin_svg_of_the_text(page: AdminPage) -> None:
    payload = await page.call("pairing.start", {"name": "kitchen"})
    text = json.dumps(payload)
    status, sealed = await page.post("/admin/qr", {"text": text})
    assert status == 200
    url = sealed["url"]
    assert url.startswith("/admin/qr/") and url.endswith(".svg")
    assert payload["pairing"]["code"] not in url  # the code never shows in a URL (or an access log)
    async with page.http.get(f"{page.server.url}{url}") as answer:
        assert answer.status == 200
        assert answer.content_type == "image/svg+xml"
        svg = await answer.text()
    assert "<svg" in svg and "<path" in svg and "<script" not in svg
    forged = url.replace("/admin/qr/", "/admin/qr/A")
    async with page.http.get(f"{page.server.url}{forged}") as answer:
        assert answer.status == 404


@pytest.mark.parametrize("body", [{}, {"text": ""}, {"text": 5}, {"text": "x" * 2049}, [], "text"])
async def test_a_bad_qr_request_is_400(page: AdminPage, body: object) -> None:
    status, answer = await page.post("/admin/qr", body)
    assert status == 400
    assert "text" in answer["error"]


# -- TLS -----------------------------------------------------------------------------------


async def test_under_tls_the_cookie_is_secure(tmp_path: Path) -> None:
    import ssl

    from osnova_server.security.tls import generate_self_signed

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    cert, key = state / "server.crt", state / "server.key"
    generate_self_signed(cert, key)
    config = make_config(state, tls={"enabled": True, "cert_path": str(cert), "key_path": str(key)})
    async with running_server(config) as server:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        async with server.client(admin=True, ssl_context=context) as client:
            link = await client.call("admin.loginLink")
        assert link["url"].startswith(f"https://127.0.0.1:{server.server.port}/admin/login#")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http, http.post(
            f"{server.url}/admin/login", data={"secret": link_secret(link["url"])},
            headers=SAME_ORIGIN, allow_redirects=False,
        ) as answer:
            assert answer.status == 303
            cookie = answer.headers["Set-Cookie"]
    assert "; Secure" in cookie or "; secure" in cookie
