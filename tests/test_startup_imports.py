"""Start-up stays light: which modules `osnova-server version`, the server's import and its start may not load.

Not a timed test: each case lists modules by name, so an import that comes back at start-up
fails here with its name instead of as a slower number in bench/startup.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from osnova_server import cli
from osnova_server import config as config_module
from tests.conftest import make_config

# What `version` (and the parser of one command) must not import: the event loop, TLS, the
# server, the crypto and schema libraries, and the other command groups.
NOT_FOR_VERSION: Final = (
    "asyncio", "ssl", "aiohttp", "cryptography", "jwt", "jsonschema", "shtab", "osnova_server.config",
    "osnova_server.server", "osnova_server.services.admin_sessions", "osnova_server.cli.admin",
    "osnova_server.cli.migrate", "osnova_server.cli.status", "osnova_server.cli.devices",
)
# What importing the server must not import: optional features load when configured or used,
# jsonschema when the first manifest is checked, pyjwt when the first token is signed or checked,
# cryptography's X.509 part when a certificate is read (TLS on) or made, ifaddr when the
# advertising job (after ready) looks for interfaces.
NOT_FOR_SERVER: Final = (
    "qrcode", "zeroconf", "redis", "asyncpg", "opentelemetry", "shtab", "pyinstrument", "jsonschema",
    "jwt", "cryptography.x509", "ifaddr",
    "osnova_server.cluster", "osnova_server.tracing_sdk", "osnova_server.cli.admin", "osnova_server.cli.status",
)
# What a server with TLS off has not imported by the time it is ready (bound, runtime open): the
# same, since none of it is on the way to ready.
NOT_FOR_READY: Final = NOT_FOR_SERVER


def _loaded_after(code: str) -> set[str]:
    """The names in sys.modules after a fresh interpreter runs `code`."""
    script = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_version_imports_only_its_own_command() -> None:
    loaded = _loaded_after("from osnova_server.cli import main\nsys.argv = ['osnova-server', 'version']\nmain()")
    assert "osnova_server.cli.serve" in loaded
    assert sorted(loaded.intersection(NOT_FOR_VERSION)) == []


def test_importing_the_server_leaves_optional_features_unloaded() -> None:
    loaded = _loaded_after("sys.modules['uvloop'] = None\nimport osnova_server.server")
    assert "aiohttp" in loaded
    assert sorted(loaded.intersection(NOT_FOR_SERVER)) == []


def test_a_started_server_has_loaded_nothing_it_did_not_need(tmp_path: Path) -> None:
    config = make_config(tmp_path / "state", discovery={"mdns": "auto"})
    config_path = tmp_path / "server.toml"
    config_module.write(config, config_path)
    loaded = _loaded_after(f"""
import asyncio
sys.modules['uvloop'] = None
from osnova_server import config
from osnova_server.server import Server
from osnova_server.web.keys import STATE_KEY

async def main():
    server = Server(config.load(config.Path({str(config_path)!r})))
    await server.start()
    assert server.port > 0 and server.app[STATE_KEY].runtime.identity.fingerprint
    await server.stop()

asyncio.run(main())""")
    assert "osnova_server.store.engine" in loaded
    assert sorted(loaded.intersection(NOT_FOR_READY)) == []


@pytest.mark.parametrize("group", cli.GROUPS)
def test_the_command_table_names_what_each_group_registers(group: str) -> None:
    commands = argparse.ArgumentParser().add_subparsers()
    importlib.import_module(f"osnova_server.cli.{group}").register(commands)
    assert sorted(commands.choices) == sorted(name for name, owner in cli.COMMANDS.items() if owner == group)


@pytest.mark.parametrize(("argv", "command"), [
    (["version"], "version"),
    (["--config", "x.toml", "serve"], "serve"),
    (["--config=x.toml", "migrate", "--help"], "migrate"),
    (["--help"], None),
    (["-V"], None),
    (["--conf", "x.toml", "serve"], None),
    ([], None),
])
def test_chosen_command_finds_the_word_after_the_global_options(argv: list[str], command: str | None) -> None:
    assert cli.chosen_command(argv) == command
