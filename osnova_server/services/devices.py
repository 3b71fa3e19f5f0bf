"""Paired devices: pairing them, rotating their refresh tokens, revoking them, noting when seen.

A device holds a short-lived access token (a JWT) and one live refresh token. Refresh tokens are
rotated on every use: the old one is marked rotated in the same transaction that stores the new
one, so exactly one of two racing refreshes wins. Presenting a rotated token again means two
parties hold the device's secrets, one of them a thief; the device is revoked at once (OAuth 2.0
Security BCP, refresh token rotation with reuse detection) and must pair again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from osnova_server.errors import Forbidden, NotFound, Unauthorized
from osnova_server.events import (
    DEVICES_PAIRED,
    DEVICES_REMOVED,
    DEVICES_REVOKED,
    DEVICES_ROLE_CHANGED,
    Bus,
)
from osnova_server.logs import audit
from osnova_server.security.credentials import (
    hash_lookup_key,
    hash_secret,
    new_refresh_token,
    verify_secret,
)
from osnova_server.security.roles import Role
from osnova_server.security.tokens import Scope, TokenAuthority
from osnova_server.services.pairing import CodeRefused, PairingBook, PairingCode, check_name
from osnova_server.store import DeviceRecord, RefreshRecord, Store
from osnova_server.timestamps import from_epoch

_LOGGER = logging.getLogger(__name__)

TOKEN_TYPE: Final = "Bearer"
LAST_SEEN_FLUSH_INTERVAL: Final = 30.0
# Issued refresh tokens are 43 characters; anything much longer is refused without hashing it.
MAX_REFRESH_TOKEN_CHARS: Final = 256
REFRESH_REFUSED: Final = (
    "the refresh token is not valid: it may be mistyped, already used, or its device revoked; "
    "pair the device again with `osnova-server pair`"
)


CALLER_REVOKED: Final = (
    "this device was revoked, so none of its calls run any more; pair it again with `osnova-server pair`"
)


class CallerRevoked(Unauthorized):
    """A call of a device that was revoked (or removed) after its request arrived; nothing ran."""

    def __init__(self) -> None:
        super().__init__(CALLER_REVOKED)


class RefreshRefused(Unauthorized):
    """A refused refresh token; `reason` goes to the audit log only, the message never varies."""

    def __init__(self, reason: str) -> None:
        super().__init__(REFRESH_REFUSED)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Grant:
    """The tokens handed to a device by `pairing.complete` and `auth.refresh`."""

    device_id: str
    access_token: str
    refresh_token: str
    expires_in: int

    def to_json(self) -> dict[str, Any]:
        """The CONTRACT 4 result shape."""
        return {
            "device_id": self.device_id,
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": TOKEN_TYPE,
            "expires_in": self.expires_in,
        }


class DeviceRegistry:
    """Every paired device: registration, refresh, revocation and last-seen bookkeeping."""

    __slots__ = ("_codes", "_events", "_flushed", "_last_seen", "_store", "_tokens", "clock")

    def __init__(
        self,
        store: Store,
        tokens: TokenAuthority,
        events: Bus,
        codes: PairingBook,
        last_seen: dict[str, float],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._events = events
        self._codes = codes
        # Shared with the runtime, which writes to it on every authenticated request.
        self._last_seen = last_seen
        self._flushed: dict[str, float] = {}
        self.clock = clock

    async def pair(self, code: str, device_name: str | None, remote: str) -> Grant:
        """Redeem a pairing code and register a new device with its first tokens."""
        # Checked before the code is spent, so a bad name changes nothing.
        device_name = check_name(device_name, "device_name")
        try:
            record = await self._codes.redeem_code(code)
        except CodeRefused as err:
            audit("pairing.complete", outcome="refused", reason=err.reason, remote=remote)
            raise
        try:
            device, grant = await self._register(record, device_name)
        except BaseException:
            # Only a pairing that succeeds uses the code up: a failure here leaves it working.
            await self._codes.restore_code(record)
            raise
        audit(
            "pairing.complete", outcome="ok", device_id=device.device_id, name=device.name, role=device.role.value,
            paired_by=device.paired_by, remote=remote,
        )
        self._events.publish(
            DEVICES_PAIRED, {"device_id": device.device_id, "name": device.name, "role": device.role.value},
        )
        return grant

    async def _register(self, record: PairingCode, device_name: str | None) -> tuple[DeviceRecord, Grant]:
        """Store a new device with the role its code grants, and mint its first tokens."""
        device_id = str(uuid.uuid4())
        refresh = new_refresh_token()
        now = from_epoch(self.clock())
        device = DeviceRecord(
            device_id, record.name or device_name or f"device {device_id[:8]}", now, now, False,
            role=record.role, paired_by=record.issued_by,
        )
        stored = RefreshRecord(hash_lookup_key(refresh), device_id, await hash_secret(refresh), False)
        access, lifetime = self._tokens.issue(Scope.DEVICE, device_id)
        # The last step, one transaction: once it commits the pairing has succeeded.
        await self._store.add_device(device, stored, now)
        return device, Grant(device_id, access, refresh, lifetime)

    async def refresh(self, refresh_token: str, remote: str) -> Grant:
        """Trade a refresh token for new tokens; a rotated one presented again revokes its device."""
        try:
            return await self._refresh(refresh_token, remote)
        except RefreshRefused as err:
            audit("auth.refresh", outcome="refused", reason=err.reason, remote=remote)
            raise

    async def _refresh(self, refresh_token: str, remote: str) -> Grant:
        """The body of `refresh`; every refusal is a RefreshRefused saying why, for the audit log."""
        if len(refresh_token) > MAX_REFRESH_TOKEN_CHARS:
            raise RefreshRefused("malformed")
        lookup = hash_lookup_key(refresh_token)
        stored = await self._store.refresh_token(lookup)
        if stored is None:
            raise RefreshRefused("unknown")
        if not await verify_secret(stored.hash, refresh_token):
            raise RefreshRefused("hash mismatch")
        device = await self._store.find_device(stored.device_id)
        if device is None or device.revoked:
            raise RefreshRefused("device revoked")
        if stored.rotated:
            await self._revoke_for_reuse(device.device_id, remote)
            raise RefreshRefused("reused")
        fresh = new_refresh_token()
        new = RefreshRecord(hash_lookup_key(fresh), device.device_id, await hash_secret(fresh), False)
        access, lifetime = self._tokens.issue(Scope.DEVICE, device.device_id)
        # The last step, and one transaction: the old token is used up only by the success it buys.
        if not await self._store.rotate_refresh_token(lookup, new, from_epoch(self.clock())):
            # A concurrent refresh with the same token won the race: the token was used twice.
            await self._revoke_for_reuse(device.device_id, remote)
            raise RefreshRefused("reused")
        audit("auth.refresh", outcome="ok", device_id=device.device_id, remote=remote)
        return Grant(device.device_id, access, fresh, lifetime)

    async def _revoke_for_reuse(self, device_id: str, remote: str) -> None:
        """Revoke a device whose rotated refresh token came back: someone copied it."""
        _LOGGER.warning("a rotated refresh token of device %s was presented again; revoking the device", device_id)
        await self.revoke(device_id, by="refresh token reuse", remote=remote)

    def list(self, only: str | None = None) -> list[dict[str, Any]]:
        """Every device paired and not removed (revoked ones too) in the `devices.list` shape; or just `only`."""
        return [device.to_json() for device in self._store.devices() if only is None or device.device_id == only]

    def role_of(self, device_id: str) -> Role:
        """The device's role right now; CallerRevoked once it is revoked or removed."""
        device = self._store.device(device_id)
        if device is None or device.revoked or self._tokens.is_revoked(device_id):
            raise CallerRevoked()
        return device.role

    async def _known(self, device_id: str) -> DeviceRecord:
        """The device's record, or NotFound naming the id (on a shared store, looked up if not in memory)."""
        device = await self._store.find_device(device_id)
        if device is None:
            raise NotFound(f"no paired device has the id {device_id!r}; see `osnova-server devices list`")
        return device

    async def set_role(self, device_id: str, role: Role, by: str, remote: str) -> None:
        """Give a device another role; it applies from the device's next call."""
        device = await self._known(device_id)
        if device.role is role:
            return
        await self._store.set_device_role(device_id, role)
        self._events.publish(DEVICES_ROLE_CHANGED, {"device_id": device_id, "role": role.value})
        audit("devices.setRole", outcome="ok", device_id=device_id, role=role.value, by=by, remote=remote)

    async def remove(self, device_id: str, by: str, remote: str) -> None:
        """Forget a revoked device; a live one is refused (revoke it first)."""
        device = await self._known(device_id)
        if not device.revoked:
            raise Forbidden(
                f"device {device_id} is not revoked; revoke it first (devices.revoke), then remove it"
            )
        await self._store.delete_device(device_id)
        self._last_seen.pop(device_id, None)
        self._flushed.pop(device_id, None)
        self._events.publish(DEVICES_REMOVED, {"device_id": device_id})
        audit("devices.remove", outcome="ok", device_id=device_id, by=by, remote=remote)

    async def revoke(self, device_id: str, by: str, remote: str) -> None:
        """Refuse the device's tokens from now on and tell its open sockets to close."""
        await self._known(device_id)
        # Memory first: from this line on no request of the device is served, even while the
        # store commits (if the commit fails, the device stays refused until a restart).
        self._tokens.revoke_device(device_id)
        await self._store.revoke_device(device_id, from_epoch(self.clock()))
        self._events.publish(DEVICES_REVOKED, {"device_id": device_id})
        audit("devices.revoke", outcome="ok", device_id=device_id, by=by, remote=remote)

    async def flush_last_seen(self) -> None:
        """Write the last-seen times that changed since the previous flush."""
        changed = {
            device_id: seen for device_id, seen in list(self._last_seen.items())
            if self._flushed.get(device_id) != seen
        }
        if not changed:
            return
        try:
            await self._store.touch_devices({device_id: from_epoch(seen) for device_id, seen in changed.items()})
        except self._store.errors as err:
            _LOGGER.warning("could not record when devices were last seen (will retry): %s", err)
            return
        self._flushed.update(changed)

    async def run_last_seen_flusher(self, interval: float = LAST_SEEN_FLUSH_INTERVAL) -> None:
        """Background job: flush last-seen times every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            await self.flush_last_seen()
