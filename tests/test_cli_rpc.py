"""`osnova-server rpc METHOD [PARAMS_JSON]` against a real `osnova-server serve` process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from osnova_server import config as config_module
from tests.conftest import ServerProcess, cli, free_port, make_config, write_config


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A server process for the whole module; yields its config path."""
    root = tmp_path_factory.mktemp("cli-rpc")
    state = root / "state"
    state.mkdir(mode=0o700)
    port = free_port()
    config = config_module.replace(make_config(state), "server", bind_address=f"127.0.0.1:{port}")
    path = write_config(root / "server.toml", config)
    process = ServerProcess(path)
    try:
        process.wait_ready(f"http://127.0.0.1:{port}")
        yield path
    finally:
        code, err = process.stop()
        assert code == 0, err


def rpc(config: Path, *args: str) -> tuple[int, str, str]:
    """Run `osnova-server --config CONFIG rpc ARGS`."""
    done = cli("--config", str(config), "rpc", *args)
    assert "Traceback" not in done.stderr
    return done.returncode, done.stdout, done.stderr


def test_prints_the_result_as_indented_json(served: Path) -> None:
    code, out, err = rpc(served, "status.get")
    assert (code, err) == (0, "")
    assert json.loads(out)["status"] in ("ok", "degraded")
    assert out.startswith('{\n  "status"')


def test_params_by_position_and_by_name_change_state(served: Path) -> None:
    assert rpc(served, "config.setServer", '["http://cli.example:8080"]')[:2] == (0, "true\n")
    assert rpc(served, "config.getServer")[:2] == (0, '"http://cli.example:8080"\n')
    assert rpc(served, "apps.uninstall", '{"app_id": "org.nope"}')[:2] == (0, "false\n")


@pytest.mark.parametrize(("args", "message"), [
    (["no.such"], "osnova-server: error -32601: Method not found: no.such\n"),
    (["apps.uninstall", '{"id": "x"}'], "osnova-server: error -32602: Invalid params: unexpected param 'id'\n"),
    (["config.setServer", '["ftp://x"]'], None),
])
def test_rpc_errors_exit_1_with_the_message(served: Path, args: list[str], message: str | None) -> None:
    before = rpc(served, "config.getServer")[1]
    code, out, err = rpc(served, *args)
    assert (code, out) == (1, "")
    if message is None:
        assert err.startswith("osnova-server: error -32602: ") and err.count("\n") == 1
    else:
        assert err == message
    assert rpc(served, "config.getServer")[1] == before


@pytest.mark.parametrize(("params", "why"), [
    ("not json", "PARAMS_JSON is not valid JSON"),
    ("{", "PARAMS_JSON is not valid JSON"),
    ('["x", NaN]', "PARAMS_JSON is not valid JSON"),  # Python's json reads these; JSON has no such numbers
    ('{"ttl": -Infinity}', "PARAMS_JSON is not valid JSON"),
    ("5", "PARAMS_JSON must be a JSON array or object"),
    ('"text"', "PARAMS_JSON must be a JSON array or object"),
])
def test_params_that_are_not_an_array_or_object_exit_2(served: Path, params: str, why: str) -> None:
    code, out, err = rpc(served, "config.setServer", params)
    assert (code, out) == (2, "")
    assert err.startswith(f"osnova-server: {why}") and err.count("\n") == 1


def test_an_unreachable_server_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = config_module.replace(make_config(state), "server", bind_address=f"127.0.0.1:{port}")
    path = write_config(tmp_path / "server.toml", config)
    code, out, err = rpc(path, "status.get")
    assert (code, out) == (1, "")
    assert err == f"osnova-server: cannot reach http://127.0.0.1:{port}; is `osnova-server serve` running?\n"
