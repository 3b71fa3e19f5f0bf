"""The installed Osnova apps: install from a checked manifest, list, uninstall, and announce each.

An install is fetch, then validate, then one committed write: nothing is stored unless the
manifest passed the schema, so a refused install leaves `apps.list` exactly as it was. The app's
id is the manifest's `id`; installing it again replaces the record (an upgrade), and
`installed_at` then records the upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from osnova_server.config import AppsSection
from osnova_server.events import APPS_INSTALLED, APPS_UNINSTALLED, Bus
from osnova_server.services.breaker import HostBreakers
from osnova_server.services.fetch_slots import FetchSlots
from osnova_server.services.manifest import FetchPolicy, fetch_manifest, parse_manifest
from osnova_server.store import AppRecord, Store
from osnova_server.timestamps import rfc3339
from osnova_server.tracing import Tracing

_LOGGER = logging.getLogger(__name__)


def without_user_info(uri: str) -> str:
    """`uri` with any `user:password@` removed, since every paired device can read it back."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class AppCatalog:
    """The apps this server keeps, over the store, with fetch rules from the `[apps]` section."""

    __slots__ = ("_events", "_settings", "_store", "_tracing", "breakers", "fetch_slots", "fetch_ssl_context")

    def __init__(
        self,
        store: Store,
        events: Bus,
        settings: AppsSection,
        fetch_slots: FetchSlots,
        fetch_ssl_context: ssl.SSLContext | None = None,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self._store = store
        self._events = events
        self._settings = settings
        self.fetch_slots = fetch_slots
        # None verifies https:// manifests against the system's trusted CAs; tests set a
        # context trusting their own CA here rather than turning verification off.
        self.fetch_ssl_context = fetch_ssl_context
        # Shared by every install, so a host that keeps failing is refused at once.
        self.breakers = HostBreakers()
        self._tracing = tracing

    def policy(self, allow_file: bool) -> FetchPolicy:
        """The fetch rules for one install; `file://` only when the caller is an admin."""
        return FetchPolicy(
            allow_file=allow_file,
            allow_http=self._settings.allow_http,
            ant_gateway=self._settings.ant_gateway,
            timeout=self._settings.fetch_timeout,
            ssl_context=self.fetch_ssl_context,
            breakers=self.breakers,
            tracing=self._tracing,
        )

    def installed(self) -> list[dict[str, Any]]:
        """Every installed app in the `apps.list` shape, oldest install first."""
        return self._store.app_listing()

    async def install(self, manifest_uri: str, allow_file: bool, principal: str = "admin") -> str:
        """Fetch and validate the manifest at `manifest_uri`, store the app, return its id.

        The fetch holds one of `principal`'s fetch slots (-32029 when none is free).
        """
        with self.fetch_slots.hold(principal):
            raw = await fetch_manifest(manifest_uri, self.policy(allow_file))
        # Schema validation of up to 1 MiB is CPU work: keep it off the event loop.
        manifest = await asyncio.to_thread(parse_manifest, raw)
        previous = {app.id: app.version for app in self._store.apps()}.get(manifest.id)
        await self._store.put_app(AppRecord(
            id=manifest.id,
            name=manifest.name,
            version=manifest.version,
            description=manifest.description,
            icon_uri=manifest.icon_uri,
            manifest_uri=without_user_info(manifest_uri.strip()),
            manifest=manifest.raw,
            installed_at=rfc3339(),
        ))
        if previous is None:
            _LOGGER.info("installed app %s version %s", manifest.id, manifest.version)
        else:
            _LOGGER.info("upgraded app %s from version %s to %s", manifest.id, previous, manifest.version)
        self._events.publish(
            APPS_INSTALLED, {"id": manifest.id, "name": manifest.name, "version": manifest.version}
        )
        return manifest.id

    async def uninstall(self, app_id: str) -> bool:
        """Remove the app; False (and no event) when it was not installed."""
        removed = await self._store.delete_app(app_id)
        if removed:
            _LOGGER.info("uninstalled app %s", app_id)
            self._events.publish(APPS_UNINSTALLED, {"id": app_id})
        return removed
