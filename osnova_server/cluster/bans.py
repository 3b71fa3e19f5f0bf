"""Ban counters and bans shared by every process.

Failed authentications are counted per address in Redis, in a sliding window (one script per
failure), so failures spread over several processes earn the ban one process alone would. A ban
is announced on the cluster bus and each process adds it to its in-memory list, so checking a
request stays one dict lookup; the process that made the ban writes it to the (shared) store.
While Redis is down each process counts its own failures, as a single server does.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any, Final

from osnova_server.cluster.link import PREFIX, REDIS_ERRORS, RedisLink
from osnova_server.services.bans import FAILURE_REASON, BanList
from osnova_server.store import BanRecord

_LOGGER = logging.getLogger(__name__)

FAILURES_PREFIX: Final = PREFIX + "ban:failures:"
BAN_KIND: Final = "ban"
LIFT_KIND: Final = "ban.lift"

# KEYS[1]: the address's failures. ARGV: now, window s, max failures, a unique member.
# Returns the failures counted when they reach the maximum (and forgets them), else 0.
FAILURE_SCRIPT: Final = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  return count
end
return 0
"""


class SharedBans:
    """Counts failures in Redis for a BanList and shares its bans and lifts with every process."""

    __slots__ = ("_bans", "_count", "_link", "_pending")

    def __init__(self, link: RedisLink, bans: BanList) -> None:
        self._link = link
        self._bans = bans
        self._count = link.client.register_script(FAILURE_SCRIPT)
        self._pending: set[asyncio.Task[None]] = set()
        link.on(BAN_KIND, self._remote_ban)
        link.on(LIFT_KIND, self._remote_lift)
        bans.sharing = self

    def count(self, address: str) -> bool:
        """Count a failure in Redis (in the background); False while Redis is down (count here)."""
        if not self._link.up:
            return False
        task = asyncio.get_running_loop().create_task(self._count_failure(address))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _count_failure(self, address: str) -> None:
        """The Redis side of `count`: ban the address here if this failure reached the maximum."""
        settings = self._bans.settings
        now = self._bans.clock()
        try:
            reached = await self._count(
                keys=[FAILURES_PREFIX + address],
                args=[now, settings.window, settings.max_failures, f"{now}:{secrets.token_hex(4)}"],
            )
        except REDIS_ERRORS as err:
            self._link.mark_down(err)
            self._bans.count_locally(address)
            return
        if reached and self._bans.banned(address) is None:
            self._bans.ban(address, FAILURE_REASON, int(reached))

    def announce(self, record: BanRecord) -> None:
        """Tell the other processes about a ban made here."""
        self._link.publish(
            BAN_KIND, address=record.address, banned_until=record.banned_until, reason=record.reason,
            created_at=record.created_at,
        )

    def announce_lift(self, address: str) -> None:
        """Tell the other processes a ban was lifted here."""
        self._link.publish(LIFT_KIND, address=address)

    async def _remote_ban(self, message: dict[str, Any]) -> None:
        """A ban another process made."""
        try:
            record = BanRecord(
                str(message["address"]), float(message["banned_until"]), str(message["reason"]),
                str(message["created_at"]),
            )
        except (KeyError, TypeError, ValueError):
            _LOGGER.warning("ignored a malformed ban message")
            return
        self._bans.adopt(record)

    async def _remote_lift(self, message: dict[str, Any]) -> None:
        """A lift another process made."""
        address = message.get("address")
        if isinstance(address, str):
            self._bans.forget(address)
