"""IP bans: an address that fails to authenticate too often is refused on every route for a while.

Failures (bad or refused bearer tokens, wrong pairing codes, bad refresh tokens) are counted per
address in a sliding window: `[ban] max_failures` of them within `[ban] window` seconds earn the
address a ban of `[ban] duration` seconds. Checking a request is one dict lookup, so a banned
flood costs almost nothing. The failure counts live in a bounded LRU dict: a flood of distinct
addresses evicts the least recently failing ones instead of growing memory.

Addresses in `[ban] ignore` (loopback by default: local monitoring, the CLI) are never banned:
their failures are not counted, and a ban on one (stored before it was listed) is not enforced.

Bans take effect in memory at once and are written to the store by a background job (and at
shutdown), so they survive restarts without a disk write on the request path.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from osnova_server.config import BanSection
from osnova_server.logs import audit
from osnova_server.store import BanRecord, Store
from osnova_server.timestamps import from_epoch

if TYPE_CHECKING:
    from osnova_server.cluster.bans import SharedBans

_LOGGER = logging.getLogger(__name__)

# Addresses whose failures are being counted at once; the least recently failing go first.
MAX_TRACKED_ADDRESSES: Final = 10_000
# Bans held in memory at once; beyond it the oldest ban is forgotten (the store keeps it).
MAX_BANS: Final = 100_000
# How often the background job forgets expired bans in the store (new bans are written at once).
REAP_INTERVAL: Final = 60.0
FAILURE_REASON: Final = "too many failed authentications"


class BanList:
    """The banned addresses and the failure counts that lead to bans."""

    __slots__ = (
        "_bans", "_duration", "_enabled", "_failures", "_ignore", "_lock", "_max_failures",
        "_max_tracked", "_settings", "_store", "_unsaved", "_wakeup", "_window", "clock", "imposed", "sharing",
    )

    def __init__(
        self,
        store: Store,
        settings: BanSection,
        clock: Callable[[], float] = time.time,
        max_tracked: int = MAX_TRACKED_ADDRESSES,
    ) -> None:
        self._store = store
        # Public so tests can move time; wall-clock because bans outlive the process.
        self.clock = clock
        self._max_tracked = max_tracked
        # Bans imposed since start, for /metrics.
        self.imposed = 0
        self._bans: dict[str, BanRecord] = {}
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._unsaved: dict[str, BanRecord] = {}
        self._wakeup = asyncio.Event()
        # Store writes of bans and lifts must not interleave, or a lifted ban could be rewritten.
        self._lock = asyncio.Lock()
        self._enabled = True
        self._max_failures = 1
        self._window = 1.0
        self._duration = 1.0
        self._ignore: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
        self._settings = settings
        # Cluster mode counts failures in Redis and shares bans with the other processes.
        self.sharing: SharedBans | None = None
        self.reconfigure(settings)

    def reconfigure(self, settings: BanSection) -> None:
        """Apply new [ban] settings (SIGHUP); a new `max_failures` starts the counts over."""
        if settings.max_failures != self._max_failures:
            self._failures.clear()  # each address's deque is sized by max_failures
        self._settings = settings
        self._enabled = settings.enabled
        self._max_failures = settings.max_failures
        self._window = float(settings.window)
        self._duration = float(settings.duration)
        self._ignore = tuple(ipaddress.ip_network(network, strict=False) for network in settings.ignore)

    def ignored(self, address: str) -> bool:
        """Whether `address` is in `[ban] ignore`, so never banned."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)
        return any((mapped or ip) in network for network in self._ignore)

    @property
    def settings(self) -> BanSection:
        """The [ban] settings in force."""
        return self._settings

    async def load(self) -> None:
        """Read the bans still running from the store (at start)."""
        now = self.clock()
        for record in await self._store.bans():
            if record.banned_until > now:
                self._bans[record.address] = record

    def banned(self, address: str) -> BanRecord | None:
        """The ban on `address` if one is running; the hot path of every request."""
        record = self._bans.get(address)
        if record is None or not self._enabled or self.ignored(address):
            return None
        if record.banned_until <= self.clock():
            del self._bans[address]
            return None
        return record

    def record_failure(self, address: str) -> BanRecord | None:
        """Count a failed authentication from `address`; return the ban if this one earned it."""
        if not self._enabled or address in self._bans or self.ignored(address):
            return None
        if self.sharing is not None and self.sharing.count(address):
            return None  # counted in Redis; the ban, if earned, follows from there
        return self.count_locally(address)

    def count_locally(self, address: str) -> BanRecord | None:
        """Count a failure in this process's own window (a single server, or Redis down)."""
        if not self._enabled or address in self._bans:
            return None
        now = self.clock()
        failures = self._failures.get(address)
        if failures is None:
            failures = self._failures[address] = deque(maxlen=self._max_failures)
            if len(self._failures) > self._max_tracked:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(address)
        failures.append(now)
        if len(failures) < self._max_failures or failures[0] <= now - self._window:
            return None
        del self._failures[address]
        return self.ban(address, FAILURE_REASON, len(failures))

    def ban(self, address: str, reason: str, failures: int = 0) -> BanRecord:
        """Ban `address` for the configured duration from now."""
        now = self.clock()
        record = BanRecord(address, now + self._duration, reason, from_epoch(now))
        if len(self._bans) >= MAX_BANS:
            del self._bans[next(iter(self._bans))]
        self._bans[address] = record
        self._unsaved[address] = record
        self.imposed += 1
        self._wakeup.set()
        if self.sharing is not None:
            self.sharing.announce(record)
        _LOGGER.warning("banned %s until %s: %s", address, from_epoch(record.banned_until), reason)
        audit("ban", address=address, reason=reason, failures=failures, until=from_epoch(record.banned_until))
        return record

    def adopt(self, record: BanRecord) -> None:
        """Hold a ban another process made (it stores it); the request path sees it at once."""
        if len(self._bans) >= MAX_BANS:
            del self._bans[next(iter(self._bans))]
        self._bans[record.address] = record
        self._failures.pop(record.address, None)

    def forget(self, address: str) -> None:
        """Drop a ban another process lifted."""
        self._bans.pop(address, None)
        self._unsaved.pop(address, None)
        self._failures.pop(address, None)

    def active(self) -> list[BanRecord]:
        """The bans running now, by address."""
        now = self.clock()
        return sorted((r for r in self._bans.values() if r.banned_until > now), key=lambda r: r.address)

    def failures(self, address: str) -> int:
        """Failures counted for `address` within the current window."""
        window = self._failures.get(address)
        if window is None:
            return 0
        horizon = self.clock() - self._window
        return sum(1 for moment in window if moment > horizon)

    def tracked(self) -> int:
        """How many addresses have failures being counted (bounded by `max_tracked`)."""
        return len(self._failures)

    async def lift(self, address: str) -> bool:
        """End the ban on `address` and forget its failures; whether it was banned."""
        async with self._lock:
            running = self._bans.pop(address, None)
            self._unsaved.pop(address, None)
            self._failures.pop(address, None)
            stored = await self._store.delete_ban(address)
        now = self.clock()
        was_banned = (running is not None and running.banned_until > now) or stored
        if self.sharing is not None:
            self.sharing.announce_lift(address)
        if was_banned:
            audit("ban.lift", address=address)
        return was_banned

    async def flush(self) -> None:
        """Write the bans made since the last flush; keep any that fail for the next one."""
        async with self._lock:
            pending, self._unsaved = self._unsaved, {}
            for address, record in pending.items():
                try:
                    await self._store.put_ban(record)
                except self._store.errors as err:
                    _LOGGER.warning("could not store the ban of %s (will retry): %s", address, err)
                    self._unsaved.setdefault(address, record)

    async def run(self, reap_interval: float = REAP_INTERVAL) -> None:
        """Background job: store new bans as they come, forget expired ones now and then."""
        loop = asyncio.get_running_loop()
        next_reap = loop.time() + reap_interval
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, next_reap - loop.time()))
            except TimeoutError:
                pass
            self._wakeup.clear()
            await self.flush()
            if loop.time() >= next_reap:
                next_reap = loop.time() + reap_interval
                await self._reap()

    async def _reap(self) -> None:
        """Drop expired bans from memory and from the store."""
        now = self.clock()
        for address in [a for a, r in self._bans.items() if r.banned_until <= now]:
            del self._bans[address]
        try:
            await self._store.delete_expired_bans(now)
        except self._store.errors as err:
            _LOGGER.warning("could not forget expired bans: %s", err)


def check_address(address: str) -> str:
    """The canonical form of an IP address, or ValueError saying what an address looks like."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        raise ValueError(f"{address!r} is not an IP address such as 192.168.1.20 or fe80::1") from None
