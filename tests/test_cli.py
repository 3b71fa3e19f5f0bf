"""The `osnova-server` command line: init, check-config, token, version and argparse errors."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Final

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from osnova_server import __version__
from osnova_server import config as config_module
from osnova_server.client import OsnovaClient, TransportError
from tests.conftest import cli, free_port, make_config, running_server

USAGE_TAIL: Final = " (see `osnova-server --help`)"


def _init(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `osnova-server --config CONFIG init ARGS`."""
    return cli("--config", str(config), "init", *args)


def _mode(path: Path) -> int:
    """The permission bits of a file."""
    return stat.S_IMODE(path.stat().st_mode)


# -- init ----------------------------------------------------------------------------------------


def test_init_writes_a_complete_config_that_check_config_accepts(tmp_path: Path) -> None:
    """init: every key, the state dir 0700, a 64-hex secret 0600; check-config says OK."""
    path, state = tmp_path / "etc" / "server.toml", tmp_path / "state"
    result = _init(path, "--state-dir", str(state), "--bind", "127.0.0.1:9123")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"wrote {path}\nstate directory {state}\n"
    raw = tomllib.loads(path.read_text())
    assert {s: set(k) for s, k in raw.items()} == {
        s: set(k) for s, k in config_module.to_mapping(config_module.Config()).items()
    }
    assert raw["server"]["bind_address"] == "127.0.0.1:9123"
    assert raw["server"]["state_dir"] == str(state)
    assert raw["auth"] == {"jwt_secret": "", "jwt_secret_file": str(state / "jwt.secret"), "token_expiry": 86400}
    assert raw["tls"]["enabled"] is False
    assert _mode(state) == 0o700
    secret = state / "jwt.secret"
    assert _mode(secret) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", secret.read_text())
    assert _mode(path) == 0o644  # no secret inside; systemd's service user must read it
    check = cli("--config", str(path), "check-config", env={"OSNOVA_JWT_SECRET": ""})
    assert (check.returncode, check.stdout, check.stderr) == (0, "config OK\n", "")


def test_init_relative_state_dir_is_made_absolute(tmp_path: Path) -> None:
    """A relative --state-dir is written as an absolute path, so `serve` finds it from anywhere."""
    result = subprocess.run(
        [sys.executable, "-m", "osnova_server", "--config", "server.toml", "init", "--state-dir", "st"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert tomllib.loads((tmp_path / "server.toml").read_text())["server"]["state_dir"] == str(tmp_path / "st")


def test_init_self_signed_makes_certificate_and_turns_tls_on(tmp_path: Path) -> None:
    """--self-signed: an EC P-256 certificate for localhost and 127.0.0.1, its key 0600, TLS on."""
    path, state = tmp_path / "server.toml", tmp_path / "state"
    result = _init(path, "--state-dir", str(state), "--self-signed")
    assert result.returncode == 0, result.stderr
    cert, key = state / "certs" / "server.crt", state / "certs" / "server.key"
    assert result.stdout.splitlines()[-1] == f"self-signed certificate {cert}"
    assert tomllib.loads(path.read_text())["tls"] == {"enabled": True, "cert_path": str(cert), "key_path": str(key)}
    assert _mode(key) == 0o600
    assert _mode(state / "certs") == 0o700
    certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    check = cli("--config", str(path), "check-config", env={"OSNOVA_JWT_SECRET": ""})
    assert (check.returncode, check.stdout) == (0, "config OK\n")


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    """An existing config is left byte for byte as it was, and nothing else is created."""
    path = tmp_path / "server.toml"
    original = b"# hand-written\n[server]\nmax_clients = 3\n"
    path.write_bytes(original)
    result = _init(path, "--state-dir", str(tmp_path / "state"), "--self-signed")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"osnova-server: config {path} already exists; pass --force to overwrite it\n"
    assert path.read_bytes() == original
    assert not (tmp_path / "state").exists()


def test_init_force_rewrites_config_and_keeps_the_secret(tmp_path: Path) -> None:
    """--force writes a new config but keeps the existing secret, so issued tokens stay valid."""
    path, state = tmp_path / "server.toml", tmp_path / "state"
    assert _init(path, "--state-dir", str(state)).returncode == 0
    secret = (state / "jwt.secret").read_bytes()
    result = _init(path, "--state-dir", str(state), "--bind", "127.0.0.1:9999", "--force")
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(path.read_text())["server"]["bind_address"] == "127.0.0.1:9999"
    assert (state / "jwt.secret").read_bytes() == secret


@pytest.mark.parametrize(
    ("bind", "reason"),
    [
        ("8080", "expected HOST:PORT"),
        ("localhost:http", "port 'http' is not a number from 0 to 65535"),
        ("0.0.0.0:70000", "port '70000' is not a number from 0 to 65535"),
        ("::1:80", "IPv6 addresses are written [addr]:port"),
        ("bad host:80", "'bad host' is neither an IP address nor a host name"),
    ],
)
def test_init_bad_bind_is_usage_error_and_writes_nothing(tmp_path: Path, bind: str, reason: str) -> None:
    """A --bind that does not parse: exit 2, one line, no config and no state dir."""
    path, state = tmp_path / "server.toml", tmp_path / "state"
    result = _init(path, "--state-dir", str(state), "--bind", bind)
    assert result.returncode == 2
    assert result.stderr == f"osnova-server: --bind {bind!r} does not parse ({reason})\n"
    assert not path.exists() and not state.exists()


def test_init_where_it_cannot_write_is_one_line(tmp_path: Path) -> None:
    """A config path under a regular file fails with one line and exit 1."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = _init(blocker / "server.toml", "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 1
    assert result.stderr == f"osnova-server: cannot write {blocker}: File exists\n"
    assert blocker.read_text() == ""


# -- version, argparse -------------------------------------------------------------------------


def test_version() -> None:
    """`version` prints the package version."""
    result = cli("version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"osnova-server {__version__}\n", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "the following arguments are required: COMMAND"),
        (("bogus",), "argument COMMAND: invalid choice: 'bogus' (choose from "),
        (("token", "--ttl", "0"), "argument --ttl: must be at least 1"),
        (("token", "--ttl", "ten"), "argument --ttl: 'ten' is not a whole number"),
        (("init", "--nope"), "unrecognized arguments: --nope"),
        (("--config",), "argument --config: expected one argument"),
    ],
    ids=["no command", "unknown command", "ttl zero", "ttl not a number", "unknown option", "config without path"],
)
def test_usage_errors_are_one_line_exit_2(args: tuple[str, ...], message: str) -> None:
    """argparse mistakes print one line, no usage block, and exit 2."""
    result = cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"osnova-server: {message}")
    assert result.stderr.endswith(USAGE_TAIL + "\n")


def test_help_exits_0() -> None:
    """--help lists the commands."""
    result = cli("--help")
    assert result.returncode == 0
    for command in ("init", "serve", "check-config", "token", "version"):
        assert command in result.stdout


def test_console_script_behaves_like_python_m() -> None:
    """The installed `osnova-server` script and `python -m osnova_server` are the same program."""
    script = Path(sys.executable).parent / "osnova-server"
    if not script.exists():
        pytest.skip("the package is not installed here; tests/test_packaging.py checks the script from a wheel")
    for args in (("version",), ("bogus",)):
        by_script = subprocess.run([str(script), *args], capture_output=True, text=True, timeout=30)
        by_module = cli(*args)
        assert (by_script.returncode, by_script.stdout, by_script.stderr) == (
            by_module.returncode,
            by_module.stdout,
            by_module.stderr,
        )


# -- token ---------------------------------------------------------------------------------------


async def test_token_is_accepted_by_the_server(tmp_path: Path) -> None:
    """`token --ttl` signs with the server's secret file; the running server accepts it."""
    state = tmp_path / "state"
    path = tmp_path / "server.toml"
    assert _init(path, "--state-dir", str(state), "--bind", "127.0.0.1:0").returncode == 0
    config = config_module.load(path)
    async with running_server(config) as running:
        result = await asyncio.to_thread(
            cli, "--config", str(path), "token", "--ttl", "120", env={"OSNOVA_JWT_SECRET": ""}
        )
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert result.stdout == token + "\n"
        claims = jwt.decode(token, (state / "jwt.secret").read_text().strip(), algorithms=["HS256"])
        assert claims["exp"] - claims["iat"] == 120
        async with OsnovaClient(running.url, token) as client:
            status = await client.call("status.get")
        assert status["version"] == __version__
        forged = jwt.encode({**claims, "exp": claims["exp"] + 3600}, "another secret of 32 bytes or more!", "HS256")
        async with OsnovaClient(running.url, forged) as client:
            with pytest.raises(TransportError) as refused:
                await client.call("status.get")
        assert refused.value.status == 401


def test_token_default_ttl_is_600(tmp_path: Path) -> None:
    """Without --ttl a token lives 600 seconds."""
    config = make_config(tmp_path)
    path = tmp_path / "server.toml"
    config_module.write(config, path)
    result = cli("--config", str(path), "token", env={"OSNOVA_JWT_SECRET": ""})
    claims = jwt.decode(result.stdout.strip(), config.auth.jwt_secret, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 600


def test_token_without_a_secret_fails_clearly(tmp_path: Path) -> None:
    """No secret yet (server never started): exit 1, one line saying what to do; nothing created."""
    state = tmp_path / "state"
    path = tmp_path / "server.toml"
    path.write_text(f'[server]\nstate_dir = "{state}"\n')
    result = cli("--config", str(path), "token", env={"OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"osnova-server: no JWT secret at {state / 'jwt.secret'}; start the server once or run `osnova-server init`\n"
    )
    assert not state.exists()


def test_token_with_an_unreadable_secret_fails_clearly(tmp_path: Path) -> None:
    """A secret this user cannot read: exit 1, one line (root can read any file, so a directory stands in)."""
    secret = tmp_path / "jwt.secret"
    secret.mkdir()
    path = tmp_path / "server.toml"
    path.write_text(f'[auth]\njwt_secret_file = "{secret}"\n')
    result = cli("--config", str(path), "token", env={"OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"osnova-server: JWT secret file {secret} is a directory; remove it or point [auth] jwt_secret_file at a file\n"
    )


def test_token_with_a_weak_secret_is_a_config_error(tmp_path: Path) -> None:
    """A too-short secret is the config's fault: exit 2."""
    path = tmp_path / "server.toml"
    path.write_text('[auth]\njwt_secret = "short"\n')
    result = cli("--config", str(path), "token", env={"OSNOVA_JWT_SECRET": ""})
    assert result.returncode == 2
    assert result.stderr.startswith("osnova-server: the JWT secret from [auth] jwt_secret is 5 bytes")


# -- check-config reports every kind of problem; the port is checked before any state ------------


def test_check_config_lists_problems_of_every_kind_at_once(tmp_path: Path) -> None:
    """A bad key, a bad value, a garbled certificate, a weak secret and a port in use: five lines, exit 2."""
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    state = tmp_path / "state"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        path = tmp_path / "server.toml"
        path.write_text(
            f'[server]\ncolour = "blue"\nmax_clients = 0\nbind_address = "127.0.0.1:{port}"\nstate_dir = "{state}"\n'
            f'[tls]\nenabled = true\ncert_path = "{cert}"\nkey_path = "{key}"\n[auth]\njwt_secret = "short"\n'
        )
        result = cli("--config", str(path), "check-config", env={"OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stdout) == (2, "")
    lines = result.stderr.splitlines()
    assert len(lines) == 5, lines
    assert lines[0].startswith("osnova-server: unknown key [server] colour; remove it or fix its spelling")
    assert lines[1] == "osnova-server: [server] max_clients must be at least 1, not 0; set it to 1 or more"
    assert lines[2].startswith(f"osnova-server: certificate {cert} is not a PEM certificate")
    assert lines[3].startswith("osnova-server: the JWT secret from [auth] jwt_secret is 5 bytes")
    assert lines[4] == f"osnova-server: address 127.0.0.1:{port} is already in use"
    assert not state.exists()


def test_check_config_of_a_mistyped_secret_does_not_print_it(tmp_path: Path) -> None:
    """An unquoted secret, or a URL holding a password in a list: the type is wrong, the value stays out of the journal."""
    path = tmp_path / "server.toml"
    path.write_text(
        "[auth]\njwt_secret = 918273645546372819918273645546372819\n"
        '[store]\nurl = ["postgresql://osnova:hunter2@127.0.0.1/osnova"]\n'
        '[cluster]\nredis_url = ["redis://:swordfish@127.0.0.1:6379/0"]\n'
    )
    result = cli("--config", str(path), "check-config", env={"OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stdout) == (2, "")
    for secret in ("918273645546372819918273645546372819", "hunter2", "swordfish"):
        assert secret not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("osnova-server: [auth] jwt_secret must be a quoted string, not a whole number")
    assert lines[1].startswith("osnova-server: [store] url must be a quoted string, not a list")
    assert lines[2].startswith("osnova-server: [cluster] redis_url must be a quoted string, not a list")


def test_serve_with_the_port_in_use_creates_no_state(tmp_path: Path) -> None:
    """`serve` finds the port taken before the state dir, secret or database exist: exit 1, nothing left."""
    state = tmp_path / "state"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        path = tmp_path / "server.toml"
        path.write_text(f'[server]\nbind_address = "127.0.0.1:{port}"\nstate_dir = "{state}"\n')
        result = cli("--config", str(path), "serve", env={"OSNOVA_JWT_SECRET": ""})
        check = cli("--config", str(path), "check-config", env={"OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"osnova-server: address 127.0.0.1:{port} is already in use\n"
    assert (check.returncode, check.stderr) == (2, f"osnova-server: address 127.0.0.1:{port} is already in use\n")
    assert not state.exists()


async def test_check_config_passes_while_its_own_server_holds_the_port(tmp_path: Path) -> None:
    """`check-config && systemctl reload` works: the running server's port is not a problem."""
    state = tmp_path / "state"
    config = make_config(state, server={"bind_address": f"127.0.0.1:{free_port()}", "state_dir": str(state)})
    path = tmp_path / "server.toml"
    config_module.write(config, path)
    async with running_server(config):
        result = await asyncio.to_thread(cli, "--config", str(path), "check-config", env={"OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stdout, result.stderr) == (0, "config OK\n", "")



def test_a_second_serve_on_the_same_config_names_the_first_pid(tmp_path: Path, server_process: Any) -> None:
    """Same state dir and port: the state-dir lock speaks (naming the PID), not the port check."""
    state = tmp_path / "state"
    port = free_port()
    path = tmp_path / "server.toml"
    config_module.write(make_config(state, server={"bind_address": f"127.0.0.1:{port}", "state_dir": str(state)}), path)
    first = server_process(path)
    first.wait_ready(f"http://127.0.0.1:{port}")
    second = cli("--config", str(path), "serve", env={"OSNOVA_JWT_SECRET": ""})
    assert second.returncode == 1
    assert f"(PID {first.process.pid})" in second.stderr and second.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [("version",), ("completion", "bash")])
def test_a_reader_gone_early_ends_the_command_without_a_traceback(command: tuple[str, ...]) -> None:
    # `osnova-server status | head -1`: head exits, the next write finds no reader (EPIPE). The
    # read end is closed before the command starts, so every write it makes meets that.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "osnova_server", *command], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert done.stderr == ""  # neither a traceback nor "Exception ignored ... BrokenPipeError"
    assert done.returncode == 1
