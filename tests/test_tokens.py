"""Tests of access tokens: issue, verify, every kind of bad token, the cache and revocation."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest

from osnova_server.security import tokens
from osnova_server.security.tokens import (
    Claims,
    Scope,
    TokenAuthority,
    TokenInvalid,
    generate_secret_hex,
)
from tests.clock import FakeClock

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32
NOW = 1_800_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    """A fresh fake clock."""
    return FakeClock(NOW)


@pytest.fixture
def authority(clock: FakeClock) -> TokenAuthority:
    """An authority with a one-hour default lifetime."""
    return TokenAuthority(SECRET, default_ttl=3600, clock=clock)


def b64(data: bytes) -> str:
    """Base64url without padding, as in JWTs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload(**changes: Any) -> dict[str, Any]:
    """A valid device payload, with some claims changed or (when None) removed."""
    claims: dict[str, Any] = {
        "sub": "dev-1",
        "device_id": "dev-1",
        "scope": "device",
        "iat": int(NOW),
        "exp": int(NOW) + 600,
        "jti": "jti-1",
    }
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


def signed(claims: dict[str, Any], key: bytes = SECRET, alg: str = "HS256") -> str:
    """Sign claims with pyjwt."""
    return jwt.encode(claims, key, algorithm=alg)


def hand_signed(header: dict[str, Any], claims: dict[str, Any], key: bytes = SECRET) -> str:
    """A token with any header, HMAC-SHA256-signed with `key`."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload rewritten and the original signature kept."""
    header, body, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(changes)
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def test_issue_and_verify_device(authority: TokenAuthority) -> None:
    """A device token carries the device and its lifetime."""
    token, expires_in = authority.issue(Scope.DEVICE, "dev-1", ttl=600)
    assert expires_in == 600
    claims = authority.verify(token)
    assert claims.subject == "dev-1"
    assert claims.device_id == "dev-1"
    assert claims.scope is Scope.DEVICE
    assert claims.issued_at == NOW
    assert claims.expires_at == NOW + 600
    assert len(claims.jti) >= 16
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_issue_and_verify_admin(authority: TokenAuthority) -> None:
    """An admin token belongs to no device and uses the default lifetime."""
    token, expires_in = authority.issue(Scope.ADMIN, None)
    assert expires_in == 3600
    claims = authority.verify(token)
    assert (claims.subject, claims.device_id, claims.scope) == ("admin", None, Scope.ADMIN)


def test_every_token_is_unique(authority: TokenAuthority) -> None:
    """Two tokens issued in the same second differ by their jti."""
    first, _ = authority.issue(Scope.DEVICE, "dev-1")
    second, _ = authority.issue(Scope.DEVICE, "dev-1")
    assert first != second
    assert authority.verify(first).jti != authority.verify(second).jti


@pytest.mark.parametrize(
    ("scope", "device_id", "ttl"),
    [
        (Scope.ADMIN, "dev-1", None),
        (Scope.DEVICE, None, None),
        (Scope.DEVICE, "", None),
        (Scope.PUBLIC, None, None),
        (Scope.DEVICE, "dev-1", 0),
    ],
)
def test_issue_refuses_nonsense(
    authority: TokenAuthority, scope: Scope, device_id: str | None, ttl: int | None
) -> None:
    """Tokens are minted only for a device with an id, or an admin without one."""
    with pytest.raises(ValueError):
        authority.issue(scope, device_id, ttl)


def test_short_secret_is_refused() -> None:
    """HS256 with fewer than 32 bytes of secret is guessable; refuse it."""
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenAuthority(b"short", default_ttl=60)


BAD_TOKENS: list[tuple[str, str, str]] = [
    ("alg none", jwt.encode(payload(), "", algorithm="none"), "bad signature"),
    ("alg none, empty signature", hand_signed({"alg": "none"}, payload()).rsplit(".", 1)[0] + ".",
     "bad signature"),
    ("other key", signed(payload(), OTHER_SECRET), "bad signature"),
    ("RS256 header over an HMAC signature",
     hand_signed({"alg": "RS256", "typ": "JWT"}, payload()), "bad signature"),
    ("HS512", signed(payload(), SECRET * 2, alg="HS512"), "bad signature"),
    ("tampered payload", tampered(signed(payload()), scope="admin", sub="admin"), "bad signature"),
    ("tampered device", tampered(signed(payload()), sub="dev-2", device_id="dev-2"),
     "bad signature"),
    ("expired", signed(payload(exp=int(NOW) - 1)), "expired"),
    ("expires this instant", signed(payload(exp=int(NOW))), "expired"),
    ("issued in the future", signed(payload(iat=int(NOW) + 61)), "not yet valid"),
    ("not before the future", signed(payload(nbf=int(NOW) + 3600)), "not yet valid"),
    ("no exp", signed(payload(exp=None)), "missing claim"),
    ("no iat", signed(payload(iat=None)), "missing claim"),
    ("no sub", signed(payload(sub=None)), "missing claim"),
    ("no scope", signed(payload(scope=None)), "missing claim"),
    ("no jti", signed(payload(jti=None)), "missing claim"),
    ("device scope without device_id", signed(payload(device_id=None)), "missing claim"),
    ("public scope", signed(payload(scope="public")), "malformed"),
    ("unknown scope", signed(payload(scope="root")), "malformed"),
    ("list scope", signed(payload(scope=["admin"])), "malformed"),
    ("device_id is not sub", signed(payload(device_id="dev-2")), "malformed"),
    ("admin with a device", signed(payload(scope="admin", sub="admin")), "malformed"),
    ("admin with another sub", signed(payload(scope="admin", sub="root", device_id=None)),
     "malformed"),
    ("exp is a string", signed(payload(exp="tomorrow")), "malformed"),
    ("exp is infinite", signed(payload(exp=float("inf"))), "malformed"),
    ("exp is a bool", signed(payload(exp=True)), "malformed"),
    ("sub is a number", signed(payload(sub=5)), "malformed"),
    ("not a JWT", "hello", "malformed"),
    ("empty", "", "malformed"),
    ("three junk segments", "a.b.c", "malformed"),
    ("huge", "a" * 100_000, "malformed"),
]


@pytest.mark.parametrize(
    ("token", "reason"), [(token, reason) for _, token, reason in BAD_TOKENS],
    ids=[name for name, _, _ in BAD_TOKENS],
)
def test_bad_tokens_are_refused(authority: TokenAuthority, token: str, reason: str) -> None:
    """Every way a token can be wrong raises TokenInvalid with a short reason, and is not cached."""
    with pytest.raises(TokenInvalid) as caught:
        authority.verify(token)
    assert caught.value.reason == reason
    assert str(caught.value) == reason
    assert authority.cached() == 0


def test_small_clock_skew_is_tolerated(authority: TokenAuthority) -> None:
    """A token minted on a clock up to 60 s ahead is accepted."""
    assert authority.verify(signed(payload(iat=int(NOW) + 59))).issued_at == NOW + 59


def test_revoked_device_is_refused(authority: TokenAuthority) -> None:
    """A revoked device's unexpired token is refused."""
    token, _ = authority.issue(Scope.DEVICE, "dev-1")
    authority.revoke_device("dev-1")
    assert authority.is_revoked("dev-1")
    assert not authority.is_revoked("dev-2")
    with pytest.raises(TokenInvalid, match="revoked"):
        authority.verify(token)


def test_load_revoked_at_start(authority: TokenAuthority) -> None:
    """Revocations persisted by the store are honoured after a restart."""
    old_token = signed(payload())
    authority.load_revoked(["dev-1", "dev-9"])
    with pytest.raises(TokenInvalid, match="revoked"):
        authority.verify(old_token)
    assert authority.verify(authority.issue(Scope.DEVICE, "dev-2")[0]).device_id == "dev-2"


def test_cache_hit_skips_decoding(
    authority: TokenAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second verify of the same token returns the same claims without any crypto."""
    token, _ = authority.issue(Scope.DEVICE, "dev-1")
    first = authority.verify(token)
    assert authority.cached() == 1

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit must not decode")

    monkeypatch.setattr(tokens._decoder(), "decode", no_decoding)
    assert authority.verify(token) is first


def test_expired_cached_token_is_refused(authority: TokenAuthority, clock: FakeClock) -> None:
    """A cached token stops working the moment it expires, and leaves the cache."""
    token, _ = authority.issue(Scope.DEVICE, "dev-1", ttl=60)
    authority.verify(token)
    clock.now = NOW + 59.999
    assert authority.verify(token).device_id == "dev-1"
    clock.now = NOW + 60
    with pytest.raises(TokenInvalid, match="expired"):
        authority.verify(token)
    assert authority.cached() == 0


def test_revocation_drops_cached_tokens(authority: TokenAuthority) -> None:
    """Revoking a device drops its cached tokens at once and leaves the others."""
    mine = [authority.issue(Scope.DEVICE, "dev-1")[0] for _ in range(3)]
    theirs = authority.issue(Scope.DEVICE, "dev-2")[0]
    admin = authority.issue(Scope.ADMIN, None)[0]
    for token in [*mine, theirs, admin]:
        authority.verify(token)
    assert authority.cached() == 5
    authority.revoke_device("dev-1")
    assert authority.cached() == 2
    for token in mine:
        with pytest.raises(TokenInvalid, match="revoked"):
            authority.verify(token)
    assert authority.verify(theirs).device_id == "dev-2"
    assert authority.verify(admin).scope is Scope.ADMIN


def test_cache_is_bounded(clock: FakeClock) -> None:
    """The cache never holds more than cache_size tokens; evicted tokens still verify."""
    authority = TokenAuthority(SECRET, default_ttl=3600, cache_size=2, clock=clock)
    issued = [authority.issue(Scope.DEVICE, f"dev-{index}")[0] for index in range(5)]
    for token in issued:
        authority.verify(token)
        assert authority.cached() <= 2
    assert [authority.verify(token).device_id for token in issued] == [
        f"dev-{index}" for index in range(5)
    ]


def test_claims_are_frozen() -> None:
    """Claims handed to handlers cannot be changed by them."""
    claims = Claims("admin", None, Scope.ADMIN, "j", 1.0, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        claims.scope = Scope.DEVICE  # type: ignore[misc]
    assert not hasattr(claims, "__dict__")


def test_scope_is_a_string_enum() -> None:
    """Scopes compare and serialise as their names."""
    assert Scope("device") is Scope.DEVICE
    assert f"{Scope.ADMIN}" == "admin"
    assert json.dumps([Scope.PUBLIC]) == '["public"]'


def test_generate_secret_hex() -> None:
    """A generated secret is 256 random bits in hex, long enough for the authority."""
    secret = generate_secret_hex()
    assert len(secret) == 64
    assert int(secret, 16) >= 0
    assert secret != generate_secret_hex()
    TokenAuthority(secret.encode(), default_ttl=60)
