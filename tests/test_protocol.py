"""JSON-RPC 2.0 over POST /rpc, exactly as the specification's examples say, through a real server.

The specification's examples use `subtract`, `sum`, `update`...; here each is mapped onto a real
method of the server (status.get, rpc.discover, config.getServer/setServer, apps.list,
apps.uninstall, pairing.start, devices.list, identity.status). Every bad input is checked for its
exact answer and for leaving the server's state (advertised address, installed apps, paired
devices) as it was.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server.client import OsnovaClient
from osnova_server.rpc import codec, protocol
from osnova_server.web.rpc_view import COMPRESS_MIN_BYTES
from tests.conftest import RunningServer, cli, free_port, make_config, running_server, write_config
from tests.test_pairing import pair_device

ADDRESS = "https://home.example:8443"


@dataclass
class Answer:
    """What the server sent back for one POST /rpc."""

    status: int
    headers: Any
    raw: bytes

    @property
    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.raw)


class RpcPoster:
    """Posts raw bodies to /rpc with an admin token (or none) and reads the whole answer."""

    def __init__(self, server: RunningServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.token = server.admin_token()

    async def __call__(
        self, body: bytes | str | Any, *, token: bool = True, headers: dict[str, str] | None = None,
    ) -> Answer:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {self.token}"
        async with self.session.post(f"{self.server.url}/rpc", data=body, headers=sent) as response:
            return Answer(response.status, response.headers, await response.read())

    async def call(self, method: str, params: Any = None) -> Any:
        """A well-formed call that must succeed; its result."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
        if params is not None:
            request["params"] = params
        answer = await self(request)
        assert answer.status == 200, answer.raw
        assert "error" not in answer.json, answer.json
        return answer.json["result"]

    async def state(self) -> tuple[Any, ...]:
        """What bad input must never change: advertised address, installed apps, paired devices."""
        return await self.call("config.getServer"), await self.call("apps.list"), await self.call("devices.list")


@pytest.fixture
async def rpc(osnova: RunningServer) -> AsyncIterator[RpcPoster]:
    """A poster to the running server, with the advertised address set to a known value."""
    async with aiohttp.ClientSession() as session:
        poster = RpcPoster(osnova, session)
        assert await poster.call("config.setServer", {"address": ADDRESS}) is True
        yield poster


def error(code: int, message: str, request_id: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response."""
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": request_id}


def result(value: Any, request_id: Any) -> dict[str, Any]:
    """A JSON-RPC success response."""
    return {"jsonrpc": "2.0", "result": value, "id": request_id}


# -- the specification's examples (section 7), mapped onto real methods ----------------------


async def test_call_with_positional_params(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://a.example:8080"], "id": 1})
    assert answer.status == 200
    assert answer.json == result(True, 1)
    assert await rpc.call("config.getServer", []) == "http://a.example:8080"


async def test_call_with_named_params(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "apps.uninstall", "params": {"app_id": "org.nope"}, "id": 3})
    assert answer.json == result(False, 3)
    answer = await rpc({"jsonrpc": "2.0", "method": "config.setServer", "params": {"address": "http://b.example"}, "id": 4})
    assert answer.json == result(True, 4)
    assert await rpc.call("config.getServer") == "http://b.example"


async def test_notification_runs_and_gets_no_body(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://c.example"]})
    assert answer.status == 204
    assert answer.raw == b""
    assert await rpc.call("config.getServer") == "http://c.example"  # it did run


async def test_notification_of_an_unknown_method_gets_no_body(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "foobar"})
    assert (answer.status, answer.raw) == (204, b"")


async def test_non_existent_method(rpc: RpcPoster) -> None:
    before = await rpc.state()
    answer = await rpc({"jsonrpc": "2.0", "method": "foobar", "id": "1"})
    assert answer.status == 200
    assert answer.json == error(-32601, "Method not found: foobar", "1")
    assert await rpc.state() == before


async def test_invalid_json(rpc: RpcPoster) -> None:
    answer = await rpc('{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]')
    assert answer.status == 200
    assert answer.json["error"]["code"] == -32700
    assert answer.json["error"]["message"].startswith("Parse error")
    assert answer.json["id"] is None


async def test_invalid_request_object(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": 1, "params": "bar"})
    assert answer.json == error(-32600, 'Invalid Request: "method" must be a string')


async def test_batch_with_invalid_json_is_one_parse_error(rpc: RpcPoster) -> None:
    before = await rpc.state()
    answer = await rpc(
        '[{"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://x.example"], "id": "1"},'
        '{"jsonrpc": "2.0", "method"]'
    )
    assert isinstance(answer.json, dict)
    assert answer.json["error"]["code"] == -32700
    assert answer.json["id"] is None
    assert await rpc.state() == before


async def test_empty_batch_is_one_invalid_request_object(rpc: RpcPoster) -> None:
    answer = await rpc("[]")
    assert answer.json == error(-32600, "Invalid Request: empty batch")


@pytest.mark.parametrize("count", [1, 3])
async def test_batch_of_non_requests_is_an_array_of_invalid_requests(rpc: RpcPoster, count: int) -> None:
    answer = await rpc(json.dumps(list(range(1, count + 1))))
    assert answer.json == [error(-32600, "Invalid Request: a request must be an object")] * count


async def test_mixed_batch_answers_every_call_and_no_notification(rpc: RpcPoster) -> None:
    answer = await rpc([
        {"jsonrpc": "2.0", "method": "status.get", "id": "1"},
        {"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://hello.example"]},
        {"jsonrpc": "2.0", "method": "apps.uninstall", "params": ["org.nope"], "id": "2"},
        {"foo": "boo"},
        {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
        {"jsonrpc": "2.0", "method": "config.getServer", "id": "9"},
    ])
    assert answer.status == 200
    by_id = {item["id"]: item for item in answer.json}
    assert len(answer.json) == 5
    assert by_id["1"]["result"]["status"] in ("ok", "degraded", "error")
    assert by_id["2"] == result(False, "2")
    assert by_id[None] == error(-32600, 'Invalid Request: missing "jsonrpc": "2.0"')
    assert by_id["5"] == error(-32601, "Method not found: foo.get", "5")
    # Members run concurrently, so the getServer may see the address before or after the notification.
    assert by_id["9"]["result"] in (ADDRESS, "http://hello.example")
    assert await rpc.call("config.getServer") == "http://hello.example"


async def test_batch_of_notifications_gets_no_body(rpc: RpcPoster) -> None:
    answer = await rpc([
        {"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://n1.example"]},
        {"jsonrpc": "2.0", "method": "status.get"},
    ])
    assert (answer.status, answer.raw) == (204, b"")
    assert await rpc.call("config.getServer") == "http://n1.example"


async def test_batch_answers_keep_the_members_order(rpc: RpcPoster) -> None:
    members = [{"jsonrpc": "2.0", "method": "apps.uninstall", "params": [f"org.{n}"], "id": n} for n in range(40)]
    answer = await rpc(members)
    assert [item["id"] for item in answer.json] == list(range(40))


# -- params binding over the wire -------------------------------------------------------------

BAD_PARAMS = [
    pytest.param("apps.uninstall", {"id": "x"}, "Invalid params: unexpected param 'id'", id="wrong-name"),
    pytest.param("apps.uninstall", {"app_id": "x", "force": True}, "Invalid params: unexpected param 'force'",
                 id="extra-named"),
    pytest.param("apps.uninstall", {}, "Invalid params: missing required param 'app_id'", id="missing-named"),
    pytest.param("apps.uninstall", [], "Invalid params: missing required param 'app_id'", id="too-few-positional"),
    pytest.param("apps.uninstall", ["a", "b"], "Invalid params: apps.uninstall takes at most 1 positional params, got 2",
                 id="too-many-positional"),
    pytest.param("apps.list", ["x"], "Invalid params: apps.list takes at most 0 positional params, got 1",
                 id="params-for-a-method-without"),
    pytest.param("apps.uninstall", [1], "Invalid params: 'app_id' must be a string", id="int-for-str"),
    pytest.param("apps.uninstall", [True], "Invalid params: 'app_id' must be a string", id="bool-for-str"),
    pytest.param("apps.uninstall", [None], "Invalid params: 'app_id' must be a string", id="null-for-str"),
    pytest.param("config.setServer", {"address": ["http://x"]}, "Invalid params: 'address' must be a string",
                 id="array-for-str"),
    pytest.param("config.setServer", {"address": {"url": "http://x"}}, "Invalid params: 'address' must be a string",
                 id="object-for-str"),
    pytest.param("pairing.start", {"ttl": True}, "Invalid params: 'ttl' must be an integer", id="true-for-int"),
    pytest.param("pairing.start", {"ttl": "300"}, "Invalid params: 'ttl' must be an integer", id="string-for-int"),
    pytest.param("pairing.start", {"ttl": 300.5}, "Invalid params: 'ttl' must be an integer", id="float-for-int"),
    pytest.param("pairing.start", [None, 300, "member", "x"],
                 "Invalid params: pairing.start takes at most 3 positional params, got 4",
                 id="too-many-optional-positional"),
    pytest.param("devices.revoke", {"device_id": 7}, "Invalid params: 'device_id' must be a string", id="int-for-id"),
]


@pytest.mark.parametrize(("method", "params", "message"), BAD_PARAMS)
async def test_bad_params_are_invalid_params_naming_the_param(
    rpc: RpcPoster, method: str, params: Any, message: str,
) -> None:
    before = await rpc.state()
    answer = await rpc({"jsonrpc": "2.0", "method": method, "params": params, "id": 7})
    assert answer.status == 200
    assert answer.json == error(-32602, message, 7)
    assert await rpc.state() == before


async def test_a_param_out_of_its_range_is_invalid_params_naming_it(rpc: RpcPoster) -> None:
    before = await rpc.state()
    answer = await rpc({"jsonrpc": "2.0", "method": "pairing.start", "params": {"ttl": 5}, "id": 1})
    assert answer.json["error"]["code"] == -32602
    assert "ttl" in answer.json["error"]["message"]
    assert await rpc.state() == before


async def test_websocket_only_methods_are_not_found_over_http(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "events.subscribe", "params": [["apps.installed"]], "id": 1})
    assert answer.json == error(-32601, "Method not found: events.subscribe (it is served on the WebSocket /ws only)", 1)


async def test_a_batch_over_every_kind_of_method(rpc: RpcPoster) -> None:
    answer = await rpc([
        {"jsonrpc": "2.0", "method": "identity.status", "id": "identity"},
        {"jsonrpc": "2.0", "method": "devices.list", "id": "devices"},
        {"jsonrpc": "2.0", "method": "apps.list", "id": "apps"},
        {"jsonrpc": "2.0", "method": "rpc.discover", "id": "discover"},
    ])
    by_id = {item["id"]: item["result"] for item in answer.json}
    assert by_id["identity"]["initialized"] is True
    assert by_id["identity"]["fingerprint"].startswith("sha256:")
    assert by_id["devices"] == [] and by_id["apps"] == []
    assert by_id["discover"]["openrpc"] == "1.3.2"


# -- ids ------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["abc", "", 0, -5, 2**53, 1.5, -0.25, 1e-3, None, "ü✓"])
async def test_ids_come_back_unchanged(rpc: RpcPoster, request_id: Any) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "config.getServer", "id": request_id})
    assert answer.json == result(ADDRESS, request_id)
    assert type(answer.json["id"]) is type(request_id)


async def test_a_very_large_integer_id_comes_back_unchanged(rpc: RpcPoster) -> None:
    answer = await rpc('{"jsonrpc": "2.0", "method": "config.getServer", "id": 123456789012345678901234567890}')
    assert answer.raw.endswith(b'"id":123456789012345678901234567890}') or answer.json["id"] == 123456789012345678901234567890


@pytest.mark.parametrize("request_id", [{"a": 1}, [1], True, False], ids=["object", "array", "true", "false"])
async def test_ids_that_are_not_string_number_or_null_are_invalid(rpc: RpcPoster, request_id: Any) -> None:
    before = await rpc.state()
    answer = await rpc({"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://id.example"], "id": request_id})
    assert answer.json == error(-32600, 'Invalid Request: "id" must be a string, a number or null')
    assert await rpc.state() == before


# -- malformed requests -----------------------------------------------------------------------

MALFORMED = [
    pytest.param({"method": "config.setServer", "params": ["http://m.example"], "id": 1},
                 'Invalid Request: missing "jsonrpc": "2.0"', 1, id="missing-jsonrpc"),
    pytest.param({"jsonrpc": "1.0", "method": "config.setServer", "params": ["http://m.example"], "id": 1},
                 'Invalid Request: missing "jsonrpc": "2.0"', 1, id="jsonrpc-1.0"),
    pytest.param({"jsonrpc": 2.0, "method": "config.setServer", "params": ["http://m.example"], "id": 1},
                 'Invalid Request: missing "jsonrpc": "2.0"', 1, id="jsonrpc-number"),
    pytest.param({"jsonrpc": "2.0", "method": "config.setServer", "params": "http://m.example", "id": 1},
                 'Invalid Request: "params" must be an array or an object', 1, id="params-string"),
    pytest.param({"jsonrpc": "2.0", "method": "config.setServer", "params": 5, "id": 1},
                 'Invalid Request: "params" must be an array or an object', 1, id="params-number"),
    pytest.param({"jsonrpc": "2.0", "method": "config.setServer", "params": None, "id": 1},
                 'Invalid Request: "params" must be an array or an object', 1, id="params-null"),
    pytest.param({"jsonrpc": "2.0", "params": ["http://m.example"], "id": 1},
                 'Invalid Request: "method" must be a string', 1, id="missing-method"),
    pytest.param("a string", "Invalid Request: a request must be an object", None, id="string"),
    pytest.param(None, "Invalid Request: a request must be an object", None, id="null"),
    pytest.param(42, "Invalid Request: a request must be an object", None, id="number"),
]


@pytest.mark.parametrize(("body", "message", "request_id"), MALFORMED)
async def test_malformed_requests_are_invalid_requests(rpc: RpcPoster, body: Any, message: str, request_id: Any) -> None:
    before = await rpc.state()
    answer = await rpc(json.dumps(body))
    assert answer.status == 200
    assert answer.json == error(-32600, message, request_id)
    assert await rpc.state() == before


async def test_batch_over_the_limit_is_one_invalid_request_and_nothing_runs(rpc: RpcPoster) -> None:
    before = await rpc.state()
    members = [{"jsonrpc": "2.0", "method": "config.setServer", "params": [f"http://b{n}.example"]} for n in range(101)]
    answer = await rpc(members)
    assert answer.status == 200
    assert answer.json == error(-32600, "Invalid Request: batch of 101 exceeds the limit of 100")
    assert await rpc.state() == before


async def test_batch_at_the_limit_runs(rpc: RpcPoster) -> None:
    members = [{"jsonrpc": "2.0", "method": "config.getServer", "id": n} for n in range(100)]
    answer = await rpc(members)
    assert len(answer.json) == 100


# -- transport-level bad input ----------------------------------------------------------------


async def test_body_over_the_limit_is_413_and_nothing_runs(rpc: RpcPoster) -> None:
    before = await rpc.state()
    padding = "x" * (2 * 1024 * 1024)
    body = json.dumps({"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://big.example"], "id": 1,
                       "pad": padding})
    answer = await rpc(body)
    assert answer.status == 413
    assert answer.headers["Content-Type"].startswith("application/json")
    assert await rpc.state() == before


@pytest.mark.parametrize("body", [
    pytest.param("[" * 100_000 + "]" * 100_000, id="deep-array"),
    pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, id="deep-object"),
    pytest.param('{"jsonrpc":"2.0","method":"config.setServer","id":1,"params":['
                 + "[" * 100_000 + "]" * 100_000 + "]}", id="deep-params"),
])
async def test_deep_nesting_is_a_parse_error_and_the_server_lives(rpc: RpcPoster, body: str) -> None:
    before = await rpc.state()
    answer = await rpc(body)
    assert answer.status == 200
    assert answer.json["error"]["code"] == -32700
    assert answer.json["id"] is None
    assert await rpc.state() == before  # and it still answers


@pytest.mark.parametrize("body", [
    pytest.param(b"", id="empty"),
    pytest.param(b"   \n", id="blank"),
    pytest.param(b'{"jsonrpc": "2.0", "method": "config.getServer", "id": "\xff\xfe"}', id="not-utf-8"),
    pytest.param(b'\xc3\x28', id="bad-utf-8-sequence"),
    pytest.param(b'{"jsonrpc": "2.0", "method": "config.getServer", "id": NaN}', id="nan"),
    pytest.param(b'{"jsonrpc": "2.0", "method": "config.getServer", "id": 1} trailing', id="trailing-garbage"),
])
async def test_bodies_that_are_not_json_are_parse_errors(rpc: RpcPoster, body: bytes) -> None:
    before = await rpc.state()
    answer = await rpc(body)
    assert answer.status == 200
    assert answer.json["error"]["code"] == -32700
    assert answer.json["error"]["message"].startswith("Parse error")
    assert answer.json["id"] is None
    assert await rpc.state() == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream"])
async def test_body_is_json_whatever_the_content_type(rpc: RpcPoster, content_type: str) -> None:
    answer = await rpc('{"jsonrpc": "2.0", "method": "config.getServer", "id": 1}', headers={"Content-Type": content_type})
    assert answer.json == result(ADDRESS, 1)


# -- answers ----------------------------------------------------------------------------------


async def test_answers_are_json_with_a_json_content_type(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "config.getServer", "id": 1})
    assert answer.headers["Content-Type"].startswith("application/json")
    assert "Content-Encoding" not in answer.headers  # small answers are never compressed


@pytest.mark.parametrize(("accept", "allowed"), [
    ("gzip", {"gzip"}),
    ("deflate", {"deflate"}),
    ("gzip, deflate", {"gzip", "deflate"}),
    ("identity", {None}),
    ("", {None}),
])
async def test_large_answers_are_compressed_when_the_client_accepts_it(
    osnova: RunningServer, accept: str, allowed: set[str | None],
) -> None:
    request = codec.dumps({"jsonrpc": "2.0", "method": "rpc.discover", "id": 1})
    headers = {"Accept-Encoding": accept}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.post(f"{osnova.url}/rpc", data=request, headers=headers) as response,
    ):
        raw = await response.read()
        assert response.status == 200
        encoding = response.headers.get("Content-Encoding")
    assert encoding in allowed
    if encoding is None:
        document = json.loads(raw)
    else:
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        document = json.loads(zlib.decompress(raw, wbits))
        assert len(raw) < len(codec.dumps(document)) / 2
    assert len(codec.dumps(document)) > COMPRESS_MIN_BYTES
    assert document["result"]["openrpc"] == "1.3.2"


# -- anonymous callers --------------------------------------------------------------------------


async def test_anonymous_public_method_runs(rpc: RpcPoster) -> None:
    answer = await rpc({"jsonrpc": "2.0", "method": "rpc.discover", "id": 1}, token=False)
    assert answer.json["result"]["info"]["title"] == "osnova-server"


@pytest.mark.parametrize("body", [
    {"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://anon.example"], "id": 1},
    [{"jsonrpc": "2.0", "method": "rpc.discover", "id": 1},
     {"jsonrpc": "2.0", "method": "config.setServer", "params": ["http://anon.example"]}],
    {"jsonrpc": "2.0", "method": "no.such.method", "id": 1},
], ids=["private", "batch-with-one-private", "unknown"])
async def test_anonymous_non_public_call_is_401_and_nothing_runs(rpc: RpcPoster, body: Any) -> None:
    before = await rpc.state()
    answer = await rpc(body, token=False)
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert await rpc.state() == before


@pytest.mark.parametrize(("body", "expected"), [
    ("[1]", [error(-32600, "Invalid Request: a request must be an object")]),
    ("{", None),
])
async def test_anonymous_malformed_input_gets_the_protocol_error(rpc: RpcPoster, body: str, expected: Any) -> None:
    answer = await rpc(body, token=False)
    assert answer.status == 200
    if expected is None:
        assert answer.json["error"]["code"] == -32700
    else:
        assert answer.json == expected


# -- the engine without HTTP ---------------------------------------------------------------------


def test_envelope_names_only_methods_that_would_run() -> None:
    envelope = protocol.decode(b'[{"jsonrpc":"2.0","method":"a"},{"method":1},2,{"jsonrpc":"2.0","method":"b","id":1}]', 100)
    assert envelope.method_names() == ["a", "b"]
    assert envelope.cost == 4
    assert protocol.decode(b"[]", 100).cost == 1


def test_encode_turns_only_the_unserialisable_result_into_an_internal_error() -> None:
    assert json.loads(protocol.encode_answer(result(object(), 1))) == error(-32603, "Internal error", 1)
    assert json.loads(protocol.encode_answer(result("fine", 2))) == result("fine", 2)
    assert json.loads(protocol.encode_answer(result({1, 2}, "x"))) == error(-32603, "Internal error", "x")


# -- input: one parser's answers, surrogates, whole floats, parse-error sentences ----------------

LONG_DIGITS = "1234567890123456789"  # 19 digits in a row: the run that once sent a body to another parser
SURROGATE_MESSAGE = "Invalid params: 'address' holds a lone UTF-16 surrogate; send valid Unicode text"


@pytest.mark.parametrize("padding", ["", f', "x": {LONG_DIGITS}', ', "x": "' + "[" * 1200 + '"'], ids=[
    "alone", "with-19-digits", "with-many-brackets",
])
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\ud800b", "\\udc00\\ud800"])
async def test_a_lone_surrogate_in_a_string_param_is_invalid_params_whatever_else_the_body_holds(
    rpc: RpcPoster, escape: str, padding: str,
) -> None:
    before = await rpc.state()
    body = '{"jsonrpc": "2.0", "method": "config.setServer", "params": {"address": "http://' + escape + '"}, "id": 5'
    # The padding sits in the request object itself, so it is an unexpected member, not a param.
    answer = await rpc(body + padding.replace('"x"', '"extra"') + "}")
    assert answer.status == 200
    assert answer.json == error(-32602, SURROGATE_MESSAGE, 5)
    assert await rpc.state() == before


@pytest.mark.parametrize("digits", ["", f"{LONG_DIGITS}"])
async def test_a_lone_surrogate_inside_a_batch_is_refused_member_by_member(rpc: RpcPoster, digits: str) -> None:
    before = await rpc.state()
    bad = '{"jsonrpc": "2.0", "method": "pairing.start", "params": {"name": "tv\\ud800"}, "id": 1}'
    good = '{"jsonrpc": "2.0", "method": "config.getServer", "id": ' + (digits or "2") + "}"
    answer = await rpc(f"[{bad}, {good}]")
    assert answer.json == [
        error(-32602, "Invalid params: 'name' holds a lone UTF-16 surrogate; send valid Unicode text", 1),
        result(ADDRESS, int(digits or "2")),
    ]
    assert await rpc.state() == before
    assert rpc.server.runtime.pairing.outstanding() == 0


@pytest.mark.parametrize("ttl", ["60.0", "6e1", "6.0E1", "600e-1"])
async def test_whole_floats_are_accepted_where_an_integer_is_expected(rpc: RpcPoster, ttl: str) -> None:
    answer = await rpc('{"jsonrpc": "2.0", "method": "pairing.start", "params": {"ttl": ' + ttl + '}, "id": 1}')
    assert "result" in answer.json, answer.json
    expires = answer.json["result"]["pairing"]["expiresAt"]
    assert expires.endswith("Z") and rpc.server.runtime.pairing.outstanding() == 1


@pytest.mark.parametrize("ttl", ["60.5", "6.01e1", "true", '"60"'])
async def test_other_numbers_are_still_not_integers(rpc: RpcPoster, ttl: str) -> None:
    answer = await rpc('{"jsonrpc": "2.0", "method": "pairing.start", "params": {"ttl": ' + ttl + '}, "id": 1}')
    assert answer.json == error(-32602, "Invalid params: 'ttl' must be an integer", 1)
    assert rpc.server.runtime.pairing.outstanding() == 0


D = LONG_DIGITS
PARSE_ERRORS = [
    # (the body, the same mistake in a body that also holds 19 digits in a row, why)
    pytest.param('{"a" 1}', '{"a" 1, "b": ' + D + "}", "expecting ':' delimiter at line 1, column 6", id="missing-colon"),
    pytest.param('{"a": 1', '{"a": ' + D, "expecting ',' delimiter at line 1, column " , id="unclosed"),
    pytest.param("", " " * 3, "expecting value at line 1, column ", id="empty"),
    pytest.param("[1,]", "[1,]" + " " * 3, "expecting value at line 1, column 4", id="trailing-comma"),
    pytest.param('{"a": 1}\n{"b": 2}', '{"a": 1}\n{"b": ' + D + "}", "extra data at line 2, column 1", id="two-documents"),
    pytest.param("[NaN]", "[NaN, " + D + "]", "NaN is not valid JSON", id="nan"),
    pytest.param("[1e400]", "[1e400, " + D + "]", "the number 1e400 is too large to be finite", id="infinite"),
    pytest.param(b"\xff", b"\xff" + D.encode(), "the body is not valid UTF-8 (byte 0)", id="not-utf-8"),
    pytest.param("[" * 100_000, "[" * 100_000 + D, "the JSON nests too deeply", id="deep"),
]


@pytest.mark.parametrize(("plain", "with_digits", "reason"), PARSE_ERRORS)
async def test_parse_errors_are_whole_sentences_whatever_else_the_body_holds(
    rpc: RpcPoster, plain: str | bytes, with_digits: str | bytes, reason: str,
) -> None:
    before = await rpc.state()
    messages = []
    for body in (plain, with_digits):
        answer = await rpc(body)
        assert answer.json["error"]["code"] == -32700 and answer.json["id"] is None
        messages.append(answer.json["error"]["message"])
    tail = "; send one JSON-RPC request, or an array of them."
    for message in messages:
        assert message.startswith(f"Parse error: {reason}") and message.endswith(tail), message
    if not reason.endswith("column "):
        assert messages == [f"Parse error: {reason}{tail}"] * 2
    assert await rpc.state() == before


# -- the answer budget: [limits] max_response_bytes ---------------------------------------------------


def big_manifest(index: int, size: int) -> dict[str, Any]:
    """A valid manifest of about `size` bytes (the bulk in a component's config)."""
    return {
        "id": f"ant://big-{index}", "name": f"Big {index}", "version": "1.0.0", "iconUri": "https://example.com/i.png",
        "description": "large", "components": [
            {"id": f"ant://big-{index}-ui", "name": "UI", "kind": "frontend", "version": "1.0.0",
             "config": {"blob": "x" * size}},
        ],
    }


async def install_big_apps(server_url: str, token: str, directory: Path, count: int, size: int) -> None:
    """Install `count` apps of about `size` bytes each from file:// manifests, as admin."""
    async with OsnovaClient(server_url, token) as admin:
        for index in range(count):
            path = directory / f"big-{index}.json"
            path.write_text(json.dumps(big_manifest(index, size)))
            await admin.call("apps.install", {"manifest_uri": path.as_uri()})


def apps_list_batch(count: int) -> bytes:
    """A batch of `count` apps.list calls: about 50 bytes each."""
    members = [{"jsonrpc": "2.0", "method": "apps.list", "id": n} for n in range(count)]
    return json.dumps(members, separators=(",", ":")).encode()


async def test_batch_answers_past_max_response_bytes_are_answer_too_large(state_dir: Path, tmp_path: Path) -> None:
    limit = 300_000
    config = make_config(state_dir, limits={"max_response_bytes": limit})
    async with running_server(config) as server, aiohttp.ClientSession() as http:
        await install_big_apps(server.url, server.admin_token(), tmp_path, 2, 50_000)
        device = await pair_device(server)
        headers = {"Authorization": f"Bearer {device['access_token']}"}
        before = await server.runtime.store.schema_version(), server.runtime.store.apps()
        async with http.post(f"{server.url}/rpc", data=apps_list_batch(100), headers=headers) as answer:
            assert answer.status == 200
            raw = await answer.read()
        answers = json.loads(raw)
        listed = [a for a in answers if "result" in a]
        refused = [a for a in answers if "error" in a]
        assert len(listed) == 2 and all(len(a["result"]) == 2 for a in listed)  # two 100 KB answers fit
        assert [a["id"] for a in answers] == list(range(100))
        assert {a["error"]["code"] for a in refused} == {-32007} and len(refused) == 98
        assert refused[0]["error"]["data"] == {"max_response_bytes": limit}
        assert "max_response_bytes" in refused[0]["error"]["message"]
        assert len(raw) <= limit + 250 * len(refused)
        # One call alone past the limit is refused the same way, on /rpc and on /ws.
        small = make_config(state_dir, limits={"max_response_bytes": 50_000})
        server.runtime.config = small
        async with http.post(f"{server.url}/rpc", json={"jsonrpc": "2.0", "method": "apps.list", "id": "a"},
                             headers=headers) as answer:
            single = await answer.json()
        assert single["id"] == "a" and single["error"]["code"] == -32007
        async with http.ws_connect(f"{server.url}/ws", headers=headers) as ws:
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "apps.list", "id": "w"}))
            while True:
                message = json.loads((await ws.receive(timeout=5)).data)
                if message.get("id") == "w":
                    break
        assert message["error"]["code"] == -32007 and message["error"]["data"] == {"max_response_bytes": 50_000}
        assert (await server.runtime.store.schema_version(), server.runtime.store.apps()) == before


def vm_kib(pid: int, key: str) -> int:
    """A VmRSS-style line of /proc/PID/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


# What the server may grow by while it holds three unread batch answers: three budgets of 8 MiB
# and their compressed or queued copies, with room for the allocator. Without the budget it
# grew by about 2 GiB (94 MiB to 2 GiB).
RSS_GROWTH_BOUND_MIB = 160


def test_three_unread_batches_of_apps_list_keep_server_memory_bounded(tmp_path: Path, server_process: Any) -> None:
    port = free_port()
    state = tmp_path / "state"
    config = make_config(state, server={"bind_address": f"127.0.0.1:{port}", "state_dir": str(state)})
    path = write_config(tmp_path / "server.toml", config)
    process = server_process(path)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(url)
    admin_token = cli("--config", str(path), "token").stdout.strip()

    async def prepare() -> str:
        await install_big_apps(url, admin_token, tmp_path, 4, 1_000_000)
        async with OsnovaClient(url, admin_token) as admin:
            payload = await admin.call("pairing.start")
        async with OsnovaClient(url) as anonymous:
            grant = await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"]})
        async with OsnovaClient(url, grant["access_token"]) as device:
            assert len(await device.call("apps.list")) == 4  # warm: the listing is built once
        return str(grant["access_token"])

    token = asyncio.run(prepare())
    pid = process.process.pid
    baseline = vm_kib(pid, "VmRSS")
    # Start the peak (VmHWM) from here, not from the installs (Linux: "5" resets it).
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    body = apps_list_batch(100)
    assert len(body) < 5200
    request = (
        f"POST /rpc HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for sock in sockets:
            sock.sendall(request)
        # Each answer has been built once its first bytes arrive; they are peeked at, not read.
        deadline = time.monotonic() + 60
        pending = list(sockets)
        while pending and time.monotonic() < deadline:
            readable, _, _ = select.select(pending, [], [], 1)
            pending = [sock for sock in pending if sock not in readable]
        assert not pending, "the server did not answer the batches"
        time.sleep(0.5)
        peak = vm_kib(pid, "VmHWM")
        now = vm_kib(pid, "VmRSS")
        assert (peak - baseline) / 1024 < RSS_GROWTH_BOUND_MIB, (baseline, peak, now)
        # Now read one answer: two apps.list answers within the 8 MiB budget, 98 refusals.
        sockets[0].setblocking(True)
        received = b""
        while b"\r\n\r\n" not in received:
            received += sockets[0].recv(65536)
        head, _, rest = received.partition(b"\r\n\r\n")
        length = int(re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            rest += sockets[0].recv(1 << 20)
        answers = json.loads(rest)
        assert sum("result" in answer for answer in answers) == 2
        assert sum(answer.get("error", {}).get("code") == -32007 for answer in answers) == 98
    finally:
        for sock in sockets:
            sock.close()
    assert process.stop()[0] == 0
