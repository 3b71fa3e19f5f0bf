"""Tests for `osnova-server discover`, run on the second machine of a LAN of two namespaces."""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from osnova_server import __version__
from tests.conftest import ServerProcess, cli, free_port, make_config, write_config
from tests.netns import Lan, NamespaceUnavailable, run_in, two_machines


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Two machines on one link; `discover` listens on every interface, so never outside them."""
    try:
        with two_machines() as made:
            yield made
    except NamespaceUnavailable as err:
        pytest.skip(f"{err}; discover listens on every interface, so it is only run inside namespaces")


def _discover(lan: Lan, *args: str) -> tuple[int, str, str]:
    """`osnova-server discover ARGS` on the second machine."""
    result = run_in(lan.second, [sys.executable, "-m", "osnova_server", "discover", *args])
    return result.returncode, result.stdout, result.stderr


def test_second_machine_lists_the_server(
    lan: Lan, tmp_path: Path, server_process: Callable[..., ServerProcess]
) -> None:
    """The list names the server, its address, port, TLS, version and the pairing fingerprint."""
    config = make_config(tmp_path / "state", server={"bind_address": f"0.0.0.0:{free_port()}"},
                         discovery={"mdns": "auto", "name": "Living room"})
    config_path = write_config(tmp_path / "server.toml", config)
    process = server_process(config_path, prefix=lan.server.command())
    with lan.server.entered():
        process.wait_ready(f"http://{lan.server.address}:{config.port}")
    paired = run_in(lan.server, [sys.executable, "-m", "osnova_server", "--config", str(config_path), "pair", "--json"])
    fingerprint = json.loads(paired.stdout)["server"]["fingerprint"]

    code, out, err = _discover(lan, "--json", "--timeout", "4")

    assert code == 0, err
    assert json.loads(out) == [{
        "name": "Living room", "host": f"{socket.gethostname().partition('.')[0]}.local", "addresses": [lan.server.address],
        "port": config.port, "fingerprint": fingerprint, "version": __version__, "tls": False, "path": "/rpc",
    }]

    code, out, err = _discover(lan, "--timeout", "4")

    assert code == 0, err
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ADDRESSES", "PORT", "TLS", "VERSION", "FINGERPRINT"]
    assert row.split() == ["Living", "room", lan.server.address, str(config.port), "no", __version__, fingerprint]


def test_an_empty_network_says_so(lan: Lan) -> None:
    """Nobody answering is one line on stderr and exit 1; --json prints [] and exits 1 too."""
    code, out, err = _discover(lan, "--timeout", "1")

    assert (code, out) == (1, "")
    assert err == ("osnova-server: no Osnova server answered on this network within 1 s; "
                   "is one running with [discovery] mdns on, on this LAN?\n")

    code, out, err = _discover(lan, "--timeout", "1", "--json")

    assert (code, json.loads(out), err) == (1, [], "")


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be above 0 and at most 60 seconds"),
        ("-2", "must be above 0 and at most 60 seconds"),
        ("61", "must be above 0 and at most 60 seconds"),
        ("nan", "must be above 0 and at most 60 seconds"),
        ("soon", "'soon' is not a number of seconds"),
    ],
)
def test_a_bad_timeout_is_refused_before_listening(value: str, problem: str) -> None:
    """A --timeout that is not a number of seconds from 0 to 60 is a usage error (exit 2)."""
    result = cli("discover", "--timeout", value)

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (f"osnova-server: argument --timeout: {problem} (see `osnova-server --help`)\n")
