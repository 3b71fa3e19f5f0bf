"""Two osnova-server processes behind HAProxy: `kill -9` of one loses no install that succeeded."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from osnova_server.security.tokens import Scope, TokenAuthority
from tests import services
from tests.cluster import cluster_config
from tests.conftest import TEST_SECRET, ServerProcess, write_config
from tests.services import free_port
from tests.test_cluster_store import write_manifest

INSTALLS = 50
KILL_AFTER = 15


def _post(url: str, token: str, payload: dict[str, Any]) -> Any:
    """POST one JSON-RPC request; its decoded answer."""
    request = urllib.request.Request(
        f"{url}/rpc", data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_kill_9_of_a_during_50_installs_through_haproxy_loses_no_acknowledged_install(
    tmp_path: Path, redis_url: str, postgres_session: services.PostgresServer,
    server_process: Callable[..., ServerProcess], haproxy: Callable[[list[int]], services.HAProxy],
) -> None:
    pg_url = postgres_session.new_database()
    ports = [free_port(), free_port()]
    processes = []
    for name, port in zip(("a", "b"), ports, strict=True):
        config = cluster_config(
            tmp_path / name, redis_url, pg_url, name,
            server={"bind_address": f"127.0.0.1:{port}"}, ban={"max_failures": 1000},
        )
        processes.append(server_process(write_config(tmp_path / f"{name}.toml", config)))
    for process, port in zip(processes, ports, strict=True):
        process.wait_ready(f"http://127.0.0.1:{port}", timeout=30)
    proxy = haproxy(ports)
    token = TokenAuthority(TEST_SECRET.encode(), 600).issue(Scope.ADMIN, None)[0]
    acknowledged: list[str] = []
    failed = 0
    for i in range(INSTALLS):
        if i == KILL_AFTER:
            processes[0].process.send_signal(signal.SIGKILL)
        app_id = f"ant://app-{i}"
        uri = write_manifest(tmp_path, app_id)
        try:
            answer = _post(proxy.url, token, {"jsonrpc": "2.0", "method": "apps.install",
                                              "params": {"manifest_uri": uri}, "id": i})
        except (urllib.error.URLError, OSError):
            failed += 1
            continue
        if answer.get("result") == app_id:
            acknowledged.append(app_id)
        else:
            failed += 1
    assert processes[0].process.wait(timeout=10) == -signal.SIGKILL
    # Committed in PostgreSQL, whatever any process remembers.
    stored = set(postgres_session.psql("SELECT id FROM apps", pg_url.rsplit("/", 1)[1]).split())
    assert set(acknowledged) <= stored, sorted(set(acknowledged) - stored)
    listed = _post(f"http://127.0.0.1:{ports[1]}", token, {"jsonrpc": "2.0", "method": "apps.list", "id": 1})
    assert set(acknowledged) <= {app["id"] for app in listed["result"]}
    # The balancer moved on to B: nearly every install succeeded.
    assert len(acknowledged) >= INSTALLS - 5, (len(acknowledged), failed)
