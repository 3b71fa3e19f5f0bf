"""Which instances make up the cluster: each process says it is alive, `status` lists them all.

Every process writes a small record (name, address, version, when it started) to one Redis hash
every HEARTBEAT seconds; a record older than STALE seconds belongs to a process that stopped or
died and is not listed (and is dropped by the next reader).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from osnova_server.cluster.link import PREFIX, REDIS_ERRORS, RedisLink

_LOGGER = logging.getLogger(__name__)

INSTANCES_KEY: Final = PREFIX + "instances"
HEARTBEAT: Final = 5.0
STALE: Final = 3 * HEARTBEAT


class InstanceRegistry:
    """This process's entry in the cluster's list of instances, and the reader of that list."""

    __slots__ = ("_describe", "_link", "_name")

    def __init__(self, link: RedisLink, name: Callable[[], str], describe: Callable[[], dict[str, Any]]) -> None:
        self._link = link
        # Read at each beat: the port is known only once the server is bound.
        self._name = name
        self._describe = describe

    async def beat(self) -> None:
        """Write this process's record now."""
        record = {**self._describe(), "name": self._name(), "seen": time.time()}
        try:
            await self._link.client.hset(INSTANCES_KEY, self._name(), json.dumps(record))
        except REDIS_ERRORS as err:
            self._link.mark_down(err)

    async def run(self, every: float = HEARTBEAT) -> None:
        """Background job: beat every `every` seconds while Redis answers."""
        while True:
            if self._link.up:
                await self.beat()
            await asyncio.sleep(every)

    async def leave(self) -> None:
        """Remove this process's record (at shutdown)."""
        try:
            await self._link.client.hdel(INSTANCES_KEY, self._name())
        except REDIS_ERRORS:
            pass

    async def everyone(self) -> list[dict[str, Any]]:
        """The live instances, by name; empty when Redis cannot be read."""
        if not self._link.up:
            return []
        try:
            raw = await self._link.client.hgetall(INSTANCES_KEY)
        except REDIS_ERRORS as err:
            self._link.mark_down(err)
            return []
        now = time.time()
        live, stale = [], []
        for name, value in raw.items():
            try:
                record = json.loads(value)
            except ValueError:
                stale.append(name)
                continue
            if not isinstance(record, dict) or now - float(record.get("seen", 0)) > STALE:
                stale.append(name)
            else:
                live.append(record)
        if stale:
            try:
                await self._link.client.hdel(INSTANCES_KEY, *stale)
            except REDIS_ERRORS:
                pass
        return sorted(live, key=lambda record: str(record.get("name")))
