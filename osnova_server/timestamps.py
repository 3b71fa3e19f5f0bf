"""RFC 3339 UTC timestamps, the one time format of the public surface."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    """The current time, UTC-aware."""
    return datetime.now(UTC)


def rfc3339(moment: datetime | None = None) -> str:
    """A UTC timestamp to the second, e.g. 2026-11-26T10:00:00Z."""
    return (moment or utc_now()).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_epoch(seconds: float) -> str:
    """An epoch time as an RFC 3339 UTC timestamp."""
    return rfc3339(datetime.fromtimestamp(seconds, UTC))
