"""Put the shared pieces together for one process: what `open_runtime` uses in cluster mode."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

import aiojobs

from osnova_server.cluster.bans import SharedBans
from osnova_server.cluster.events import SharedEventBus
from osnova_server.cluster.link import RedisLink
from osnova_server.cluster.pairing import SharedPairingCodes
from osnova_server.cluster.ratelimit import SharedRateLimiter
from osnova_server.cluster.slots import SharedSlots
from osnova_server.config import Config
from osnova_server.events import DEVICES_REVOKED, Event
from osnova_server.security.tokens import TokenAuthority
from osnova_server.services.bans import BanList
from osnova_server.services.pairing import PairingCodes

_LOGGER = logging.getLogger(__name__)

# How long a start waits for Redis before going on degraded.
CONNECT_TIMEOUT: Final = 3.0


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

    def pairing(self, local: PairingCodes) -> SharedPairingCodes:
        """The shared pairing book, keyed like `local`."""
        return SharedPairingCodes(self.link, local)

    def share_bans(self, bans: BanList) -> SharedBans:
        """Count `bans`' failures in Redis and share its bans."""
        return SharedBans(self.link, bans)

    def follow_revocations(self, tokens: TokenAuthority) -> None:
        """Refuse here, at once, the tokens of a device revoked on another process."""

        def listener(event: Event) -> None:
            device_id = event.data.get("device_id")
            if event.topic == DEVICES_REVOKED and isinstance(device_id, str):
                tokens.revoke_device(device_id)

        self.events.listen(listener)

    async def start(self, scheduler: aiojobs.Scheduler) -> None:
        """Start the listener, sender and lease renewer; wait a little for Redis to answer."""
        for job in (self.link.run_listener(), self.link.run_sender(), self.slots.run_renewer()):
            self._jobs.append(await scheduler.spawn(job))
        await self.link.connect(CONNECT_TIMEOUT)

    async def close(self) -> None:
        """Stop the jobs and close the connection."""
        while self._jobs:
            await self._jobs.pop().close()
        await self.link.close()

    async def status(self) -> str:
        """`ok` when Redis answers and this process is subscribed again, else `degraded`."""
        try:
            answers = await asyncio.wait_for(self.link.ping(), 2.0)
        except TimeoutError:
            answers = False
        return "ok" if answers and self.link.up else "degraded"
