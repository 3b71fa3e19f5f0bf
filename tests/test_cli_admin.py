"""`osnova-server admin-url` (cli/admin.py) against a real `osnova-server serve` process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from osnova_server import config as config_module
from tests.conftest import ServerProcess, cli, free_port, make_config, write_config


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A server process for the whole module; yields its config path and URL."""
    root = tmp_path_factory.mktemp("cli-admin")
    state = root / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    config = config_module.replace(make_config(state), "server", bind_address=f"127.0.0.1:{port}")
    path = write_config(root / "server.toml", config)
    process = ServerProcess(path)
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_ready(url)
        yield path, url
    finally:
        code, err = process.stop()
        assert code == 0, err


async def test_admin_url_prints_a_link_that_signs_in_once(served: tuple[Path, str]) -> None:
    path, url = served
    done = cli("--config", str(path), "admin-url")
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip()
    assert done.stdout.count("\n") == 1
    assert re.fullmatch(re.escape(url) + r"/admin/login#[A-Za-z0-9_-]{43}", link)
    assert re.fullmatch(r"Open it in a browser before \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ; it works once\.\n", done.stderr)
    secret = link.partition("#")[2]
    async with aiohttp.ClientSession() as http:
        for expected in (303, 403):
            async with http.post(f"{url}/admin/login", data={"secret": secret}, allow_redirects=False) as answer:
                assert answer.status == expected


@pytest.mark.parametrize("ttl", ["59", "3601", "ten", "0"])
def test_a_ttl_outside_60_to_3600_is_bad_usage(served: tuple[Path, str], ttl: str) -> None:
    done = cli("--config", str(served[0]), "admin-url", "--ttl", ttl)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.startswith("osnova-server: argument --ttl: ") and done.stderr.count("\n") == 1


def test_admin_url_says_so_when_no_server_runs(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = config_module.replace(make_config(state), "server", bind_address=f"127.0.0.1:{free_port()}")
    path = write_config(tmp_path / "server.toml", config)
    done = cli("--config", str(path), "admin-url")
    assert (done.returncode, done.stdout) == (1, "")
    assert "is `osnova-server serve` running?" in done.stderr and "Traceback" not in done.stderr
