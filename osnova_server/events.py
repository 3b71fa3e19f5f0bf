"""In-process publish/subscribe: services announce changes, WebSocket connections deliver them.

Publishing is synchronous and never waits on a subscriber: each listener is a plain callable that
must only enqueue (a WebSocket connection puts the event on its bounded outgoing queue), so one
slow phone cannot delay an install answered to another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

_LOGGER = logging.getLogger(__name__)

APPS_INSTALLED: Final = "apps.installed"
APPS_UNINSTALLED: Final = "apps.uninstalled"
DEVICES_REVOKED: Final = "devices.revoked"
CONFIG_CHANGED: Final = "config.changed"
# For the admin page: a device appeared, changed role, or was forgotten.
DEVICES_PAIRED: Final = "devices.paired"
DEVICES_ROLE_CHANGED: Final = "devices.roleChanged"
DEVICES_REMOVED: Final = "devices.removed"
TOPICS: Final = frozenset({
    APPS_INSTALLED, APPS_UNINSTALLED, DEVICES_REVOKED, CONFIG_CHANGED,
    DEVICES_PAIRED, DEVICES_ROLE_CHANGED, DEVICES_REMOVED,
})


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened: its topic and the data naming its subject."""

    topic: str
    data: dict[str, Any]

    def notification(self) -> dict[str, Any]:
        """The JSON-RPC notification a subscribed WebSocket receives."""
        return {"jsonrpc": "2.0", "method": "event", "params": {"topic": self.topic, "data": self.data}}


Listener = Callable[[Event], None]


class Bus(Protocol):
    """Where events are published: this module's EventBus, or cluster mode's shared one."""

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; return the function that removes it."""

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Deliver an event to every listener, never waiting on one."""


class EventBus:
    """Fan-out of events to listeners; a failing listener is logged and skipped."""

    __slots__ = ("_listeners",)

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Add a listener; return the function that removes it."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def publish(self, topic: str, data: dict[str, Any]) -> None:
        """Deliver an event to every listener now."""
        event = Event(topic, data)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _LOGGER.exception("event listener failed on %s", topic)
