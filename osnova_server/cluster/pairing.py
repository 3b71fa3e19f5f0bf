"""Pairing codes shared by every process, in Redis with TTLs, so they also survive a restart.

A code is stored under its keyed digest (never the code itself, as in PairingCodes) with the
record as JSON and a TTL of the code's lifetime; a sorted set of the outstanding digests, by
expiry, lets one script retire the oldest past MAX_OUTSTANDING and void them all after
MAX_WRONG_TRIES wrong tries counted across every process. Redeeming is one script, so a code
can be used once even when two processes are asked for it at the same moment.

Without Redis there are no shared codes: issuing and redeeming answer a clear error rather than
codes only one process knows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from collections.abc import Callable
from typing import Final

from osnova_server.cluster.link import PREFIX, REDIS_ERRORS, RedisLink
from osnova_server.errors import InternalError
from osnova_server.logs import audit
from osnova_server.security.roles import DEFAULT_DEVICE_ROLE, Role
from osnova_server.services.pairing import (
    ALPHABET,
    CODE_LENGTH,
    DEFAULT_TTL,
    ISSUED_BY_ADMIN,
    MAX_OUTSTANDING,
    MAX_TTL,
    MAX_WRONG_TRIES,
    NONCE_BYTES,
    CodeRefused,
    IssuedCode,
    PairingCode,
    PairingCodes,
    check_name,
    check_ttl,
    format_code,
    normalise_code,
)

_LOGGER = logging.getLogger(__name__)

CODE_PREFIX: Final = PREFIX + "pairing:code:"
OUTSTANDING_KEY: Final = PREFIX + "pairing:outstanding"
TRIES_KEY: Final = PREFIX + "pairing:wrong-tries"
UNAVAILABLE: Final = (
    "pairing is unavailable while Redis (the cluster's shared state) cannot be reached; "
    "try again in a moment"
)

# KEYS: the code's key, the outstanding set. ARGV: digest, record JSON, ttl ms, expiry, now,
# max outstanding. Returns 1 if stored, 0 if the digest was taken (the caller draws again).
ISSUE_SCRIPT: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) do
  local oldest = redis.call('ZPOPMIN', KEYS[2])
  redis.call('DEL', '""" + CODE_PREFIX + """' .. oldest[1])
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
return 1
"""

# KEYS: the code's key (or '' for a malformed code), the outstanding set, the tries counter.
# ARGV: digest, now, max tries, tries ttl ms. Returns {'ok', record} or {'refused', n} where n
# is the number of codes voided by this try (0 unless it was the last allowed).
REDEEM_SCRIPT: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[2])
if KEYS[1] ~= '' then
  local record = redis.call('GET', KEYS[1])
  if record then
    redis.call('DEL', KEYS[1])
    redis.call('ZREM', KEYS[2], ARGV[1])
    if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
    return {'ok', record}
  end
end
local tries = redis.call('INCR', KEYS[3])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
if tries >= tonumber(ARGV[3]) then
  local digests = redis.call('ZRANGE', KEYS[2], 0, -1)
  for _, digest in ipairs(digests) do redis.call('DEL', '""" + CODE_PREFIX + """' .. digest) end
  redis.call('DEL', KEYS[2], KEYS[3])
  return {'invalidated', #digests}
end
if redis.call('ZCARD', KEYS[2]) == 0 then redis.call('DEL', KEYS[3]) end
return {'refused', 0}
"""


class SharedPairingCodes:
    """The outstanding pairing codes of every process, held in Redis as keyed digests."""

    __slots__ = ("_digests", "_issue", "_link", "_redeem", "clock")

    def __init__(self, link: RedisLink, digests: PairingCodes) -> None:
        self._link = link
        # The in-process book, used only for its keyed digest and clock, so both agree.
        self._digests = digests
        self.clock: Callable[[], float] = digests.clock
        self._issue = link.client.register_script(ISSUE_SCRIPT)
        self._redeem = link.client.register_script(REDEEM_SCRIPT)

    def __repr__(self) -> str:
        return f"SharedPairingCodes(redis={self._link.url!r})"

    async def issue_code(
        self,
        name: str | None = None,
        ttl: int = DEFAULT_TTL,
        role: Role = DEFAULT_DEVICE_ROLE,
        issued_by: str = ISSUED_BY_ADMIN,
    ) -> IssuedCode:
        """Make a new code, valid for `ttl` seconds on every process."""
        name = check_name(name, "name")
        ttl = check_ttl(ttl)
        if not self._link.up:
            raise InternalError(UNAVAILABLE)
        now = self.clock()
        while True:
            raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
            digest = self._digests.digest(raw)
            record = PairingCode(digest, secrets.token_urlsafe(NONCE_BYTES), name, now + ttl, role, issued_by)
            try:
                stored = await self._issue(
                    keys=[CODE_PREFIX + digest.hex(), OUTSTANDING_KEY],
                    args=[digest.hex(), _dump(record), ttl * 1000, record.expires_at, now, MAX_OUTSTANDING,
                          MAX_TTL * 1000],
                )
            except REDIS_ERRORS as err:
                self._link.mark_down(err)
                raise InternalError(UNAVAILABLE) from None
            if stored:
                return IssuedCode(format_code(raw), record)

    async def redeem_code(self, text: str) -> PairingCode:
        """Use up a code and return its record; CodeRefused for any bad code."""
        if not self._link.up:
            raise InternalError(UNAVAILABLE)
        canonical = normalise_code(text)
        digest = self._digests.digest(canonical) if canonical is not None else b""
        try:
            outcome, value = await self._redeem(
                keys=[CODE_PREFIX + digest.hex() if digest else "", OUTSTANDING_KEY, TRIES_KEY],
                args=[digest.hex(), self.clock(), MAX_WRONG_TRIES, MAX_TTL * 1000],
            )
        except REDIS_ERRORS as err:
            self._link.mark_down(err)
            raise InternalError(UNAVAILABLE) from None
        if outcome == b"ok":
            return _load(value, digest)
        if outcome == b"invalidated":
            _LOGGER.warning(
                "%d wrong pairing codes: every outstanding code (%d) was invalidated", MAX_WRONG_TRIES, value,
            )
            audit("pairing.invalidated", codes=int(value), wrong_tries=MAX_WRONG_TRIES)
        raise CodeRefused("unknown" if canonical is not None else "malformed")

    async def restore_code(self, record: PairingCode) -> None:
        """Put back a code whose pairing failed, for the rest of its lifetime."""
        now = self.clock()
        if record.expires_at <= now:
            return
        try:
            await self._issue(
                keys=[CODE_PREFIX + record.digest.hex(), OUTSTANDING_KEY],
                args=[record.digest.hex(), _dump(record), max(1, int((record.expires_at - now) * 1000)),
                      record.expires_at, now, MAX_OUTSTANDING, MAX_TTL * 1000],
            )
        except REDIS_ERRORS as err:
            self._link.mark_down(err)
            _LOGGER.warning("could not put back a pairing code after a failed pairing: Redis is unreachable")

    async def discard_code(self, record: PairingCode) -> None:
        """Withdraw a code whose `pairing.start` failed before its caller saw it."""
        try:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.delete(CODE_PREFIX + record.digest.hex())
                pipe.zrem(OUTSTANDING_KEY, record.digest.hex())
                await pipe.execute()
        except REDIS_ERRORS as err:
            self._link.mark_down(err)

    async def run_reaper(self) -> None:
        """Nothing to reap: Redis forgets expired codes by their TTL."""

    def outstanding(self) -> int:
        """Not known without asking Redis; the codes are counted there."""
        return 0


def _dump(record: PairingCode) -> str:
    """The JSON stored for a code: every field but the digest (the key names it)."""
    fields = dataclasses.asdict(record)
    del fields["digest"]
    return json.dumps(fields, separators=(",", ":"))


def _load(raw: bytes, digest: bytes) -> PairingCode:
    """A code's record back from its JSON."""
    fields = json.loads(raw)
    fields["role"] = Role(fields.get("role", DEFAULT_DEVICE_ROLE))
    return PairingCode(digest=digest, **fields)
