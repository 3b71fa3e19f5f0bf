"""Put the shared pieces together for one process: what `open_runtime` uses in cluster mode."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final

import aiojobs

from osnova_server.cluster.bans import SharedBans
from osnova_server.cluster.events import SharedEventBus
from osnova_server.cluster.instances import InstanceRegistry
from osnova_server.cluster.link import RedisLink
from osnova_server.cluster.pairing import SharedPairingCodes
from osnova_server.cluster.ratelimit import SharedRateLimiter
from osnova_server.cluster.slots import SharedSlots
from osnova_server.config import Config
from osnova_server.events import DEVICES_REVOKED, Event
from osnova_server.security.tokens import TokenAuthority
from osnova_server.services.bans import BanList
from osnova_server.services.pairing import PairingCodes
from osnova_server.store import Store
from osnova_server.store.queries import DEVICES

_LOGGER = logging.getLogger(__name__)

# How long a start waits for Redis before going on degraded.
CONNECT_TIMEOUT: Final = 3.0
INVALIDATE: Final = "invalidate"
# While Redis is down, revocations are read from the shared store this often (seconds).
REVOCATION_POLL: Final = 2.0
# The shared rows are read again this often, in case an announcement was lost.
CACHE_REFRESH: Final = 30.0
# Rows that could not be read again when announced (database down) are tried this often.
STALE_RETRY: Final = 1.0


class Cluster:
    """The shared state of one process: its Redis link and the pieces built on it."""

    def __init__(self, config: Config) -> None:
        self.link = RedisLink(config.cluster.redis_url)
        self.events = SharedEventBus(self.link)
        self.limiter = SharedRateLimiter(
            self.link, config.rate_limit.requests_per_second, config.rate_limit.burst_size,
        )
        self.slots = SharedSlots(self.link)
        self._jobs: list[aiojobs.Job[None]] = []
        self._store: Store | None = None
        self.instances: InstanceRegistry | None = None
        self._tokens: TokenAuthority | None = None

    def pairing(self, local: PairingCodes) -> SharedPairingCodes:
        """The shared pairing book, keyed like `local`."""
        return SharedPairingCodes(self.link, local)

    def share_bans(self, bans: BanList) -> SharedBans:
        """Count `bans`' failures in Redis and share its bans."""
        return SharedBans(self.link, bans)

    def follow_store(self, store: Store, tokens: TokenAuthority) -> None:
        """Keep this process's memory of the shared rows in step with the other processes' changes.

        A change here is announced after its commit and before the call answers or publishes its
        event, so another process reloads the rows before it delivers the event, and a process
        killed right after answering has told the others already. Only for a shared
        store: processes with a SQLite each have nothing to reload.
        """
        link = self.link

        async def announce(table: str, keys: Sequence[str]) -> None:
            await link.publish_now(INVALIDATE, table=table, keys=list(keys))

        store.on_change = announce

        async def invalidate(message: dict[str, Any]) -> None:
            table, keys = message.get("table"), message.get("keys")
            if isinstance(table, str) and isinstance(keys, list):
                try:
                    await store.reload(table, [str(key) for key in keys])
                except store.errors as err:
                    _LOGGER.warning("could not read rows another process changed (will retry): %s", err)

        link.on(INVALIDATE, invalidate)
        # Changes announced while Redis was away were missed: read everything again.
        link.on_up(store.reload_all)
        self._store = store
        self._tokens = tokens

    async def run_revocation_poller(self, every: float = REVOCATION_POLL) -> None:
        """Background job: while Redis is down, read revocations from the shared store.

        Redis is how a revocation reaches the other processes at once; without it each process
        looks in PostgreSQL every `every` seconds, so a revoked device is refused everywhere
        within that time, and its sockets here are closed.
        """
        store, tokens = self._store, self._tokens
        if store is None or tokens is None:
            return
        while True:
            await asyncio.sleep(every)
            if self.link.up:
                continue
            try:
                revoked = await store.revoked_devices()
            except store.errors:
                continue
            fresh = sorted(device_id for device_id in revoked if not tokens.is_revoked(device_id))
            if not fresh:
                continue
            await store.reload(DEVICES, fresh)
            for device_id in fresh:
                tokens.revoke_device(device_id)
                self.events.deliver_here(DEVICES_REVOKED, {"device_id": device_id})
            _LOGGER.info("revocations read from the database while Redis is down: %s", ", ".join(fresh))

    async def run_cache_refresher(self, every: float = CACHE_REFRESH) -> None:
        """Background job: read the shared rows again now and then, in case an announcement was lost.

        An announcement is lost when a process dies between a commit and its publish; this
        bounds how long another process can serve the stale row.
        """
        store = self._store
        if store is None:
            return
        loop = asyncio.get_running_loop()
        next_full = loop.time() + every
        while True:
            await asyncio.sleep(STALE_RETRY)
            try:
                await store.reload_stale()
                if loop.time() >= next_full:
                    await store.reload_all()
                    next_full = loop.time() + every
            except store.errors:
                continue

    def follow_revocations(self, tokens: TokenAuthority) -> None:
        """Refuse here, at once, the tokens of a device revoked on another process."""

        def listener(event: Event) -> None:
            device_id = event.data.get("device_id")
            if event.topic == DEVICES_REVOKED and isinstance(device_id, str):
                tokens.revoke_device(device_id)

        self.events.listen(listener)

    def register_instance(self, name: Callable[[], str], describe: Callable[[], dict[str, Any]]) -> None:
        """List this process among the cluster's instances (`status` shows them all)."""
        self.instances = InstanceRegistry(self.link, name, describe)

    async def start(self, scheduler: aiojobs.Scheduler) -> None:
        """Start the listener, sender and lease renewer; wait a little for Redis to answer."""
        jobs = [self.link.run_listener(), self.link.run_sender(), self.slots.run_renewer()]
        if self._store is not None:
            jobs += [self.run_revocation_poller(), self.run_cache_refresher()]
        if self.instances is not None:
            jobs.append(self.instances.run())
        for job in jobs:
            self._jobs.append(await scheduler.spawn(job))
        await self.link.connect(CONNECT_TIMEOUT)

    async def close(self) -> None:
        """Stop the jobs, leave the list of instances and close the connection."""
        while self._jobs:
            await self._jobs.pop().close()
        if self.instances is not None and self.link.up:
            await self.instances.leave()
        await self.link.close()

    async def status(self) -> str:
        """`ok` when Redis answers and this process is subscribed again, else `degraded`."""
        try:
            answers = await asyncio.wait_for(self.link.ping(), 2.0)
        except TimeoutError:
            answers = False
        return "ok" if answers and self.link.up else "degraded"
