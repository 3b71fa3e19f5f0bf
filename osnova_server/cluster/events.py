"""The event bus shared by every process: delivered here at once, and on the others through Redis.

`publish` keeps the in-process bus's promise (synchronous, never waits on a subscriber or on
Redis): it delivers to this process's listeners and queues the event for the cluster channel.
Events from other processes are delivered to the local listeners as they arrive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from osnova_server.cluster.link import RedisLink
from osnova_server.events import EventBus, Listener

_LOGGER = logging.getLogger(__name__)

KIND: Final = "event"


class SharedEventBus:
    """Fan-out of events to listeners in every process."""

    __slots__ = ("_link", "_local")

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._local = EventBus()
        link.on(KIND, self._remote)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Add a listener of this process; return the function that removes it."""
        return self._local.listen(listener)

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Deliver an event to this process's listeners now, and to the other processes'."""
        self._local.publish(topic, data)
        self._link.publish(KIND, topic=topic, data=data)

    def deliver_here(self, topic: str, data: dict[str, Any]) -> None:
        """Deliver an event to this process's listeners only (one this process learned by itself)."""
        self._local.publish(topic, data)

    async def _remote(self, message: dict[str, Any]) -> None:
        """An event another process published."""
        topic, data = message.get("topic"), message.get("data")
        if isinstance(topic, str) and isinstance(data, dict):
            self._local.publish(topic, data)
