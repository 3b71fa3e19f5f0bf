"""The order of the request checks (web/pipeline.py, as app.py writes it down), through a real server.

Each check has its own tests; these pin what only the order decides: which refusal a request
that several checks would refuse gets, and that the later checks did not run (no token was
looked at, no failure counted, no body read).
"""

from __future__ import annotations

import aiohttp

from tests.conftest import RunningServer
from tests.test_ban import ATTACKER, provoke_ban, session_from

CALL = b'{"jsonrpc":"2.0","method":"status.get","id":1}'
BAD_TOKEN = {"Authorization": "Bearer not.a.token"}


def failures(server: RunningServer) -> int:
    """Failed authentications counted so far, whatever their kind."""
    return sum(server.runtime.auth_failures.values())


async def test_a_foreign_host_is_421_before_the_ban_and_the_token_are_looked_at(osnova: RunningServer) -> None:
    await provoke_ban(osnova, ATTACKER)
    counted = failures(osnova)
    async with session_from(ATTACKER) as session:
        headers = {**BAD_TOKEN, "Host": "rebound.example"}
        async with session.post(f"{osnova.url}/rpc", data=CALL, headers=headers) as answer:
            assert answer.status == 421
            assert "rebound.example" in (await answer.json())["error"]
    assert failures(osnova) == counted


async def test_a_banned_address_is_refused_before_its_token_is_read(osnova: RunningServer) -> None:
    await provoke_ban(osnova, ATTACKER)
    counted = failures(osnova)
    async with session_from(ATTACKER) as session, session.post(f"{osnova.url}/rpc", data=CALL, headers=BAD_TOKEN) as answer:
        assert answer.status == 403
        assert "Retry-After" in answer.headers
        assert "WWW-Authenticate" not in answer.headers
    assert failures(osnova) == counted


async def test_a_bad_token_is_refused_before_the_body_is_looked_at(
    osnova: RunningServer, http: aiohttp.ClientSession,
) -> None:
    headers = {**BAD_TOKEN, "Content-Encoding": "gzip"}
    async with http.post(f"{osnova.url}/rpc", data=CALL, headers=headers) as answer:
        assert answer.status == 401  # not the body check's 415
        assert answer.headers["WWW-Authenticate"] == "Bearer"


async def test_refusals_of_the_checks_are_json_and_carry_every_answer_header(
    osnova: RunningServer, http: aiohttp.ClientSession,
) -> None:
    for headers, status in (({"Host": "rebound.example"}, 421), (BAD_TOKEN, 401), ({"Content-Encoding": "br"}, 415)):
        async with http.post(f"{osnova.url}/rpc", data=CALL, headers=headers) as answer:
            assert answer.status == status
            assert answer.content_type == "application/json"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert answer.headers["Server"] == "osnova-server"
