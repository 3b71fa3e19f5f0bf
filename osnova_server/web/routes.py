"""GET /health and GET /status: unauthenticated answers for curl and load balancers."""

from __future__ import annotations

from aiohttp import web

from osnova_server import __version__
from osnova_server.services.status import check_services, overall
from osnova_server.timestamps import rfc3339
from osnova_server.web.keys import STATE_KEY


async def health_view(request: web.Request) -> web.Response:
    """Say the process is up and serving."""
    return web.json_response({"status": "healthy", "timestamp": rfc3339()})


async def status_view(request: web.Request) -> web.Response:
    """Report version, uptime and how many clients are connected."""
    runtime = request.app[STATE_KEY].runtime
    answer = {
        "version": __version__,
        "uptime": round(runtime.uptime, 3),
        "connections": runtime.connection_count(),
        "max_connections": runtime.config.server.max_clients,
        "active_sessions": runtime.active_sessions(),
        "mode": "server",
    }
    if runtime.clustered:
        # Cluster mode (CONTRACT 8): which process answered, and how its engines are doing.
        services = await check_services(runtime)
        answer.update(instance=runtime.instance_name, status=overall(services), services=services)
    return web.json_response(answer)


def setup_routes(app: web.Application) -> None:
    """Add the plain HTTP routes."""
    app.router.add_get("/health", health_view, allow_head=True)
    app.router.add_get("/status", status_view, allow_head=True)
