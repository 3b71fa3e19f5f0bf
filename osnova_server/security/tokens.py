"""Access tokens: HS256 JWTs issued to admins and paired devices, verified on every request.

Verification is the only per-request crypto, so verified tokens are cached: a cache hit costs a
dict lookup plus the two checks that can change after a token was first verified, its expiry and
its device's revocation. Times are checked against the injected clock rather than by pyjwt, so
that the cached and the uncached paths agree exactly and tests can move time.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import jwt

_LOGGER = logging.getLogger(__name__)

ALGORITHM: Final = "HS256"
ADMIN_SUBJECT: Final = "admin"
MIN_SECRET_BYTES: Final = 32
# Clocks of the machines that mint tokens (the CLI, the server) may disagree by this much.
MAX_CLOCK_SKEW: Final = 60.0
# Longer than any token this server issues; bigger inputs are refused before any parsing.
MAX_TOKEN_CHARS: Final = 4096
REQUIRED_CLAIMS: Final = ("exp", "iat", "sub", "scope", "jti")

EXPIRED: Final = "expired"
BAD_SIGNATURE: Final = "bad signature"
MALFORMED: Final = "malformed"
NOT_YET_VALID: Final = "not yet valid"
REVOKED: Final = "revoked"
MISSING_CLAIM: Final = "missing claim"


@functools.cache
def _decoder() -> jwt.PyJWT:
    """pyjwt's decoder, made on the first token check rather than at import.

    pyjwt is imported only here and in the functions that sign or read a token: importing it
    loads its RSA, EC and JWK support from `cryptography` (about 25 ms, measured with
    `python -X importtime`), and nothing before the server is ready signs or checks a token, so
    the first token checked pays it once (tests/test_startup_imports.py keeps it off start-up).
    pyjwt checks the signature, the algorithm and that the claims are present and typed;
    expiry, issue and not-before times are checked here against the authority's clock.
    """
    import jwt

    return jwt.PyJWT(
        options={
            "verify_signature": True,
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "require": list(REQUIRED_CLAIMS),
            "enforce_minimum_key_length": True,
        }
    )


class Scope(StrEnum):
    """What a caller may do: public methods only, a paired device's methods, or everything."""

    PUBLIC = "public"
    DEVICE = "device"
    ADMIN = "admin"


_TOKEN_SCOPES: Final = frozenset({Scope.DEVICE, Scope.ADMIN})


@dataclass(frozen=True, slots=True)
class Claims:
    """The verified contents of an access token."""

    subject: str
    device_id: str | None
    scope: Scope
    jti: str
    issued_at: float
    expires_at: float


class TokenInvalid(Exception):
    """A token was refused; `reason` is short, safe to log and never contains the token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TokenAuthority:
    """Issues and verifies access tokens with one shared secret, and knows revoked devices."""

    __slots__ = ("_cache", "_cache_size", "_clock", "_default_ttl", "_known", "_revoked", "_secret")

    def __init__(
        self,
        secret: bytes,
        default_ttl: int,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        known_device: Callable[[str], bool] | None = None,
    ) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        if default_ttl < 1:
            raise ValueError(f"the token lifetime must be at least 1 second, not {default_ttl}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, not {cache_size}")
        self._secret = secret
        self._default_ttl = default_ttl
        self._cache_size = cache_size
        self._clock = clock
        # Insertion order: when full, the oldest entry goes first (tokens are verified again).
        self._cache: dict[str, Claims] = {}
        self._revoked: set[str] = set()
        # Whether a device still exists: a removed device's unexpired tokens are refused after
        # a restart too, when its id is no longer among the revoked ones read from the store.
        self._known = known_device

    def issue(
        self, scope: Scope, device_id: str | None, ttl: int | None = None
    ) -> tuple[str, int]:
        """Mint a token for an admin (no device) or a device; return it and its lifetime."""
        if scope is Scope.ADMIN:
            if device_id is not None:
                raise ValueError("an admin token belongs to no device")
            subject = ADMIN_SUBJECT
        elif scope is Scope.DEVICE:
            if not device_id:
                raise ValueError("a device token needs a device id")
            subject = device_id
        else:
            raise ValueError(f"tokens are issued for the device or admin scope, not {scope}")
        lifetime = self._default_ttl if ttl is None else ttl
        if lifetime < 1:
            raise ValueError(f"the token lifetime must be at least 1 second, not {lifetime}")
        issued_at = int(self._clock())
        payload: dict[str, Any] = {
            "sub": subject,
            "device_id": device_id,
            "scope": scope.value,
            "iat": issued_at,
            "exp": issued_at + lifetime,
            "jti": secrets.token_urlsafe(16),
        }
        import jwt  # see _decoder

        return jwt.encode(payload, self._secret, algorithm=ALGORITHM), lifetime

    def verify(self, token: str) -> Claims:
        """Return the claims of a valid token; raise TokenInvalid saying why it is not."""
        claims = self._cache.get(token)
        if claims is None:
            return self._verify_uncached(token)
        # Only these two can change after a token was verified once.
        if self._clock() >= claims.expires_at:
            del self._cache[token]
            raise TokenInvalid(EXPIRED)
        if claims.device_id is not None and claims.device_id in self._revoked:
            del self._cache[token]
            raise TokenInvalid(REVOKED)
        return claims

    def _verify_uncached(self, token: str) -> Claims:
        """Check signature, algorithm, claims and times of a token, and cache it if valid."""
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise TokenInvalid(MALFORMED)
        decoder = _decoder()
        import jwt  # loaded by _decoder

        try:
            payload = decoder.decode(token, self._secret, algorithms=[ALGORITHM], leeway=0)
        except jwt.MissingRequiredClaimError:
            raise TokenInvalid(MISSING_CLAIM) from None
        except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
            raise TokenInvalid(BAD_SIGNATURE) from None
        except jwt.InvalidTokenError:
            raise TokenInvalid(MALFORMED) from None

        issued_at = _number(payload["iat"])
        expires_at = _number(payload["exp"])
        try:
            scope = Scope(payload["scope"])
        except ValueError:
            raise TokenInvalid(MALFORMED) from None
        if scope not in _TOKEN_SCOPES:
            raise TokenInvalid(MALFORMED)
        subject = payload["sub"]
        device_id = payload.get("device_id")
        if scope is Scope.DEVICE:
            if device_id is None:
                raise TokenInvalid(MISSING_CLAIM)
            if not isinstance(device_id, str) or not device_id or device_id != subject:
                raise TokenInvalid(MALFORMED)
        elif device_id is not None or subject != ADMIN_SUBJECT:
            raise TokenInvalid(MALFORMED)

        now = self._clock()
        if now >= expires_at:
            raise TokenInvalid(EXPIRED)
        if issued_at > now + MAX_CLOCK_SKEW:
            raise TokenInvalid(NOT_YET_VALID)
        if "nbf" in payload and _number(payload["nbf"]) > now + MAX_CLOCK_SKEW:
            raise TokenInvalid(NOT_YET_VALID)
        if device_id is not None and (
            device_id in self._revoked or (self._known is not None and not self._known(device_id))
        ):
            raise TokenInvalid(REVOKED)

        claims = Claims(
            subject=subject,
            device_id=device_id,
            scope=scope,
            jti=payload["jti"],
            issued_at=issued_at,
            expires_at=expires_at,
        )
        cache = self._cache
        if len(cache) >= self._cache_size:
            del cache[next(iter(cache))]
        cache[token] = claims
        return claims

    def replace_secret(self, secret: bytes) -> None:
        """Sign with `secret` from now on: every token signed with the old one is refused at once."""
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._cache.clear()  # cached tokens were verified with the old secret

    def revoke_device(self, device_id: str) -> None:
        """Refuse every token of a device from now on, cached ones included."""
        self._revoked.add(device_id)
        self._drop_cached({device_id})

    def load_revoked(self, device_ids: Iterable[str]) -> None:
        """Add the devices the store has recorded as revoked (called at start)."""
        ids = set(device_ids)
        self._revoked |= ids
        self._drop_cached(ids)

    def is_revoked(self, device_id: str) -> bool:
        """Tell whether a device's tokens are refused."""
        return device_id in self._revoked

    def _drop_cached(self, device_ids: set[str]) -> None:
        """Forget cached tokens of these devices (a rare, O(cache) operation)."""
        if not device_ids:
            return
        stale = [token for token, claims in self._cache.items() if claims.device_id in device_ids]
        for token in stale:
            del self._cache[token]
        if stale:
            _LOGGER.debug("dropped %d cached tokens of revoked devices", len(stale))

    def cached(self) -> int:
        """Number of verified tokens held in the cache."""
        return len(self._cache)


def unverified_device_id(token: str) -> str | None:
    """The `device_id` claim of a token, read without checking it (callers verify it after)."""
    import jwt  # see _decoder

    try:
        payload = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    device_id = payload.get("device_id") if isinstance(payload, dict) else None
    return device_id if isinstance(device_id, str) else None


def _number(value: Any) -> float:
    """Read a NumericDate claim, refusing anything but a finite int or float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TokenInvalid(MALFORMED)
    try:
        number = float(value)
    except OverflowError:
        raise TokenInvalid(MALFORMED) from None
    if not math.isfinite(number):
        raise TokenInvalid(MALFORMED)
    return number


def generate_secret_hex() -> str:
    """Return a fresh 256-bit secret as 64 hex characters (what `init` writes)."""
    return secrets.token_hex(32)
