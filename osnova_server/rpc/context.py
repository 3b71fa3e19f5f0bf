"""What a method knows about the call it is serving: who, from where, over which transport."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from osnova_server.security.roles import Role

if TYPE_CHECKING:
    from osnova_server.runtime import Runtime
    from osnova_server.security.tokens import Claims


class Subscriber(Protocol):
    """A connection that can receive pushed events (only WebSockets are)."""

    def subscribe(self, topics: list[str]) -> None:
        """Start delivering events of these topics."""

    def unsubscribe(self, topics: list[str]) -> None:
        """Stop delivering events of these topics."""


class Context:
    """Per-call facts handed to every method as its first argument."""

    __slots__ = ("runtime", "claims", "remote", "transport", "connection", "_role_of")

    def __init__(
        self,
        runtime: Runtime,
        claims: Claims | None,
        remote: str,
        transport: str,
        connection: Subscriber | None = None,
        role_of: Callable[[str], Role] | None = None,
    ) -> None:
        self.runtime = runtime
        self.claims = claims
        self.remote = remote
        self.transport = transport
        self.connection = connection
        # How a device id becomes its current role: the runtime's devices, unless given.
        self._role_of = role_of if role_of is not None else runtime.devices.role_of

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds an admin token."""
        return self.claims is not None and self.claims.scope == "admin"

    @property
    def role(self) -> Role:
        """The caller's role now (looked up on every use); Unauthorized if its device was revoked."""
        claims = self.claims
        if claims is None:
            return Role.PUBLIC
        if claims.device_id is None:
            return Role.ADMIN
        return self._role_of(claims.device_id)

    @property
    def device_id(self) -> str | None:
        """The calling device, or None for admin and anonymous callers."""
        return self.claims.device_id if self.claims is not None else None

    @property
    def principal(self) -> str:
        """A short name of the caller for audit lines: device id, `admin` or `anonymous`."""
        if self.claims is None:
            return "anonymous"
        return self.claims.device_id or "admin"

    def describe(self) -> dict[str, Any]:
        """The caller as audit fields."""
        return {"principal": self.principal, "remote": self.remote, "transport": self.transport}
