"""`osnova-server status` and `--version`/`-V`, against a real server and against none."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from osnova_server import __version__
from osnova_server.config import Config
from osnova_server.security.tls import certificate_fingerprint, certificate_not_after, generate_self_signed
from osnova_server.timestamps import rfc3339, utc_now
from tests.conftest import RunningServer, cli, free_port, make_config, running_server, write_config

NO_ENV_SECRET = {"OSNOVA_JWT_SECRET": ""}


def server_config(tmp_path: Path, *, tls: bool = False) -> Config:
    """A config on a fixed free loopback port (the CLI reads the port from the file)."""
    state = tmp_path / "state"
    sections: dict[str, dict[str, object]] = {"server": {"bind_address": f"127.0.0.1:{free_port()}", "state_dir": str(state)}}
    if tls:
        cert, key = tmp_path / "server.crt", tmp_path / "server.key"
        generate_self_signed(cert, key)
        sections["tls"] = {"enabled": True, "cert_path": str(cert), "key_path": str(key)}
    return make_config(state, **sections)


@pytest.mark.parametrize("flag", ["--version", "-V", "version"])
def test_version_flags(flag: str) -> None:
    """`--version`, `-V` and `version` print the same line and exit 0."""
    result = cli(flag)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"osnova-server {__version__}\n", "")


async def _status(path: Path, *args: str) -> tuple[int, str, str]:
    """Run `status ARGS` in a thread while the server runs in this loop."""
    done = await asyncio.to_thread(cli, "--config", str(path), "status", *args, env=NO_ENV_SECRET)
    return done.returncode, done.stdout, done.stderr


async def _pair_and_revoke_one(running: RunningServer) -> None:
    """Two devices paired, one of them revoked."""
    async with running.client(admin=True, ssl_context=False) as admin:
        for name in ("phone", "tablet"):
            code = (await admin.call("pairing.start", {"name": name}))["pairing"]["code"]
            grant = await admin.call("pairing.complete", {"token": code})
        await admin.call("devices.revoke", {"device_id": grant["device_id"]})


async def test_status_of_a_running_tls_server(tmp_path: Path) -> None:
    """The human summary names version, uptime, addresses, TLS expiry, fingerprint, counts and services."""
    config = server_config(tmp_path, tls=True)
    path = write_config(tmp_path / "server.toml", config)
    async with running_server(config) as running:
        await _pair_and_revoke_one(running)
        code, out, err = await _status(path)
        assert (code, err) == (0, ""), err
        lines = out.splitlines()
        port = config.port
        expires = rfc3339(certificate_not_after(Path(config.tls.cert_path)))
        assert re.fullmatch(rf"osnova-server {re.escape(__version__)}: (ok|degraded)", lines[0])
        assert re.fullmatch(r"uptime        \d+ s", lines[1])
        assert lines[2] == "address       (not set; pairing derives one from the bind address)"
        assert lines[3] == f"this machine  https://127.0.0.1:{port}"
        days = (certificate_not_after(Path(config.tls.cert_path)) - utc_now()).days
        assert lines[4] in {f"tls           on; certificate expires {expires} (in {d} days)" for d in (days - 1, days)}
        assert lines[5] == f"fingerprint   {certificate_fingerprint(Path(config.tls.cert_path))}"
        assert lines[6] == "devices       2 paired: 1 active, 1 revoked"
        assert lines[7] == "apps          0 installed"
        assert lines[8] == "connections   0 of 5 WebSockets, 0 devices seen in the last 5 minutes"
        assert lines[9:11] == ["services", "  NAME            KIND             STATUS"]
        assert [line.split()[0] for line in lines[11:]] == ["database", "scheduler", "tls", "disk", "manifest-hosts"]

        async with running.client(admin=True, ssl_context=False) as admin:
            await admin.call("config.setServer", {"address": "https://osnova.home.arpa:8443"})
        code, out, err = await _status(path, "--json")
        assert (code, err) == (0, "")
        status = json.loads(out)
        assert set(status) == {
            "status", "version", "uptime", "services", "address", "local_url", "tls", "fingerprint", "devices",
            "apps", "connections", "max_connections", "active_sessions",
        }
        assert status["address"] == "https://osnova.home.arpa:8443"
        assert status["tls"] == {"enabled": True, "certificate_expires_at": expires}
        assert status["devices"] == {"paired": 2, "active": 1, "revoked": 1}
        assert [s["name"] for s in status["services"]] == ["database", "scheduler", "tls", "disk", "manifest-hosts"]


async def test_status_without_tls_shows_the_identity_fingerprint(tmp_path: Path) -> None:
    """Without TLS the fingerprint is the server identity's, as pairing shows it."""
    config = server_config(tmp_path)
    path = write_config(tmp_path / "server.toml", config)
    async with running_server(config) as running:
        code, out, _ = await _status(path)
        assert code == 0
        assert "tls           off" in out.splitlines()
        assert f"fingerprint   {running.runtime.identity.fingerprint}" in out.splitlines()


def test_status_when_no_server_answers_exits_1(tmp_path: Path) -> None:
    """Nothing listening: exit 1 and one line saying so."""
    config = server_config(tmp_path)
    path = write_config(tmp_path / "server.toml", config)
    result = cli("--config", str(path), "status", env=NO_ENV_SECRET)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"osnova-server: cannot reach http://127.0.0.1:{config.port}; is `osnova-server serve` running?\n"
    )
    assert cli("--config", str(path), "status", "--json", env=NO_ENV_SECRET).returncode == 1


async def test_status_works_from_a_banned_loopback(tmp_path: Path) -> None:
    """The admin's own tools are never locked out: with loopback banned, `status` still answers."""
    state = tmp_path / "state"
    config = make_config(state, server={"bind_address": f"127.0.0.1:{free_port()}", "state_dir": str(state)},
                         ban={"ignore": []})
    path = write_config(tmp_path / "server.toml", config)
    async with running_server(config) as running:
        running.runtime.bans.ban("127.0.0.1", "test")
        code, out, err = await _status(path)
        assert (code, err) == (0, "")
        assert out.startswith("osnova-server ")


# A listener that is not osnova-server: each connection gets these bytes whatever it sends, then closed.
FOREIGN_ANSWERS = {
    "not http": b"SSH-2.0-OpenSSH_9.6\r\n",
    "a web page": b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    "a body cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\nConnection: close\r\n\r\nhello",
    "json, not json-rpc": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n[]",
}


@pytest.mark.parametrize("answer", FOREIGN_ANSWERS.values(), ids=FOREIGN_ANSWERS.keys())
async def test_status_when_another_program_holds_the_port_exits_1_in_one_line(tmp_path: Path, answer: bytes) -> None:
    """Not a traceback, and not "is serve running?": something answered, and it is not osnova-server."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65_536)
        writer.write(answer)
        await writer.drain()
        writer.close()

    config = server_config(tmp_path)
    path = write_config(tmp_path / "server.toml", config)
    listener = await asyncio.start_server(reply, "127.0.0.1", config.port)
    async with listener:
        for args in ((), ("--json",)):
            code, out, err = await _status(path, *args)
            assert (code, out) == (1, "")
            assert err.startswith(f"osnova-server: http://127.0.0.1:{config.port} did not answer ")
            assert err.count("\n") == 1 and "Traceback" not in err and "serve` running" not in err


async def test_status_when_the_server_serves_another_certificate_says_so(tmp_path: Path) -> None:
    """The CLI pins the configured certificate file; a server serving another one is running, not gone."""
    config = server_config(tmp_path, tls=True)
    other_cert, other_key = tmp_path / "other.crt", tmp_path / "other.key"
    generate_self_signed(other_cert, other_key)  # e.g. `init --self-signed --force` while it runs
    pinned = make_config(config.state_dir, server={"bind_address": config.server.bind_address},
                         tls={"enabled": True, "cert_path": str(other_cert), "key_path": str(other_key)})
    path = write_config(tmp_path / "server.toml", pinned)
    async with running_server(config):
        code, out, err = await _status(path)
    assert (code, out) == (1, "")
    assert err.startswith(f"osnova-server: TLS with https://127.0.0.1:{config.port} failed: ")
    assert f"the CLI trusts only {other_cert}" in err
    assert err.count("\n") == 1 and "Traceback" not in err and "serve` running" not in err


def _loopback_alias() -> str | None:
    """A name /etc/hosts gives a loopback address that the Host check does not know (not localhost, not ours)."""
    import ipaddress

    from osnova_server.web.host import machine_names

    known = machine_names() | {"localhost"}
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            if not ipaddress.ip_address(words[0]).is_loopback or ipaddress.ip_address(words[0]).version != 4:
                continue
        except ValueError:
            continue
        for name in words[1:]:
            if name.lower() not in known:
                return name
    return None


async def test_status_of_a_server_bound_by_a_host_name_the_host_check_does_not_know(tmp_path: Path) -> None:
    """`bind_address` may be a host name; the CLI must not send it as Host and be refused 421."""
    alias = _loopback_alias()
    if alias is None:
        pytest.skip("/etc/hosts has no extra loopback name here")
    state = tmp_path / "state"
    config = make_config(state, server={"bind_address": f"{alias}:{free_port()}", "state_dir": str(state)})
    path = write_config(tmp_path / "server.toml", config)
    async with running_server(config):
        code, out, err = await _status(path)
    assert (code, err) == (0, "")
    assert out.startswith("osnova-server ")


@pytest.mark.parametrize("content", [b"not a certificate\n", b""], ids=["garbage", "empty"])
def test_status_with_a_certificate_file_that_is_not_pem_is_bad_configuration(tmp_path: Path, content: bytes) -> None:
    """The CLI pins [tls] cert_path; one it cannot load is one line and exit 2, not an ssl traceback."""
    config = server_config(tmp_path, tls=True)
    Path(config.tls.cert_path).write_bytes(content)
    path = write_config(tmp_path / "server.toml", config)
    for command in (("status",), ("rpc", "status.get"), ("pair", "--json")):
        result = cli("--config", str(path), *command, env=NO_ENV_SECRET)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.startswith(f"osnova-server: certificate {config.tls.cert_path} ")
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
