"""Cluster mode is opt-in: a default server loads no Redis or PostgreSQL library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_SECRET

PROGRAM = """
import asyncio, json, sys
from osnova_server import config as config_module
from osnova_server.server import Server

async def main():
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address="127.0.0.1:0", state_dir=sys.argv[1])
    config = config_module.replace(config, "auth", jwt_secret=sys.argv[2])
    server = Server(config)
    await server.start()
    loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("redis", "asyncpg", "sqlalchemy", "psycopg", "psycopg2"))
    await server.stop()
    print(json.dumps(loaded))

asyncio.run(main())
"""


def test_a_default_server_imports_no_redis_or_postgresql_library(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path / "state"), TEST_SECRET],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []
