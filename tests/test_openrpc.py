"""rpc.discover: the OpenRPC document is built from the registry and valid against the meta-schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, TypedDict

import aiohttp
import jsonschema
import pytest
import referencing
import referencing.jsonschema

from osnova_server import __version__
from osnova_server.errors import FetchFailed, NotFound
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import load_registry
from osnova_server.rpc.openrpc import OPENRPC_VERSION, build_document, document, schema_for
from osnova_server.rpc.registry import Registry
from osnova_server.security.roles import Role
from tests.conftest import RunningServer

META_SCHEMA_PATH = Path(__file__).parent / "data" / "openrpc" / "openrpc-1.3.2.meta-schema.json"
META_SCHEMA_SHA256 = "8c99fb16240baf1e11573007726d9a2ebadc204fa6de8f51c36b31c460077e33"


def meta_schema_validator() -> jsonschema.Draft7Validator:
    """A validator for the vendored OpenRPC meta-schema (see tests/data/openrpc/SOURCE.md)."""
    meta_schema = json.loads(META_SCHEMA_PATH.read_bytes())
    draft7 = referencing.Resource.from_contents(
        jsonschema.Draft7Validator.META_SCHEMA,
        default_specification=referencing.jsonschema.DRAFT7,
    )
    schemas = referencing.Registry().with_resources(
        [("https://meta.json-schema.tools", draft7), ("https://meta.json-schema.tools/", draft7)],
    )
    return jsonschema.Draft7Validator(meta_schema, registry=schemas)


def assert_valid(doc: dict[str, Any]) -> None:
    """Fail with every meta-schema violation listed."""
    problems = [f"{list(error.absolute_path)}: {error.message}" for error in meta_schema_validator().iter_errors(doc)]
    assert problems == []


def test_vendored_meta_schema_is_the_recorded_text() -> None:
    raw = META_SCHEMA_PATH.read_bytes()
    assert raw.endswith(b"}\n")
    assert hashlib.sha256(raw[:-1]).hexdigest() == META_SCHEMA_SHA256
    assert json.loads(raw)["properties"]["openrpc"]["enum"][0] == "1.3.2"


def test_the_product_document_is_valid_openrpc() -> None:
    doc = document(load_registry())
    assert_valid(doc)
    assert doc["openrpc"] == OPENRPC_VERSION == "1.3.2"
    assert doc["info"]["title"] == "osnova-server"
    assert doc["info"]["version"] == __version__


@pytest.mark.parametrize("breakage", [
    pytest.param(lambda doc: doc.update(openrpc="9.9.9"), id="unknown-version"),
    pytest.param(lambda doc: doc["info"].pop("title"), id="no-title"),
    pytest.param(lambda doc: doc["methods"][0]["params"].append({"name": "x"}), id="param-without-schema"),
    pytest.param(lambda doc: doc["methods"][0]["params"].append({"name": "x", "schema": {"type": "strng"}}),
                 id="schema-not-draft-07"),
    pytest.param(lambda doc: doc["methods"][0].update(paramStructure="any"), id="bad-param-structure"),
    pytest.param(lambda doc: doc["methods"][0]["errors"].append({"code": "1", "message": "x"}), id="error-code-string"),
])
def test_the_validator_rejects_broken_documents(breakage: Any) -> None:
    """A control: the validation above would catch each of these mistakes."""
    doc = json.loads(json.dumps(build_document(load_registry())))
    breakage(doc)
    assert list(meta_schema_validator().iter_errors(doc))


class AppSummary(TypedDict):
    """A result shape with named keys."""

    id: str
    version: str | None


SCHEMAS = [
    (str, {"type": "string"}),
    (int, {"type": "integer"}),
    (float, {"type": "number"}),
    (bool, {"type": "boolean"}),
    (None, {"type": "null"}),
    (Any, {}),
    (list[str], {"type": "array", "items": {"type": "string"}}),
    (list[dict[str, Any]], {"type": "array", "items": {"type": "object"}}),
    (list, {"type": "array"}),
    (dict, {"type": "object"}),
    (dict[str, Any], {"type": "object"}),
    (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
    (str | None, {"type": ["string", "null"]}),
    (int | str, {"type": ["integer", "string"]}),
    (list[str] | None, {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}]}),
    (Literal["ok", "degraded"], {"enum": ["ok", "degraded"]}),
    (tuple[str, int], {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]}),
    (AppSummary, {"type": "object", "properties": {"id": {"type": "string"}, "version": {"type": ["string", "null"]}},
                  "required": ["id", "version"]}),
]


@pytest.mark.parametrize(("hint", "schema"), SCHEMAS, ids=[str(hint) for hint, _ in SCHEMAS])
def test_json_schema_from_type_hints(hint: Any, schema: dict[str, Any]) -> None:
    assert schema_for(hint) == schema
    jsonschema.Draft7Validator.check_schema(schema)


def test_a_method_is_described_from_its_declaration() -> None:
    local = Registry()

    @local.method("things.find", role=Role.MEMBER, errors=(NotFound, FetchFailed))
    async def things_find(ctx: Context, name: str, limit: int = 10, tags: list[str] | None = None) -> list[AppSummary]:
        """Find things by name.

        Matches are case-insensitive.
        Tags narrow the search.
        """
        return []

    @local.method("a.first", role=Role.PUBLIC)
    async def a_first(ctx: Context) -> bool:
        """Come first."""
        return True

    @local.method("events.watch", role=Role.ADMIN, websocket_only=True)
    async def events_watch(ctx: Context, topics: list[str]) -> bool:
        """Watch topics."""
        return True

    doc = build_document(local)
    assert_valid(doc)
    assert [method["name"] for method in doc["methods"]] == ["a.first", "events.watch", "things.find"]
    found = doc["methods"][2]
    assert found["summary"] == "Find things by name."
    assert found["description"] == "Matches are case-insensitive.\nTags narrow the search."
    assert found["paramStructure"] == "either"
    assert found["params"] == [
        {"name": "name", "required": True, "schema": {"type": "string"}},
        {"name": "limit", "required": False, "schema": {"type": "integer", "default": 10}},
        {"name": "tags", "required": False,
         "schema": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None}},
    ]
    assert found["result"] == {"name": "result", "schema": {"type": "array", "items": schema_for(AppSummary)}}
    assert [error["code"] for error in found["errors"]] == [-32001, -32006, -32602, -32002, -32003, -32029, -32603]
    assert found["errors"][0] == {"code": -32001, "message": "Not found"}
    assert found["x-scope"] == "device"
    first, watch = doc["methods"][0], doc["methods"][1]
    assert "description" not in first
    assert [error["code"] for error in first["errors"]] == [-32029, -32603]  # public, no params
    assert (first["x-scope"], watch["x-scope"]) == ("public", "admin")
    assert (first["x-roles"], watch["x-roles"], found["x-roles"]) == (
        ["public", "member", "owner", "admin"], ["admin"], ["member", "owner", "admin"],
    )
    assert (first["x-transports"], watch["x-transports"]) == (["http", "ws"], ["ws"])


def test_the_document_is_built_once_and_rebuilt_when_a_method_is_added() -> None:
    local = Registry()

    @local.method("one", role=Role.MEMBER)
    async def one(ctx: Context) -> int:
        """One."""
        return 1

    first = document(local)
    assert document(local) is first

    @local.method("two", role=Role.MEMBER)
    async def two(ctx: Context) -> int:
        """Two."""
        return 2

    assert [method["name"] for method in document(local)["methods"]] == ["one", "two"]


async def test_rpc_discover_over_http_is_public_valid_and_lists_every_method(osnova: RunningServer) -> None:
    async with osnova.client() as anonymous:
        doc = await anonymous.call("rpc.discover")
    assert_valid(doc)
    names = [method["name"] for method in doc["methods"]]
    assert names == sorted(names) == [method.name for method in load_registry()]
    assert {"rpc.discover", "status.get", "apps.list", "config.getServer"} <= set(names)
    discover = next(method for method in doc["methods"] if method["name"] == "rpc.discover")
    assert discover["x-scope"] == "public"
    assert discover["summary"] == "Describe every method of this server as an OpenRPC 1.3.2 document."


async def test_the_document_is_served_at_openrpc_json_to_anyone(osnova: RunningServer, http: aiohttp.ClientSession) -> None:
    async with osnova.client() as anonymous:
        discovered = await anonymous.call("rpc.discover")
    async with http.get(f"{osnova.url}/openrpc.json") as answer:
        assert answer.status == 200
        assert answer.content_type == "application/json"
        served = await answer.json()
    assert served == discovered
    assert_valid(served)
    roles = {method["name"]: method["x-roles"] for method in served["methods"]}
    assert roles["apps.install"] == ["owner", "admin"]
    assert roles["apps.list"] == ["member", "owner", "admin"]
    assert roles["rpc.discover"] == ["public", "member", "owner", "admin"]
    async with http.post(f"{osnova.url}/openrpc.json", data=b"{}") as refused:
        assert refused.status == 405
