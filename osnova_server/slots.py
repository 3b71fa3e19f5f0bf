"""The WebSocket slot ledger: who else counts the sockets of `max_clients` besides this pool.

A single server's pool counts its own sockets and needs nobody else (LocalSlots agrees to every
claim). In cluster mode the ledger is Redis (cluster/slots.py), so the limits hold across every
process; the pool still checks its own count first.
"""

from __future__ import annotations

from typing import Protocol


class SlotLedger(Protocol):
    """Grants and takes back the slot of one authenticated WebSocket."""

    async def claim(self, connection_id: str, owner: str, max_clients: int, per_owner: int) -> str | None:
        """Take a slot: None if granted, else the name of the limit that refused it."""

    def release(self, connection_id: str) -> None:
        """Give the socket's slot back."""


class LocalSlots:
    """One process: its pool's own count is the whole truth."""

    __slots__ = ()

    async def claim(self, connection_id: str, owner: str, max_clients: int, per_owner: int) -> str | None:
        """Always granted: the pool has checked its own count."""
        return None

    def release(self, connection_id: str) -> None:
        """Nothing to give back."""
