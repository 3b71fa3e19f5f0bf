"""Pairing codes: short-lived, single-use secrets that let a new device ask for its first tokens.

A code is 8 characters of Crockford's base32 alphabet (no I, L, O or U, so nothing reads as
another character): 40 bits, shown as `ABCD-1234`. Input is normalised before it is compared:
case and dashes do not matter, and the look-alikes Crockford maps (O to 0, I and L to 1) are
accepted, so a code read aloud or typed from a screen works.

Codes live only in this process's memory, so a restart voids every outstanding code (a new
`osnova-server pair` is needed); in cluster mode they live in Redis instead (cluster/pairing.py),
behind the same PairingBook interface. They are kept only as HMAC-SHA256 digests keyed with a key
derived from the JWT secret: a core dump, a debugger's `repr` or a stray log line of this
object shows digests, not codes. That is a guard against accidental disclosure, not against
someone holding both a dump and the secret (who could try all 2^40 codes, and could mint
admin tokens anyway).

Since a wrong code names no code, wrong tries are counted across every outstanding code:
after `MAX_WRONG_TRIES` of them all outstanding codes are invalidated. A wrong, used, expired or
invalidated code gets the same `Unauthorized` message, so an answer never tells a guesser which.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from osnova_server.errors import InvalidParams, Unauthorized
from osnova_server.logs import audit
from osnova_server.security.roles import DEFAULT_DEVICE_ROLE, Role
from osnova_server.security.tls import certificate_fingerprint
from osnova_server.timestamps import from_epoch

if TYPE_CHECKING:
    from osnova_server.config import Config
    from osnova_server.runtime import Runtime

_LOGGER = logging.getLogger(__name__)

# Crockford's base32: digits and letters without I, L, O, U.
ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH: Final = 8  # 8 x 5 bits = 40 bits
# Crockford's decoding rules: look-alikes read as the digit they resemble.
_LOOK_ALIKES: Final = str.maketrans({"O": "0", "I": "1", "L": "1"})
_IGNORED: Final = str.maketrans("", "", "- \t")
# Anything longer cannot be a code, however it is spelled; refuse it before any work.
MAX_INPUT_CHARS: Final = 64

DEFAULT_TTL: Final = 300
MIN_TTL: Final = 30
MAX_TTL: Final = 3600
MAX_WRONG_TRIES: Final = 5
# Outstanding codes held at once; issuing one more retires the oldest.
MAX_OUTSTANDING: Final = 100
MAX_NAME_CHARS: Final = 64
# Format characters a name may hold: the joiners that build emoji such as 👨‍👩‍👧. The others
# (bidi overrides above all) could make a name display as something else in `devices list`.
_JOINERS: Final = frozenset("\u200c\u200d")
REAP_INTERVAL: Final = 15.0
NONCE_BYTES: Final = 16

REFUSED: Final = (
    "the pairing code is not valid: it may be mistyped, already used, expired or invalidated "
    "after too many wrong tries; run `osnova-server pair` for a new one"
)
_KEY_LABEL: Final = b"osnova pairing code v1"
# What `paired_by` records for a code an admin token issued.
ISSUED_BY_ADMIN: Final = "admin"
# Used only to ask the kernel which source address reaches the LAN; no packet is sent.
_PROBE_V4: Final = ("192.0.2.1", 9)  # TEST-NET-1
_PROBE_V6: Final = ("2001:db8::1", 9)  # documentation prefix


@dataclass(frozen=True, slots=True)
class PairingCode:
    """An outstanding code: its digest (never the code), nonce, chosen name, expiry, and what it grants."""

    digest: bytes
    nonce: str
    name: str | None
    expires_at: float
    role: Role = DEFAULT_DEVICE_ROLE
    # "admin" or the id of the device that issued the code.
    issued_by: str = ISSUED_BY_ADMIN


@dataclass(frozen=True, slots=True)
class IssuedCode:
    """What `issue` hands back once: the code as shown to a person, and its stored record."""

    code: str
    record: PairingCode


def format_code(raw: str) -> str:
    """Show an 8-character code as `ABCD-1234`."""
    return f"{raw[:4]}-{raw[4:]}"


def normalise_code(text: str) -> str | None:
    """The canonical 8 characters of a typed code, or None if it cannot be one."""
    if len(text) > MAX_INPUT_CHARS:
        return None
    canonical = text.translate(_IGNORED).upper().translate(_LOOK_ALIKES)
    if len(canonical) != CODE_LENGTH or any(char not in ALPHABET for char in canonical):
        return None
    return canonical


def check_name(name: str | None, param: str) -> str | None:
    """A device name trimmed, or InvalidParams naming `param` if it is empty, long or odd."""
    if name is None:
        return None
    name = name.strip()
    if not name or len(name) > MAX_NAME_CHARS or any(
        unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") and char not in _JOINERS for char in name
    ):
        raise InvalidParams(
            f"Invalid params: {param!r} must be 1 to {MAX_NAME_CHARS} characters "
            "without control characters"
        )
    return name


def check_ttl(ttl: int) -> int:
    """The code lifetime, or InvalidParams naming `ttl` when outside 30..3600 seconds."""
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise InvalidParams(f"Invalid params: 'ttl' must be from {MIN_TTL} to {MAX_TTL} seconds, not {ttl}")
    return ttl


class CodeRefused(Unauthorized):
    """A refused code; `reason` goes to the audit log only, the message is always the same."""

    def __init__(self, reason: str) -> None:
        super().__init__(REFUSED)
        self.reason = reason


class PairingBook(Protocol):
    """Where codes are issued and redeemed: PairingCodes here, or cluster mode's shared book."""

    async def issue_code(
        self,
        name: str | None = None,
        ttl: int = DEFAULT_TTL,
        role: Role = DEFAULT_DEVICE_ROLE,
        issued_by: str = ISSUED_BY_ADMIN,
    ) -> IssuedCode:
        """Make a new code for a device to be called `name` with `role`, valid for `ttl` seconds."""

    async def redeem_code(self, text: str) -> PairingCode:
        """Take a code and return its record; raise Unauthorized for any bad code."""

    async def restore_code(self, record: PairingCode) -> None:
        """Put back a code whose pairing then failed: only a success uses a code up."""

    async def discard_code(self, record: PairingCode) -> None:
        """Withdraw a code whose `pairing.start` failed before its caller saw it."""

    async def run_reaper(self) -> None:
        """Background job: forget expired codes."""

    def outstanding(self) -> int:
        """How many codes can still be redeemed (as far as this process knows)."""


class PairingCodes:
    """The outstanding pairing codes of this process, held as keyed digests."""

    __slots__ = ("_codes", "_key", "_wrong_tries", "clock")

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        # A key of its own, so a code digest can never be confused with a token signature.
        self._key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()
        self._codes: dict[bytes, PairingCode] = {}
        self._wrong_tries = 0
        # Public so tests can move time; wall-clock because expiry is shown as a timestamp.
        self.clock = clock

    def __repr__(self) -> str:
        return f"PairingCodes(outstanding={len(self._codes)}, wrong_tries={self._wrong_tries})"

    def rekey(self, secret: bytes) -> int:
        """Key digests from a new JWT secret; every outstanding code is void. Returns how many were."""
        self._key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()
        voided = len(self._codes)
        self._codes.clear()
        self._wrong_tries = 0
        return voided

    def digest(self, canonical: str) -> bytes:
        """The keyed digest a canonical code is stored and looked up under."""
        return hmac.new(self._key, canonical.encode("ascii"), hashlib.sha256).digest()

    def issue(
        self,
        name: str | None = None,
        ttl: int = DEFAULT_TTL,
        role: Role = DEFAULT_DEVICE_ROLE,
        issued_by: str = ISSUED_BY_ADMIN,
    ) -> IssuedCode:
        """Make a new code for a device to be called `name` with `role`, valid for `ttl` seconds."""
        name = check_name(name, "name")
        ttl = check_ttl(ttl)
        self.reap()
        while True:
            raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
            digest = self.digest(raw)
            if digest not in self._codes:
                break
        if len(self._codes) >= MAX_OUTSTANDING:
            del self._codes[next(iter(self._codes))]
        record = PairingCode(digest, secrets.token_urlsafe(NONCE_BYTES), name, self.clock() + ttl, role, issued_by)
        self._codes[digest] = record
        return IssuedCode(format_code(raw), record)

    async def issue_code(
        self,
        name: str | None = None,
        ttl: int = DEFAULT_TTL,
        role: Role = DEFAULT_DEVICE_ROLE,
        issued_by: str = ISSUED_BY_ADMIN,
    ) -> IssuedCode:
        """`issue` behind the PairingBook interface."""
        return self.issue(name, ttl, role, issued_by)

    async def redeem_code(self, text: str) -> PairingCode:
        """`redeem` behind the PairingBook interface."""
        return self.redeem(text)

    async def restore_code(self, record: PairingCode) -> None:
        """`restore` behind the PairingBook interface."""
        self.restore(record)

    async def discard_code(self, record: PairingCode) -> None:
        """`discard` behind the PairingBook interface."""
        self.discard(record)

    def redeem(self, text: str) -> PairingCode:
        """Take a code and return its record; raise Unauthorized for any bad code.

        The caller must `restore` it if the pairing it pays for fails, so only a success uses it up.
        """
        now = self.clock()
        canonical = normalise_code(text)
        record = self._codes.pop(self.digest(canonical), None) if canonical is not None else None
        if record is not None and record.expires_at > now:
            if not self._codes:
                self._wrong_tries = 0
            return record
        reason = "expired" if record is not None else "unknown" if canonical is not None else "malformed"
        self._wrong_tries += 1
        if self._wrong_tries >= MAX_WRONG_TRIES:
            invalidated = len(self._codes)
            self._codes.clear()
            self._wrong_tries = 0
            _LOGGER.warning(
                "%d wrong pairing codes: every outstanding code (%d) was invalidated",
                MAX_WRONG_TRIES, invalidated,
            )
            audit("pairing.invalidated", codes=invalidated, wrong_tries=MAX_WRONG_TRIES)
        elif not self._codes:
            # Nothing left to guess at: earlier slips should not count against the next code.
            self._wrong_tries = 0
        raise CodeRefused(reason)

    def restore(self, record: PairingCode) -> None:
        """Put back a code that `redeem` took for a pairing that then failed: it works again."""
        if record.expires_at > self.clock() and record.digest not in self._codes:
            self._codes[record.digest] = record

    def discard(self, record: PairingCode) -> None:
        """Withdraw a code whose `pairing.start` failed before its caller saw it."""
        self._codes.pop(record.digest, None)

    def reap(self) -> int:
        """Forget expired codes; return how many were dropped."""
        now = self.clock()
        expired = [digest for digest, record in self._codes.items() if record.expires_at <= now]
        for digest in expired:
            del self._codes[digest]
        if not self._codes:
            self._wrong_tries = 0
        return len(expired)

    async def run_reaper(self, interval: float = REAP_INTERVAL) -> None:
        """Background job: drop expired codes every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            dropped = self.reap()
            if dropped:
                _LOGGER.debug("reaped %d expired pairing codes", dropped)

    def outstanding(self) -> int:
        """How many codes can still be redeemed or are waiting to be reaped."""
        return len(self._codes)


# -- the payload a device scans ------------------------------------------------------------------


async def pairing_payload(runtime: Runtime, issued: IssuedCode) -> dict[str, Any]:
    """The CONTRACT 4 payload: where the server is, how to recognise it, and the code."""
    return {
        "server": {
            "address": await server_address(runtime),
            "fingerprint": await server_fingerprint(runtime),
        },
        "pairing": {
            "code": issued.code,
            "nonce": issued.record.nonce,
            "expiresAt": from_epoch(issued.record.expires_at),
        },
    }


async def server_address(runtime: Runtime) -> str:
    """The address set by `config.setServer`, else `advertised_address`, else one derived."""
    return await runtime.settings.get_server() or derived_address(runtime.config)


def derived_address(config: Config, lan_host: Callable[[bool], str | None] | None = None) -> str:
    """`scheme://host:port` from the bind address; a wildcard bind means the host's LAN address."""
    host = config.host
    if host in ("0.0.0.0", "", "::"):
        find = lan_host or _lan_host
        # A [::] bind accepts IPv4 too (dual stack); an IPv4 address is what most phones reach.
        host = find(False) or (find(True) if host == "::" else None) or _fallback_host(host)
    if ":" in host:
        host = f"[{host}]"
    return f"{config.scheme}://{host}:{config.port}"


def _lan_host(ipv6: bool) -> str | None:
    """The source address the kernel would use towards the LAN, found without sending a packet."""
    family, probe = (socket.AF_INET6, _PROBE_V6) if ipv6 else (socket.AF_INET, _PROBE_V4)
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(probe)  # UDP connect() only picks a route and a source address
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    ip = ipaddress.ip_address(address)
    return None if ip.is_unspecified or ip.is_loopback else address


def _fallback_host(bind_host: str) -> str:
    """Loopback, when the host has no route to any LAN; logged, since a phone cannot use it."""
    _LOGGER.warning(
        "no LAN address found for the pairing payload; set [server] advertised_address or call config.setServer"
    )
    return "::1" if bind_host == "::" else "127.0.0.1"


async def server_fingerprint(runtime: Runtime) -> str:
    """`sha256:` + hex of the TLS certificate's SubjectPublicKeyInfo when TLS is on, else the identity's."""
    config = runtime.config
    if config.tls.enabled:
        path = Path(config.tls.cert_path)
        return await asyncio.get_running_loop().run_in_executor(None, certificate_fingerprint, path)
    return runtime.identity.fingerprint
