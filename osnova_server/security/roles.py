"""Who may call what: the roles of CONTRACT 4, and which events each role is pushed.

Every RPC method declares the least role that may call it (`public`, `member`, `owner` or
`admin`); a caller's role is `admin` for admin tokens and the device's stored role for device
tokens, looked up at the start of every call so that a `devices.setRole` applies to the very
next one. The rules that depend on a call's arguments (a member may list only itself, an owner
may not issue `owner` codes...) live in the methods themselves.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from osnova_server.events import (
    APPS_INSTALLED,
    APPS_UNINSTALLED,
    CONFIG_CHANGED,
    DEVICES_REVOKED,
    Event,
)


class Role(StrEnum):
    """A caller's standing, lowest first; a method admits its declared role and every higher one."""

    PUBLIC = "public"
    MEMBER = "member"
    OWNER = "owner"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        """Position in the order public < member < owner < admin."""
        return _RANKS[self]

    def admits(self, caller: Role) -> bool:
        """Whether a caller of role `caller` may call a method declared with this role."""
        return _RANKS[caller] >= _RANKS[self]

    def callers(self) -> list[str]:
        """The roles that may call a method declared with this role (what `x-roles` publishes).

        `public` in the list means callers without any token.
        """
        return [role.value for role in Role if self.admits(role)]


_RANKS: Final = {Role.PUBLIC: 0, Role.MEMBER: 1, Role.OWNER: 2, Role.ADMIN: 3}
# The roles a paired device may hold; `admin` belongs to admin tokens only.
DEVICE_ROLES: Final = (Role.MEMBER, Role.OWNER)
DEFAULT_DEVICE_ROLE: Final = Role.MEMBER
# The topics every member receives; of `devices.revoked`, only its own.
MEMBER_TOPICS: Final = frozenset({APPS_INSTALLED, APPS_UNINSTALLED, CONFIG_CHANGED})


def receives(role: Role | None, device_id: str | None, event: Event) -> bool:
    """Whether a caller may be pushed `event`; role None is a revoked device (its revocation only).

    Pure, so every transport (and a cluster's fan-out) takes the same decision.
    """
    if role is Role.OWNER or role is Role.ADMIN:
        return True
    if role is Role.MEMBER and event.topic in MEMBER_TOPICS:
        return True
    return event.topic == DEVICES_REVOKED and device_id is not None and event.data.get("device_id") == device_id


__all__ = ["DEFAULT_DEVICE_ROLE", "DEVICE_ROLES", "MEMBER_TOPICS", "Role", "receives"]
