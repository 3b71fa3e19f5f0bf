"""The rows the store hands out: apps, devices, refresh tokens and bans, as frozen records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from osnova_server.security.roles import DEFAULT_DEVICE_ROLE, Role


@dataclass(frozen=True, slots=True)
class AppRecord:
    """An installed app as stored."""

    id: str
    name: str
    version: str
    description: str
    icon_uri: str
    manifest_uri: str
    manifest: dict[str, Any]
    installed_at: str

    def to_json(self) -> dict[str, Any]:
        """The `apps.list` shape of CONTRACT 4."""
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "description": self.description,
            "icon_uri": self.icon_uri,
            "manifest_uri": self.manifest_uri,
            "installed_at": self.installed_at,
            "components": self.manifest.get("components", []),
        }


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A paired device as stored."""

    device_id: str
    name: str
    paired_at: str
    last_seen: str | None
    revoked: bool
    revoked_at: str | None = None
    role: Role = DEFAULT_DEVICE_ROLE
    # "admin", the id of the device that issued the code, or None (paired before it was recorded).
    paired_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `devices.list` shape of CONTRACT 4."""
        return {
            "device_id": self.device_id,
            "name": self.name,
            "role": self.role.value,
            "paired_at": self.paired_at,
            "paired_by": self.paired_by,
            "last_seen": self.last_seen,
            "revoked": self.revoked,
        }


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    """A refresh token's row: its argon2 hash, owner, and whether it was already rotated."""

    lookup: str
    device_id: str
    hash: str
    rotated: bool


@dataclass(frozen=True, slots=True)
class BanRecord:
    """An address refused until `banned_until` (epoch seconds)."""

    address: str
    banned_until: float
    reason: str
    created_at: str
