"""The WebSocket slots of `max_clients` and `max_clients_per_device`, counted across processes.

Each authenticated socket holds a lease in two Redis sorted sets (every socket, and its owner's),
scored by when the lease runs out. One script drops run-out leases, checks both limits and takes
a lease; every process renews its sockets' leases periodically, so the slots of a process that
died (`kill -9`) come free within LEASE seconds instead of leaking. While Redis is down each
process admits on its own pool's count, as a single server does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from osnova_server.cluster.link import PREFIX, REDIS_ERRORS, RedisLink

_LOGGER = logging.getLogger(__name__)

ALL_KEY: Final = PREFIX + "ws:slots"
OWNER_PREFIX: Final = PREFIX + "ws:owner:"
LEASE: Final = 30.0
RENEW_EVERY: Final = 10.0
FULL: Final = "max_clients"
OWNER_FULL: Final = "max_clients_per_device"

# KEYS: every slot, the owner's slots. ARGV: now, lease end, connection id, max, max per owner,
# lease ms. Returns 0 when a slot was taken, 1 when max_clients is reached, 2 for the owner's cap.
CLAIM_SCRIPT: Final = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return 2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 0
"""


class SharedSlots:
    """Leases on the cluster's WebSocket slots, one per authenticated socket."""

    __slots__ = ("_claim", "_held", "_link", "_pending")

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._claim = link.client.register_script(CLAIM_SCRIPT)
        # connection id -> owner, for the sockets of this process holding a lease.
        self._held: dict[str, str] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def claim(self, connection_id: str, owner: str, max_clients: int, per_owner: int) -> str | None:
        """Take a slot for a socket: None if taken, else the name of the limit that refused it."""
        if not self._link.up:
            return None
        now = time.time()
        try:
            refused = await self._claim(
                keys=[ALL_KEY, OWNER_PREFIX + owner],
                args=[now, now + LEASE, connection_id, max_clients, per_owner, int(LEASE * 2000)],
            )
        except REDIS_ERRORS as err:
            self._link.mark_down(err)
            return None
        if refused == 1:
            return FULL
        if refused == 2:
            return OWNER_FULL
        self._held[connection_id] = owner
        return None

    def release(self, connection_id: str) -> None:
        """Give a socket's slot back (in the background)."""
        owner = self._held.pop(connection_id, None)
        if owner is None:
            return
        task = asyncio.get_running_loop().create_task(self._release(connection_id, owner))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _release(self, connection_id: str, owner: str) -> None:
        """The Redis side of `release`; a lease that cannot be dropped runs out by itself."""
        try:
            async with self._link.client.pipeline(transaction=True) as pipe:
                pipe.zrem(ALL_KEY, connection_id)
                pipe.zrem(OWNER_PREFIX + owner, connection_id)
                await pipe.execute()
        except REDIS_ERRORS as err:
            self._link.mark_down(err)

    async def run_renewer(self, every: float = RENEW_EVERY) -> None:
        """Background job: extend the leases of this process's sockets."""
        while True:
            await asyncio.sleep(every)
            if not self._held or not self._link.up:
                continue
            until = time.time() + LEASE
            try:
                async with self._link.client.pipeline(transaction=False) as pipe:
                    for connection_id, owner in list(self._held.items()):
                        pipe.zadd(ALL_KEY, {connection_id: until})
                        pipe.zadd(OWNER_PREFIX + owner, {connection_id: until})
                    await pipe.execute()
            except REDIS_ERRORS as err:
                self._link.mark_down(err)
