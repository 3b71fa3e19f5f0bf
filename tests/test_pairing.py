"""Pairing codes: the service's rules, and pairing.start / pairing.complete through a real server."""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import astuple
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server import config as config_module
from osnova_server.cli.common import local_ssl_context
from osnova_server.client import OsnovaClient, RpcCallError
from osnova_server.config import Config
from osnova_server.errors import INVALID_PARAMS, UNAUTHORIZED, InvalidParams, Unauthorized
from osnova_server.security.tls import certificate_fingerprint, generate_self_signed
from osnova_server.services import pairing
from osnova_server.services.pairing import (
    ALPHABET,
    MAX_OUTSTANDING,
    MAX_WRONG_TRIES,
    REFUSED,
    PairingCodes,
    derived_address,
    normalise_code,
)
from tests.clock import FakeClock
from tests.conftest import RunningServer, make_config, running_server

SECRET = b"k" * 32
NOW = 1_900_000_000.0
CODE_SHAPE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
GRANT_KEYS = {"device_id", "access_token", "refresh_token", "token_type", "expires_in"}


# -- helpers other test modules use ------------------------------------------------------------


async def start_pairing(server: RunningServer, **params: Any) -> dict[str, Any]:
    """Run pairing.start as admin and return the payload."""
    async with server.client(admin=True) as admin:
        payload: dict[str, Any] = await admin.call("pairing.start", params)
    return payload


async def pair_device(server: RunningServer, name: str | None = None, role: str | None = None) -> dict[str, Any]:
    """Pair a new device (a member unless `role` says otherwise) through the API and return its grant."""
    payload = await start_pairing(server, **({"name": name} if name else {}), **({"role": role} if role else {}))
    async with server.client() as anonymous:
        grant: dict[str, Any] = await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"]})
    return grant


async def refused_code(client: OsnovaClient, code: str) -> RpcCallError:
    """Call pairing.complete with `code`, expecting the refusal."""
    with pytest.raises(RpcCallError) as caught:
        await client.call("pairing.complete", {"token": code})
    return caught.value


# -- the service ------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock."""
    return FakeClock(NOW)


@pytest.fixture
def codes(clock: FakeClock) -> PairingCodes:
    """A fresh set of pairing codes on the fake clock."""
    return PairingCodes(SECRET, clock)


def test_codes_are_40_bits_from_an_unambiguous_alphabet(codes: PairingCodes) -> None:
    assert len(ALPHABET) == 32 and not set("ILOU") & set(ALPHABET)
    issued = [codes.issue().code for _ in range(50)]
    assert all(CODE_SHAPE.match(code) for code in issued)
    assert len(set(issued)) == 50
    assert pairing.CODE_LENGTH * 5 >= 40


def test_only_a_keyed_digest_is_kept(codes: PairingCodes) -> None:
    """Neither the record nor the holder's repr contains the code, in any spelling."""
    issued = codes.issue(name="phone")
    raw = issued.code.replace("-", "")
    held = repr(codes) + repr(issued.record) + repr(astuple(issued.record))
    assert issued.code not in held and raw not in held
    assert len(issued.record.digest) == 32
    # The digest depends on the secret: another secret stores the same code differently.
    assert PairingCodes(b"z" * 32).digest(raw) != codes.digest(raw)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("ABCD-1234", "ABCD1234"),
        ("abcd1234", "ABCD1234"),
        (" abcd - 1234 ", "ABCD1234"),
        ("o0il-1234", "0011-1234".replace("-", "")),  # Crockford look-alikes
        ("ABCD-123U", None),  # U is not in the alphabet
        ("ABCD-123", None),
        ("ABCD-12345", None),
        ("", None),
        ("ABCD-1234" + " " * 60, None),  # longer than any spelling of a code
        ("ÄBCD-1234", None),
    ],
)
def test_normalise_code(typed: str, expected: str | None) -> None:
    assert normalise_code(typed) == expected


def test_typed_spellings_redeem(codes: PairingCodes) -> None:
    for spelling in (str.lower, lambda c: c.replace("-", ""), lambda c: f"  {c.lower()} "):
        issued = codes.issue()
        assert codes.redeem(spelling(issued.code)) == issued.record


@pytest.mark.parametrize("ttl", [29, 3601, 0, -5, 10**9])
def test_ttl_out_of_bounds_names_ttl_and_issues_nothing(codes: PairingCodes, ttl: int) -> None:
    with pytest.raises(InvalidParams, match="'ttl' must be from 30 to 3600 seconds"):
        codes.issue(ttl=ttl)
    assert codes.outstanding() == 0


@pytest.mark.parametrize("ttl", [30, 3600])
def test_ttl_bounds_are_inclusive(codes: PairingCodes, clock: FakeClock, ttl: int) -> None:
    assert codes.issue(ttl=ttl).record.expires_at == clock.now + ttl


@pytest.mark.parametrize("name", ["", "   ", "x" * 65, "two\nlines", "bell\x07", "rtl\u202eoverride"])
def test_bad_names_name_the_param_and_issue_nothing(codes: PairingCodes, name: str) -> None:
    with pytest.raises(InvalidParams, match="'name' must be 1 to 64 characters"):
        codes.issue(name=name)
    assert codes.outstanding() == 0


@pytest.mark.parametrize("name", ["Anna's phone", "Küchen-Tablet", "\U0001f468\u200d\U0001f469\u200d\U0001f467 tablet"])
def test_good_names_are_kept(codes: PairingCodes, name: str) -> None:
    assert codes.issue(name=f"  {name} ").record.name == name


def test_a_code_works_once(codes: PairingCodes) -> None:
    issued = codes.issue()
    codes.redeem(issued.code)
    with pytest.raises(Unauthorized) as caught:
        codes.redeem(issued.code)
    assert caught.value.message == REFUSED


def test_expired_code_is_refused(codes: PairingCodes, clock: FakeClock) -> None:
    issued = codes.issue(ttl=30)
    clock.now += 30
    with pytest.raises(Unauthorized) as caught:
        codes.redeem(issued.code)
    assert caught.value.message == REFUSED
    assert codes.outstanding() == 0


def test_wrong_tries_invalidate_every_outstanding_code(codes: PairingCodes) -> None:
    first, second = codes.issue(), codes.issue()
    for _ in range(MAX_WRONG_TRIES):
        with pytest.raises(Unauthorized):
            codes.redeem("ZZZZ-ZZZZ")
    assert codes.outstanding() == 0
    for issued in (first, second):
        with pytest.raises(Unauthorized):
            codes.redeem(issued.code)


def test_four_wrong_tries_leave_codes_usable(codes: PairingCodes) -> None:
    issued = codes.issue()
    for _ in range(MAX_WRONG_TRIES - 1):
        with pytest.raises(Unauthorized):
            codes.redeem("ZZZZ-ZZZZ")
    assert codes.redeem(issued.code) == issued.record


def test_wrong_tries_without_codes_do_not_count_against_the_next_code(codes: PairingCodes) -> None:
    for _ in range(MAX_WRONG_TRIES - 1):
        with pytest.raises(Unauthorized):
            codes.redeem("ZZZZ-ZZZZ")
    issued = codes.issue()
    with pytest.raises(Unauthorized):
        codes.redeem("ZZZZ-ZZZZ")
    assert codes.redeem(issued.code) == issued.record


def test_reap_drops_expired_codes_only(codes: PairingCodes, clock: FakeClock) -> None:
    codes.issue(ttl=30)
    keep = codes.issue(ttl=300)
    clock.now += 31
    assert codes.reap() == 1
    assert codes.outstanding() == 1
    assert codes.redeem(keep.code) == keep.record


def test_outstanding_codes_are_bounded(codes: PairingCodes) -> None:
    oldest = codes.issue()
    for _ in range(MAX_OUTSTANDING):
        codes.issue()
    assert codes.outstanding() == MAX_OUTSTANDING
    with pytest.raises(Unauthorized):
        codes.redeem(oldest.code)


def _config(bind: str, tls: bool = False) -> Config:
    """A config with only the bind address and TLS switch set."""
    config = config_module.replace(config_module.Config(), "server", bind_address=bind)
    return config_module.replace(config, "tls", enabled=tls)


@pytest.mark.parametrize(
    ("bind", "tls", "lan", "expected"),
    [
        ("0.0.0.0:8080", False, {False: "192.168.1.20"}, "http://192.168.1.20:8080"),
        ("0.0.0.0:8443", True, {False: "10.0.0.7"}, "https://10.0.0.7:8443"),
        ("[::]:8080", False, {True: "fd00::5"}, "http://[fd00::5]:8080"),
        ("[::]:8080", False, {False: "192.168.1.20", True: "fd00::5"}, "http://192.168.1.20:8080"),
        ("192.168.1.9:9000", False, {}, "http://192.168.1.9:9000"),
        ("[::1]:8080", False, {}, "http://[::1]:8080"),
        ("0.0.0.0:8080", False, {}, "http://127.0.0.1:8080"),  # no LAN route at all
    ],
)
def test_derived_address(bind: str, tls: bool, lan: dict[bool, str], expected: str) -> None:
    assert derived_address(_config(bind, tls), lambda ipv6: lan.get(ipv6)) == expected


def test_lan_host_probe_sends_nothing_and_never_answers_loopback() -> None:
    found = pairing._lan_host(False)
    assert found is None or not found.startswith("127.")


# -- through the server ---------------------------------------------------------------------


async def test_pairing_start_payload(osnova: RunningServer) -> None:
    before = time.time()
    payload = await start_pairing(osnova, name="Kitchen tablet", ttl=120)
    assert set(payload) == {"server", "pairing"}
    assert set(payload["server"]) == {"address", "fingerprint"}
    assert set(payload["pairing"]) == {"code", "nonce", "expiresAt"}
    assert CODE_SHAPE.match(payload["pairing"]["code"])
    assert len(payload["pairing"]["nonce"]) >= 16
    assert RFC3339_UTC.match(payload["pairing"]["expiresAt"])
    expires = calendar.timegm(time.strptime(payload["pairing"]["expiresAt"], "%Y-%m-%dT%H:%M:%SZ"))
    assert before + 118 <= expires <= time.time() + 121
    # Without TLS the fingerprint is the server identity's.
    assert payload["server"]["fingerprint"] == osnova.runtime.identity.fingerprint
    # Derived from the bind address; port 0 means the port the kernel chose, which devices can reach.
    assert payload["server"]["address"] == osnova.url
    assert not payload["server"]["address"].endswith(":0")
    assert osnova.runtime.pairing.outstanding() == 1


async def test_payload_address_follows_advertised_then_set_server(state_dir: Path) -> None:
    config = make_config(state_dir, server={"bind_address": "127.0.0.1:0", "state_dir": str(state_dir),
                                            "advertised_address": "http://osnova.lan:8080"})
    async with running_server(config) as server:
        assert (await start_pairing(server))["server"]["address"] == "http://osnova.lan:8080"
        async with server.client(admin=True) as admin:
            assert await admin.call("config.setServer", {"address": "https://home.example:8443"}) is True
        assert (await start_pairing(server))["server"]["address"] == "https://home.example:8443"


async def test_payload_fingerprint_is_the_tls_certificate(state_dir: Path) -> None:
    cert, key = state_dir / "tls" / "server.crt", state_dir / "tls" / "server.key"
    generate_self_signed(cert, key)
    config = make_config(state_dir, tls={"enabled": True, "cert_path": str(cert), "key_path": str(key)})
    async with (
        running_server(config) as server,
        server.client(admin=True, ssl_context=local_ssl_context(config)) as admin,
    ):
        payload = await admin.call("pairing.start")
    assert payload["server"]["fingerprint"] == certificate_fingerprint(cert)
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", payload["server"]["fingerprint"])
    assert payload["server"]["address"].startswith("https://")


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"ttl": 29}, "'ttl'"),
        ({"ttl": 3601}, "'ttl'"),
        ({"ttl": "300"}, "'ttl'"),
        ({"ttl": True}, "'ttl'"),
        ({"name": ""}, "'name'"),
        ({"name": 5}, "'name'"),
        ({"name": "a\nb"}, "'name'"),
    ],
)
async def test_pairing_start_bad_params(osnova: RunningServer, params: dict[str, Any], named: str) -> None:
    async with osnova.client(admin=True) as admin:
        with pytest.raises(RpcCallError) as caught:
            await admin.call("pairing.start", params)
    assert caught.value.code == INVALID_PARAMS
    assert named in caught.value.message
    assert osnova.runtime.pairing.outstanding() == 0


async def test_pair_then_use_the_tokens(osnova: RunningServer) -> None:
    grant = await pair_device(osnova, name="Anna's phone")
    assert set(grant) == GRANT_KEYS
    assert grant["token_type"] == "Bearer"
    assert grant["expires_in"] == osnova.config.auth.token_expiry
    assert len(grant["refresh_token"]) >= 43
    async with osnova.client(grant["access_token"]) as device:
        assert (await device.call("status.get"))["status"] in ("ok", "degraded")
        listed = await device.call("devices.list")
    assert [(d["device_id"], d["name"], d["revoked"]) for d in listed] == [(grant["device_id"], "Anna's phone", False)]


async def test_device_name_is_used_when_pairing_named_none(osnova: RunningServer) -> None:
    payload = await start_pairing(osnova)
    async with osnova.client() as anonymous:
        grant = await anonymous.call("pairing.complete", [payload["pairing"]["code"], "Pixel 9"])
    device = osnova.runtime.store.device(grant["device_id"])
    assert device is not None and device.name == "Pixel 9"


async def test_bad_device_name_spends_nothing(osnova: RunningServer) -> None:
    code = (await start_pairing(osnova))["pairing"]["code"]
    async with osnova.client() as anonymous:
        with pytest.raises(RpcCallError) as caught:
            await anonymous.call("pairing.complete", {"token": code, "device_name": "x" * 65})
        assert caught.value.code == INVALID_PARAMS and "'device_name'" in caught.value.message
        assert osnova.runtime.store.devices() == []
        await anonymous.call("pairing.complete", {"token": code, "device_name": "fine"})
    assert len(osnova.runtime.store.devices()) == 1


@pytest.mark.parametrize("digits", ["", "1234567890123456789"], ids=["plain", "with-19-digits"])
async def test_a_lone_surrogate_device_name_is_invalid_params_and_the_code_still_works(
    osnova: RunningServer, http: aiohttp.ClientSession, digits: str,
) -> None:
    code = (await start_pairing(osnova))["pairing"]["code"]
    body = (
        '{"jsonrpc": "2.0", "method": "pairing.complete", "params": {"token": "' + code + '", '
        '"device_name": "phone\\ud800"}, "id": ' + (digits or "7") + "}"
    )
    async with http.post(f"{osnova.url}/rpc", data=body) as answer:
        assert await answer.json() == {
            "jsonrpc": "2.0", "id": int(digits or "7"),
            "error": {"code": INVALID_PARAMS,
                      "message": "Invalid params: 'device_name' holds a lone UTF-16 surrogate; send valid Unicode text"},
        }
    assert osnova.runtime.store.devices() == []
    assert osnova.runtime.pairing.outstanding() == 1
    async with osnova.client() as anonymous:
        grant = await anonymous.call("pairing.complete", {"token": code, "device_name": "phone \U0001f4f1"})
    device = osnova.runtime.store.device(grant["device_id"])
    assert device is not None and device.name == "phone \U0001f4f1"


async def test_reused_code_is_refused(osnova: RunningServer) -> None:
    code = (await start_pairing(osnova))["pairing"]["code"]
    async with osnova.client() as anonymous:
        await anonymous.call("pairing.complete", {"token": code})
        error = await refused_code(anonymous, code)
    assert (error.code, error.message) == (UNAUTHORIZED, REFUSED)
    assert len(osnova.runtime.store.devices()) == 1


async def test_five_wrong_codes_then_the_right_one(osnova: RunningServer) -> None:
    code = (await start_pairing(osnova))["pairing"]["code"]
    wrong = "ZZZZ-ZZZZ" if code != "ZZZZ-ZZZZ" else "YYYY-YYYY"
    async with osnova.client() as anonymous:
        errors = [await refused_code(anonymous, wrong) for _ in range(MAX_WRONG_TRIES)]
        right = await refused_code(anonymous, code)
    assert {(e.code, e.message) for e in [*errors, right]} == {(UNAUTHORIZED, REFUSED)}
    assert osnova.runtime.store.devices() == []


async def test_expired_code_is_refused_through_the_server(osnova: RunningServer) -> None:
    code = (await start_pairing(osnova, ttl=30))["pairing"]["code"]
    osnova.runtime.pairing.clock = lambda: time.time() + 30
    async with osnova.client() as anonymous:
        error = await refused_code(anonymous, code)
    assert (error.code, error.message) == (UNAUTHORIZED, REFUSED)
    assert osnova.runtime.store.devices() == []


@pytest.mark.parametrize("token", ["", "ABCD", "x" * 10_000, "ABCD-1234-EFGH"])
async def test_malformed_codes_get_the_same_answer(osnova: RunningServer, token: str) -> None:
    await start_pairing(osnova)
    async with osnova.client() as anonymous:
        error = await refused_code(anonymous, token)
    assert (error.code, error.message) == (UNAUTHORIZED, REFUSED)
    assert osnova.runtime.store.devices() == []


async def test_codes_do_not_survive_a_restart(config: Config) -> None:
    async with running_server(config) as server:
        code = (await start_pairing(server))["pairing"]["code"]
    async with running_server(config) as server, server.client() as anonymous:
        error = await refused_code(anonymous, code)
    assert error.code == UNAUTHORIZED
