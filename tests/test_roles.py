"""Roles (CONTRACT 4): who may call what, re-checked at every call, and which events each role is pushed.

Every refusal of the role table is sent to a real server over loopback; each one must answer
-32003 and leave the apps, devices, settings, bans and outstanding codes exactly as they were.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection as WebsocketsClient
from websockets.asyncio.client import connect

from osnova_server.client import OsnovaClient, RpcCallError, TransportError
from osnova_server.errors import FORBIDDEN, NOT_FOUND, UNAUTHORIZED
from osnova_server.events import (
    APPS_INSTALLED,
    APPS_UNINSTALLED,
    CONFIG_CHANGED,
    DEVICES_PAIRED,
    DEVICES_REMOVED,
    DEVICES_REVOKED,
    DEVICES_ROLE_CHANGED,
    TOPICS,
    Event,
)
from osnova_server.rpc.methods import load_registry
from osnova_server.security.roles import Role, receives
from osnova_server.services.devices import CALLER_REVOKED
from tests.conftest import RunningServer
from tests.test_apps import manifest
from tests.test_pairing import pair_device

# Run on SQLite and on PostgreSQL (tests/conftest.py).
BOTH_ENGINES = True

# -- the role of each method, as declared --------------------------------------------------------

DECLARED = {
    "apps.list": Role.MEMBER, "config.getServer": Role.MEMBER, "identity.status": Role.MEMBER,
    "status.get": Role.MEMBER, "events.subscribe": Role.MEMBER, "events.unsubscribe": Role.MEMBER,
    "devices.list": Role.MEMBER, "devices.revoke": Role.MEMBER,
    "auth.refresh": Role.PUBLIC, "pairing.complete": Role.PUBLIC, "rpc.discover": Role.PUBLIC,
    "apps.install": Role.OWNER, "apps.uninstall": Role.OWNER, "config.setServer": Role.OWNER,
    "pairing.start": Role.OWNER, "devices.setRole": Role.OWNER, "devices.remove": Role.OWNER,
    "bans.list": Role.OWNER, "bans.lift": Role.OWNER, "admin.loginLink": Role.OWNER,
}


@pytest.mark.parametrize(("name", "role"), sorted(DECLARED.items()))
def test_each_method_declares_the_role_of_the_table(name: str, role: Role) -> None:
    method = load_registry().get(name)
    assert method is not None and method.role is role


def test_only_the_three_public_methods_need_no_token() -> None:
    # CONTRACT 4: "Public (no token): pairing.complete, auth.refresh, rpc.discover. All others need a token."
    public = {method.name for method in load_registry() if method.role is Role.PUBLIC}
    assert public == {"pairing.complete", "auth.refresh", "rpc.discover"}


@pytest.mark.parametrize(
    ("declared", "caller", "admitted"),
    [
        (Role.PUBLIC, Role.PUBLIC, True), (Role.MEMBER, Role.PUBLIC, False), (Role.MEMBER, Role.MEMBER, True),
        (Role.OWNER, Role.MEMBER, False), (Role.OWNER, Role.OWNER, True), (Role.OWNER, Role.ADMIN, True),
        (Role.ADMIN, Role.OWNER, False), (Role.ADMIN, Role.ADMIN, True),
    ],
)
def test_a_method_admits_its_role_and_every_higher_one(declared: Role, caller: Role, admitted: bool) -> None:
    assert declared.admits(caller) is admitted


# -- which events a role is pushed ---------------------------------------------------------------

SAMPLE_EVENTS = {
    APPS_INSTALLED: {"id": "ant://a", "name": "A", "version": "1"},
    APPS_UNINSTALLED: {"id": "ant://a"},
    CONFIG_CHANGED: {"key": "server.address", "value": "https://h"},
    DEVICES_PAIRED: {"device_id": "other", "name": "Other", "role": "member"},
    DEVICES_ROLE_CHANGED: {"device_id": "me", "role": "owner"},
    DEVICES_REMOVED: {"device_id": "other"},
}


@pytest.mark.parametrize("topic", sorted(SAMPLE_EVENTS))
@pytest.mark.parametrize("role", [Role.MEMBER, Role.OWNER, Role.ADMIN, None])
def test_who_receives_each_event(topic: str, role: Role | None) -> None:
    event = Event(topic, SAMPLE_EVENTS[topic])
    expected = role in (Role.OWNER, Role.ADMIN) or (role is Role.MEMBER and topic.split(".")[0] in ("apps", "config"))
    assert receives(role, "me", event) is expected


@pytest.mark.parametrize("role", [Role.MEMBER, Role.OWNER, Role.ADMIN, None])
def test_a_revocation_reaches_its_own_device_whatever_its_role(role: Role | None) -> None:
    own, other = Event(DEVICES_REVOKED, {"device_id": "me"}), Event(DEVICES_REVOKED, {"device_id": "other"})
    assert receives(role, "me", own) is True
    assert receives(role, "me", other) is (role in (Role.OWNER, Role.ADMIN))


def test_every_topic_is_listed() -> None:
    assert set(SAMPLE_EVENTS) | {DEVICES_REVOKED} == TOPICS


# -- the refusals of the table, against a real server ----------------------------------------------


async def snapshot(server: RunningServer) -> dict[str, Any]:
    """Everything a refused call could have changed, as an admin sees it."""
    async with server.client(admin=True) as admin:
        return {
            "apps": await admin.call("apps.list"),
            "devices": await admin.call("devices.list"),
            "server": await admin.call("config.getServer"),
            "bans": await admin.call("bans.list"),
            "codes": server.runtime.pairing.outstanding(),
        }


class Household:
    """A server with an app, a banned address, and devices of each role (one of them revoked)."""

    def __init__(self, server: RunningServer, files: Path) -> None:
        self.server = server
        self.files = files
        self.grants: dict[str, dict[str, Any]] = {}

    def token(self, who: str) -> str | None:
        """The access token of `who`: a device's, a fresh admin token, or None (anonymous)."""
        if who == "admin":
            return self.server.admin_token()
        if who == "anonymous":
            return None
        return str(self.grants[who]["access_token"])

    def device_id(self, who: str) -> str:
        """The device id of one of the household's devices."""
        return str(self.grants[who]["device_id"])


@pytest.fixture
async def household(osnova: RunningServer, tmp_path: Path) -> AsyncIterator[Household]:
    """The household every refusal test starts from."""
    house = Household(osnova, tmp_path)
    (tmp_path / "notes.json").write_text(json.dumps(manifest()))
    for who, role in (("member", "member"), ("owner", "owner"), ("other", "member"), ("gone", "member")):
        house.grants[who] = await pair_device(osnova, name=who, role=role)
    async with osnova.client(admin=True) as admin:
        await admin.call("apps.install", {"manifest_uri": (tmp_path / "notes.json").as_uri()})
        await admin.call("devices.revoke", {"device_id": house.device_id("gone")})
        await admin.call("config.setServer", {"address": "https://home.example:8443"})
    osnova.runtime.bans.ban("192.0.2.7", "test")
    yield house


def _params(house: Household, spec: dict[str, Any]) -> dict[str, Any]:
    """Params with `@name` replaced by that device's id and `@file` by the manifest's file:// URI."""
    resolved: dict[str, Any] = {}
    for key, value in spec.items():
        if value == "@file":
            value = (house.files / "notes.json").as_uri()
        elif isinstance(value, str) and value.startswith("@"):
            value = house.device_id(value[1:])
        resolved[key] = value
    return resolved


REFUSALS = [
    # A member may call none of the owner methods...
    pytest.param("member", "apps.install", {"manifest_uri": "https://apps.example/x.json"}, id="member-install"),
    pytest.param("member", "apps.uninstall", {"app_id": "ant://notes"}, id="member-uninstall"),
    pytest.param("member", "config.setServer", {"address": "https://evil.example"}, id="member-setServer"),
    pytest.param("member", "pairing.start", {}, id="member-pairing"),
    pytest.param("member", "devices.setRole", {"device_id": "@member", "role": "owner"}, id="member-setRole-self"),
    pytest.param("member", "devices.setRole", {"device_id": "@other", "role": "owner"}, id="member-setRole"),
    pytest.param("member", "devices.remove", {"device_id": "@gone"}, id="member-remove"),
    pytest.param("member", "bans.list", {}, id="member-bans-list"),
    pytest.param("member", "bans.lift", {"address": "192.0.2.7"}, id="member-bans-lift"),
    pytest.param("member", "admin.loginLink", {}, id="member-admin-login-link"),
    # ...and may revoke only itself.
    pytest.param("member", "devices.revoke", {"device_id": "@other"}, id="member-revoke-other"),
    pytest.param("member", "devices.revoke", {"device_id": "@owner"}, id="member-revoke-owner"),
    # An owner may not read the server's files, issue owner codes, or change its own role.
    pytest.param("owner", "apps.install", {"manifest_uri": "@file"}, id="owner-file-uri"),
    pytest.param("owner", "pairing.start", {"role": "owner"}, id="owner-owner-code"),
    pytest.param("owner", "devices.setRole", {"device_id": "@owner", "role": "member"}, id="owner-setRole-self"),
    # Nobody removes a live device: it must be revoked first.
    pytest.param("owner", "devices.remove", {"device_id": "@other"}, id="owner-remove-live"),
    pytest.param("admin", "devices.remove", {"device_id": "@member"}, id="admin-remove-live"),
]


@pytest.mark.parametrize(("who", "method", "spec"), REFUSALS)
async def test_each_refusal_of_the_table_is_forbidden_and_changes_nothing(
    household: Household, who: str, method: str, spec: dict[str, Any]
) -> None:
    server = household.server
    before = await snapshot(server)
    async with server.client(household.token(who)) as caller:
        with pytest.raises(RpcCallError) as refused:
            await caller.call(method, _params(household, spec))
    assert refused.value.code == FORBIDDEN
    assert refused.value.message.endswith(("token", "setRole", "admin", "then remove it", "instead"))
    assert await snapshot(server) == before


ALLOWED = [
    pytest.param("member", "devices.list", {}, id="member-list-self"),
    pytest.param("member", "apps.list", {}, id="member-apps"),
    pytest.param("member", "config.getServer", {}, id="member-getServer"),
    pytest.param("member", "identity.status", {}, id="member-identity"),
    pytest.param("member", "status.get", {}, id="member-status"),
    pytest.param("owner", "devices.list", {}, id="owner-list-all"),
    pytest.param("owner", "pairing.start", {"role": "member"}, id="owner-member-code"),
    pytest.param("owner", "config.setServer", {"address": "https://home2.example"}, id="owner-setServer"),
    pytest.param("owner", "apps.uninstall", {"app_id": "ant://notes"}, id="owner-uninstall"),
    pytest.param("owner", "devices.setRole", {"device_id": "@other", "role": "owner"}, id="owner-setRole-other"),
    pytest.param("owner", "devices.remove", {"device_id": "@gone"}, id="owner-remove-revoked"),
    pytest.param("owner", "devices.revoke", {"device_id": "@other"}, id="owner-revoke-other"),
    pytest.param("owner", "bans.list", {}, id="owner-bans-list"),
    pytest.param("owner", "bans.lift", {"address": "192.0.2.7"}, id="owner-bans-lift"),
    pytest.param("admin", "apps.install", {"manifest_uri": "@file"}, id="admin-file-uri"),
    pytest.param("admin", "pairing.start", {"role": "owner"}, id="admin-owner-code"),
]


@pytest.mark.parametrize(("who", "method", "spec"), ALLOWED)
async def test_what_the_table_allows_runs(household: Household, who: str, method: str, spec: dict[str, Any]) -> None:
    async with household.server.client(household.token(who)) as caller:
        result = await caller.call(method, _params(household, spec))
    assert result is not None
    if method == "devices.list":
        expected = {household.device_id(who)} if who == "member" else {household.device_id(d) for d in household.grants}
        assert {device["device_id"] for device in result} == expected


async def test_devices_list_names_role_and_who_paired_each(household: Household) -> None:
    server = household.server
    async with server.client(household.token("owner")) as owner:
        payload = await owner.call("pairing.start", {"name": "tablet"})
    async with server.client() as anonymous:
        tablet = await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"]})
    async with server.client(household.token("owner")) as owner:
        listed = {device["name"]: device for device in await owner.call("devices.list")}
    assert (listed["tablet"]["role"], listed["tablet"]["paired_by"]) == ("member", household.device_id("owner"))
    assert (listed["owner"]["role"], listed["owner"]["paired_by"]) == ("owner", "admin")
    assert listed["tablet"]["device_id"] == tablet["device_id"]


async def test_set_role_applies_to_the_next_call_with_the_same_token(household: Household) -> None:
    server = household.server
    async with server.client(household.token("owner")) as owner, server.client(admin=True) as admin:
        await owner.call("bans.list")
        assert await admin.call("devices.setRole", {"device_id": household.device_id("owner"), "role": "member"})
        with pytest.raises(RpcCallError) as refused:
            await owner.call("bans.list")
        assert refused.value.code == FORBIDDEN
        assert [d["device_id"] for d in await owner.call("devices.list")] == [household.device_id("owner")]
        assert await admin.call("devices.setRole", [household.device_id("owner"), "owner"])
        assert await owner.call("bans.list") != []


@pytest.mark.parametrize(
    ("method", "params", "code"),
    [
        ("devices.setRole", {"device_id": "no-such-device", "role": "owner"}, NOT_FOUND),
        ("devices.remove", {"device_id": "no-such-device"}, NOT_FOUND),
        ("devices.setRole", {"device_id": "x", "role": "admin"}, -32602),
        ("pairing.start", {"role": "admin"}, -32602),
    ],
)
async def test_bad_targets_and_roles_are_refused_and_change_nothing(
    household: Household, method: str, params: dict[str, Any], code: int
) -> None:
    before = await snapshot(household.server)
    async with household.server.client(admin=True) as admin:
        with pytest.raises(RpcCallError) as refused:
            await admin.call(method, params)
    assert refused.value.code == code
    assert await snapshot(household.server) == before


async def test_a_removed_device_is_forgotten_and_its_tokens_stay_refused(household: Household) -> None:
    server = household.server
    gone = household.grants["gone"]
    async with server.client(admin=True) as admin:
        assert await admin.call("devices.remove", {"device_id": gone["device_id"]}) is True
        assert gone["device_id"] not in {d["device_id"] for d in await admin.call("devices.list")}
        with pytest.raises(RpcCallError) as again:
            await admin.call("devices.remove", {"device_id": gone["device_id"]})
    assert again.value.code == NOT_FOUND
    # Even once its id is no longer among the revoked ones (after a restart), nothing of it works.
    server.runtime.tokens._revoked.discard(gone["device_id"])
    async with server.client(gone["access_token"]) as device:
        with pytest.raises(TransportError) as refused:
            await device.call("status.get")
    assert refused.value.status == 401
    async with server.client() as anonymous:
        with pytest.raises(RpcCallError) as refresh:
            await anonymous.call("auth.refresh", {"refresh_token": gone["refresh_token"]})
    assert refresh.value.code == UNAUTHORIZED


# -- every call re-checks its caller ----------------------------------------------------------------


async def test_a_revoked_devices_waiting_batch_members_run_none(household: Household) -> None:
    server = household.server
    owner = household.grants["owner"]
    batch = [{"jsonrpc": "2.0", "method": "devices.revoke", "params": [owner["device_id"]], "id": 0}]
    batch += [{"jsonrpc": "2.0", "method": "pairing.start", "id": n} for n in range(1, 40)]
    before = server.runtime.pairing.outstanding()
    async with OsnovaClient(server.url, owner["access_token"]) as client:
        answers = await client.post(batch)
    assert answers[0] == {"jsonrpc": "2.0", "result": True, "id": 0}
    assert answers[1:] == [
        {"jsonrpc": "2.0", "error": {"code": UNAUTHORIZED, "message": CALLER_REVOKED}, "id": n} for n in range(1, 40)
    ]
    assert server.runtime.pairing.outstanding() == before  # not one code was minted


async def test_a_batch_refused_after_a_demotion_member_by_member(household: Household) -> None:
    server = household.server
    owner = household.grants["owner"]
    # The owner demotes nobody but itself cannot; an admin demotes it between two of its batches.
    batch = [{"jsonrpc": "2.0", "method": "bans.list", "id": 1}, {"jsonrpc": "2.0", "method": "apps.list", "id": 2}]
    async with OsnovaClient(server.url, owner["access_token"]) as client, server.client(admin=True) as admin:
        first = await client.post(batch)
        await admin.call("devices.setRole", {"device_id": owner["device_id"], "role": "member"})
        second = await client.post(batch)
    assert ["result" in answer for answer in first] == [True, True]
    assert second[0]["error"]["code"] == FORBIDDEN and "result" in second[1]


def ws_url(server: RunningServer) -> str:
    """The server's /ws URL."""
    return server.url.replace("http", "ws", 1) + "/ws"


async def answer_to(ws: WebsocketsClient, request_id: int, events: list[dict[str, Any]]) -> dict[str, Any]:
    """Read until the answer with `request_id`, keeping the events pushed before it."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if message.get("method") == "event":
            events.append(message["params"])
        elif message.get("id") == request_id:
            return dict(message)


async def subscribed(ws: WebsocketsClient) -> None:
    """Subscribe to every topic."""
    await ws.send(json.dumps({"jsonrpc": "2.0", "method": "events.subscribe", "params": [sorted(TOPICS)], "id": 1}))
    assert (await answer_to(ws, 1, []))["result"] is True


async def test_a_revoked_devices_websocket_message_runs_nothing(household: Household) -> None:
    server = household.server
    owner = household.grants["owner"]
    headers = {"Authorization": f"Bearer {owner['access_token']}"}
    before = server.runtime.pairing.outstanding()
    async with connect(ws_url(server), additional_headers=headers, proxy=None, ping_interval=None) as ws:
        batch = [{"jsonrpc": "2.0", "method": "devices.revoke", "params": [owner["device_id"]], "id": 2}]
        batch += [{"jsonrpc": "2.0", "method": "pairing.start", "id": 3}]
        await ws.send(json.dumps(batch))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if isinstance(message, list):
                break
    assert message[1]["error"] == {"code": UNAUTHORIZED, "message": CALLER_REVOKED}
    assert server.runtime.pairing.outstanding() == before


async def test_members_are_pushed_apps_and_config_events_and_their_own_revocation(household: Household) -> None:
    server = household.server
    member, owner = household.grants["member"], household.grants["owner"]
    pushed: dict[str, list[dict[str, Any]]] = {"member": [], "owner": [], "admin": []}
    tokens = {"member": member["access_token"], "owner": owner["access_token"], "admin": server.admin_token()}
    sockets = {}
    async with (
        connect(ws_url(server), additional_headers={"Authorization": f"Bearer {tokens['member']}"},
                proxy=None, ping_interval=None) as member_ws,
        connect(ws_url(server), additional_headers={"Authorization": f"Bearer {tokens['owner']}"},
                proxy=None, ping_interval=None) as owner_ws,
        connect(ws_url(server), additional_headers={"Authorization": f"Bearer {tokens['admin']}"},
                proxy=None, ping_interval=None) as admin_ws,
    ):
        sockets = {"member": member_ws, "owner": owner_ws, "admin": admin_ws}
        for ws in sockets.values():
            await subscribed(ws)
        async with server.client(admin=True) as admin:
            newcomer = await pair_device(server, name="newcomer")
            await admin.call("devices.setRole", {"device_id": newcomer["device_id"], "role": "owner"})
            await admin.call("devices.revoke", {"device_id": newcomer["device_id"]})
            await admin.call("devices.remove", {"device_id": newcomer["device_id"]})
            await admin.call("config.setServer", {"address": "https://new.example"})
            await admin.call("apps.uninstall", {"app_id": "ant://notes"})
        for who, ws in sockets.items():
            await ws.send(json.dumps({"jsonrpc": "2.0", "method": "apps.list", "id": 9}))
            await answer_to(ws, 9, pushed[who])
        async with server.client(admin=True) as admin:
            await admin.call("devices.revoke", {"device_id": member["device_id"]})
        while not pushed["member"] or pushed["member"][-1]["topic"] != DEVICES_REVOKED:
            message = json.loads(await asyncio.wait_for(member_ws.recv(), 5))
            if message.get("method") == "event":
                pushed["member"].append(message["params"])
    everything = [
        (DEVICES_PAIRED, {"device_id": newcomer["device_id"], "name": "newcomer", "role": "member"}),
        (DEVICES_ROLE_CHANGED, {"device_id": newcomer["device_id"], "role": "owner"}),
        (DEVICES_REVOKED, {"device_id": newcomer["device_id"]}),
        (DEVICES_REMOVED, {"device_id": newcomer["device_id"]}),
        (CONFIG_CHANGED, {"key": "server.address", "value": "https://new.example"}),
        (APPS_UNINSTALLED, {"id": "ant://notes"}),
    ]
    for who in ("owner", "admin"):
        assert [(e["topic"], e["data"]) for e in pushed[who]] == everything
    assert [(e["topic"], e["data"]) for e in pushed["member"]] == [
        everything[4], everything[5], (DEVICES_REVOKED, {"device_id": member["device_id"]}),
    ]
