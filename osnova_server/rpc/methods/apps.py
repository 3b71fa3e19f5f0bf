"""apps.list, apps.install, apps.uninstall: the Osnova apps this server keeps."""

from __future__ import annotations

from typing import Any

from osnova_server.errors import (
    FetchFailed,
    Forbidden,
    ManifestInvalid,
    UnsupportedScheme,
)
from osnova_server.rpc.context import Context
from osnova_server.rpc.methods import REGISTRY as rpc


@rpc.method("apps.list")
async def apps_list(ctx: Context) -> list[dict[str, Any]]:
    """List the installed apps, oldest install first."""
    return ctx.runtime.apps.installed()


@rpc.method("apps.install", errors=(Forbidden, ManifestInvalid, UnsupportedScheme, FetchFailed))
async def apps_install(ctx: Context, manifest_uri: str) -> str:
    """Install (or upgrade) the app whose manifest is at `manifest_uri`; return its id.

    `https://` manifests are fetched for any token, `http://` only with `[apps] allow_http`,
    `ant://` through `[apps] ant_gateway`, and `file://` for admin tokens only.
    """
    return await ctx.runtime.apps.install(manifest_uri, allow_file=ctx.is_admin)


@rpc.method("apps.uninstall")
async def apps_uninstall(ctx: Context, app_id: str) -> bool:
    """Remove an installed app; false if it was not installed."""
    return await ctx.runtime.apps.uninstall(app_id)
