"""`osnova-server apps list|install|uninstall` against a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import cli, free_port, make_config, running_server, write_config
from tests.test_apps import manifest

NO_ENV_SECRET = {"OSNOVA_JWT_SECRET": ""}


async def _apps(path: Path, *args: str) -> tuple[int, str, str]:
    """Run `apps ARGS` in a thread while the server runs in this loop."""
    done = await asyncio.to_thread(cli, "--config", str(path), "apps", *args, env=NO_ENV_SECRET)
    return done.returncode, done.stdout, done.stderr


async def test_install_list_uninstall(tmp_path: Path) -> None:
    """Install from a file path and a file:// URI, list as a table and as JSON, uninstall, refuse unknown ids."""
    state = tmp_path / "state"
    config = make_config(state, server={"bind_address": f"127.0.0.1:{free_port()}", "state_dir": str(state)})
    path = write_config(tmp_path / "server.toml", config)
    notes, tasks = tmp_path / "notes.json", tmp_path / "tasks.json"
    notes.write_text(json.dumps(manifest()))
    tasks.write_text(json.dumps(manifest(id="ant://tasks", name="Tasks", version="0.9.0")))
    async with running_server(config) as running:
        assert await _apps(path, "list") == (0, "no apps installed; install one with `osnova-server apps install URI`\n", "")
        assert await _apps(path, "install", str(notes)) == (0, f"installed app ant://notes from {notes.as_uri()}\n", "")
        assert await _apps(path, "install", tasks.as_uri()) == (0, f"installed app ant://tasks from {tasks.as_uri()}\n", "")

        code, out, err = await _apps(path, "list")
        assert (code, err) == (0, "")
        installed = running.runtime.apps.installed()
        header, *rows = out.splitlines()
        assert header.split() == ["APP", "ID", "NAME", "VERSION", "INSTALLED", "MANIFEST"]
        assert [row.split() for row in rows] == [
            [app["id"], app["name"], app["version"], app["installed_at"], app["manifest_uri"]] for app in installed
        ]
        code, out, _ = await _apps(path, "list", "--json")
        assert code == 0 and json.loads(out) == installed

        assert await _apps(path, "uninstall", "ant://notes") == (0, "uninstalled app ant://notes\n", "")
        assert await _apps(path, "uninstall", "ant://notes") == (
            1, "", "osnova-server: no installed app has the id 'ant://notes'; see `osnova-server apps list`\n",
        )
        assert [app["id"] for app in running.runtime.apps.installed()] == ["ant://tasks"]

        # A manifest the server refuses: the server's sentence, exit 1, nothing installed.
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(manifest(version="not a version")))
        code, out, err = await _apps(path, "install", str(bad))
        assert (code, out) == (1, "")
        assert err.startswith("osnova-server: ") and err.count("\n") == 1 and "version" in err
        assert [app["id"] for app in running.runtime.apps.installed()] == ["ant://tasks"]


def test_install_of_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    """A path that is not a file and not a URI: exit 2 before anything is asked of a server."""
    missing = tmp_path / "nothing.json"
    result = cli("--config", str(tmp_path / "none.toml"), "apps", "install", str(missing))
    assert result.returncode == 2
    assert result.stderr == (
        f"osnova-server: argument URI: {str(missing)!r} is neither a URI (https://...) nor a manifest file here"
        " (see `osnova-server --help`)\n"
    )


async def test_list_shows_control_characters_from_a_manifest_escaped(tmp_path: Path) -> None:
    """A manifest comes from anywhere: its name must not clear the admin's screen or retitle the terminal."""
    state = tmp_path / "state"
    config = make_config(state, server={"bind_address": f"127.0.0.1:{free_port()}", "state_dir": str(state)})
    path = write_config(tmp_path / "server.toml", config)
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(manifest(name="Notes\x1b]0;owned\x07\x1b[2J\u202egnp.exe\x9b")))
    async with running_server(config):
        assert (await _apps(path, "install", str(hostile)))[0] == 0
        code, out, err = await _apps(path, "list")
    assert (code, err) == (0, "")
    assert not any(ord(c) < 0x20 and c != "\n" or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in out)
    assert r"Notes\x1b]0;owned\x07\x1b[2J\u202egnp.exe\x9b" in out
