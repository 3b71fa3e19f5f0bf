"""End to end through the CLI and a server process: pair, call, refresh, revoke, refused; and bans."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from osnova_server.client import OsnovaClient, RpcCallError, TransportError
from osnova_server.config import Config
from osnova_server.errors import UNAUTHORIZED
from tests.conftest import ServerProcess, cli, free_port, make_config, running_server, write_config

CODE = re.compile(r"\b[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}\b")


def process_config(tmp_path: Path, port: int) -> Config:
    """A config for a server process on `port`, logging everything at debug level."""
    state = tmp_path / "state"
    return make_config(state, server={"bind_address": f"127.0.0.1:{port}", "state_dir": str(state)},
                       logging={"level": "debug", "format": "json", "file": ""})


def run_cli(config_path: Path, *args: str) -> tuple[int, str, str]:
    """Run the CLI against the config; return exit code, stdout and stderr."""
    done = cli("--config", str(config_path), *args)
    return done.returncode, done.stdout, done.stderr


async def bad_tokens_from(url: str, address: str, count: int) -> None:
    """Send `count` requests with a bad bearer token from `address`."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.post(f"{url}/rpc", data=b"{}", headers={"Authorization": "Bearer bad"}) as answer:
                await answer.read()


def test_pair_use_refresh_revoke_refused(tmp_path: Path, server_process: Any) -> None:
    port = free_port()
    path = write_config(tmp_path / "server.toml", process_config(tmp_path, port))
    process: ServerProcess = server_process(path)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(url)

    code, out, err = run_cli(path, "pair", "--json", "--name", "Anna's phone", "--ttl", "120")
    assert (code, err) == (0, "")
    payload = json.loads(out)
    assert payload["server"]["address"] == url  # derived from the bind address
    assert CODE.fullmatch(payload["pairing"]["code"])

    async def device_life() -> dict[str, Any]:
        async with OsnovaClient(payload["server"]["address"]) as anonymous:
            grant = await anonymous.call("pairing.complete", {"token": payload["pairing"]["code"]})
            renewed = await anonymous.call("auth.refresh", {"refresh_token": grant["refresh_token"]})
        async with OsnovaClient(url, renewed["access_token"]) as device:
            status = await device.call("status.get")
        return {"grant": grant, "renewed": renewed, "status": status}

    life = asyncio.run(device_life())
    device_id = life["grant"]["device_id"]
    assert life["status"]["status"] in ("ok", "degraded")

    code, out, _ = run_cli(path, "devices", "list", "--json")
    assert code == 0
    assert [(d["device_id"], d["name"], d["revoked"]) for d in json.loads(out)] == [(device_id, "Anna's phone", False)]
    code, out, _ = run_cli(path, "devices", "list")
    assert code == 0 and device_id in out and "active" in out and out.startswith("DEVICE ID")

    code, out, err = run_cli(path, "devices", "revoke", device_id)
    assert (code, err) == (0, "") and device_id in out

    async def refused() -> tuple[int | None, int]:
        async with OsnovaClient(url, life["renewed"]["access_token"]) as device:
            with pytest.raises(TransportError) as http_error:
                await device.call("status.get")
        async with OsnovaClient(url) as anonymous:
            with pytest.raises(RpcCallError) as rpc_error:
                await anonymous.call("auth.refresh", {"refresh_token": life["renewed"]["refresh_token"]})
        return http_error.value.status, rpc_error.value.code

    assert asyncio.run(refused()) == (401, UNAUTHORIZED)
    code, out, _ = run_cli(path, "devices", "list", "--json")
    assert [d["revoked"] for d in json.loads(out)] == [True]

    exit_code, server_err = process.stop()
    assert exit_code == 0
    secrets = [payload["pairing"]["code"], payload["pairing"]["nonce"], life["grant"]["access_token"],
               life["grant"]["refresh_token"], life["renewed"]["access_token"], life["renewed"]["refresh_token"]]
    assert "pairing.complete" in server_err  # the audit lines are there...
    assert not [secret for secret in secrets if secret in server_err]  # ...without a secret


def test_pair_prints_code_expiry_and_qr(tmp_path: Path, server_process: Any) -> None:
    port = free_port()
    path = write_config(tmp_path / "server.toml", process_config(tmp_path, port))
    process: ServerProcess = server_process(path)
    process.wait_ready(f"http://127.0.0.1:{port}")
    code, out, err = run_cli(path, "pair")
    assert (code, err) == (0, "")
    assert CODE.search(out)
    assert re.search(r"expires at\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out)
    assert f"http://127.0.0.1:{port}" in out
    # Block characters of the QR code (half blocks or sextants; tests/test_terminal_qr.py decodes it).
    assert sum(1 for c in out if c in "█▀▄▌▐" or 0x1FB00 <= ord(c) <= 0x1FB3B) > 100

    # The CLI's errors: a bad id is one line and exit 1; a bad --ttl is usage, exit 2.
    code, out, err = run_cli(path, "devices", "revoke", "no-such-device")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "osnova-server: no paired device has the id, id prefix or name 'no-such-device'; see `osnova-server devices list`"
    ]
    code, _, err = run_cli(path, "pair", "--ttl", "10")
    assert code == 2 and "30 to 3600" in err


def test_bans_list_and_lift(tmp_path: Path, server_process: Any) -> None:
    port = free_port()
    config = process_config(tmp_path, port)
    path = write_config(tmp_path / "server.toml", config)
    process: ServerProcess = server_process(path)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(url)
    assert run_cli(path, "bans", "list")[:2] == (0, "no addresses are banned\n")

    asyncio.run(bad_tokens_from(url, "127.0.0.9", config.ban.max_failures))
    code, out, _ = run_cli(path, "bans", "list", "--json")
    assert code == 0
    assert [(b["address"], b["reason"]) for b in json.loads(out)] == [("127.0.0.9", "too many failed authentications")]
    code, out, _ = run_cli(path, "bans", "list")
    assert code == 0 and "127.0.0.9" in out

    assert run_cli(path, "bans", "lift", "127.0.0.9")[:2] == (0, "lifted the ban on 127.0.0.9\n")
    code, _, err = run_cli(path, "bans", "lift", "127.0.0.9")
    assert code == 1 and "127.0.0.9 is not banned" in err
    code, _, err = run_cli(path, "bans", "lift", "nonsense")
    assert code == 1 and "'address'" in err


@pytest.mark.parametrize("args", [("pair",), ("devices", "list"), ("bans", "list")])
def test_commands_without_a_running_server(tmp_path: Path, args: tuple[str, ...]) -> None:
    path = write_config(tmp_path / "server.toml", process_config(tmp_path, free_port()))
    code, out, err = run_cli(path, *args)
    assert code == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "cannot reach http://127.0.0.1:" in err and "serve` running?" in err


def test_pair_role_owner_gives_an_owner_and_devices_list_shows_roles(tmp_path: Path, server_process: Any) -> None:
    port = free_port()
    path = write_config(tmp_path / "server.toml", process_config(tmp_path, port))
    process: ServerProcess = server_process(path)
    url = f"http://127.0.0.1:{port}"
    process.wait_ready(url)
    code, _, err = run_cli(path, "pair", "--role", "admin")
    assert code == 2 and "invalid choice: 'admin'" in err

    async def redeem(args: tuple[str, ...]) -> str:
        code, out, err = run_cli(path, "pair", "--json", *args)
        assert (code, err) == (0, "")
        async with OsnovaClient(url) as anonymous:
            grant = await anonymous.call("pairing.complete", {"token": json.loads(out)["pairing"]["code"]})
        return str(grant["device_id"])

    owner = asyncio.run(redeem(("--role", "owner", "--name", "Anna")))
    member = asyncio.run(redeem(("--name", "TV")))
    code, out, _ = run_cli(path, "devices", "list", "--json")
    assert code == 0
    assert {d["device_id"]: (d["role"], d["paired_by"]) for d in json.loads(out)} == {
        owner: ("owner", "admin"), member: ("member", "admin"),
    }
    code, out, _ = run_cli(path, "devices", "list")
    assert code == 0 and "ROLE" in out.splitlines()[0] and " owner " in out and " member " in out


def _unique_prefix(device_id: str, others: list[str]) -> str:
    """The shortest prefix of `device_id`, at least 4 characters, that no other id starts with."""
    length = 4
    while any(other.startswith(device_id[:length]) for other in others):
        length += 1
    return device_id[:length]


async def test_devices_by_id_prefix_or_name_revoke_remove_role(tmp_path: Path) -> None:
    """DEVICE as id, prefix or name; ambiguous and too-short refused listing the matches; remove needs revoke."""
    config = process_config(tmp_path, free_port())
    path = write_config(tmp_path / "server.toml", config)

    async def run(*args: str) -> tuple[int, str, str]:
        return await asyncio.to_thread(run_cli, path, *args)

    async with running_server(config) as running:
        ids = {}
        async with running.client(admin=True) as admin:
            for label, name in (("phone-1", "phone"), ("phone-2", "phone"), ("tablet", "tablet")):
                code = (await admin.call("pairing.start", {"name": name}))["pairing"]["code"]
                ids[label] = (await admin.call("pairing.complete", {"token": code}))["device_id"]
        listing = running.runtime.store.devices

        code, out, err = await run("devices", "revoke", "phone")
        assert (code, out) == (2, "")
        phones = sorted((ids["phone-1"], ids["phone-2"]), key=lambda i: [d.device_id for d in listing()].index(i))
        assert err.splitlines() == [
            "osnova-server: 'phone' matches 2 devices; name one by its id:",
            f"osnova-server:   {phones[0]}  phone  (member, active)",
            f"osnova-server:   {phones[1]}  phone  (member, active)",
        ]
        code, out, err = await run("devices", "revoke", ids["tablet"][:3])
        assert (code, out) == (2, "")
        assert err == (
            f"osnova-server: {ids['tablet'][:3]!r} is no device's name, and an id prefix needs at least 4 characters;"
            " see `osnova-server devices list`\n"
        )
        assert not any(device.revoked for device in listing())

        prefix = _unique_prefix(ids["tablet"], [ids["phone-1"], ids["phone-2"]])
        assert await run("devices", "revoke", prefix) == (0, f"revoked device {ids['tablet']} (tablet)\n", "")
        assert [d.device_id for d in listing() if d.revoked] == [ids["tablet"]]

        code, out, err = await run("devices", "remove", ids["phone-1"])
        assert (code, out) == (1, "")
        assert err == (
            f"osnova-server: device {ids['phone-1']} (phone) is not revoked; revoke it first with "
            f"`osnova-server devices revoke {ids['phone-1']}`\n"
        )
        assert len(listing()) == 3

        code, out, err = await run("devices", "list")
        assert code == 0
        header, *rows = out.splitlines()
        assert header.split() == ["DEVICE", "ID", "NAME", "ROLE", "PAIRED", "PAIRED", "BY", "LAST", "SEEN", "STATUS"]
        assert all(row.split()[2:3] == ["member"] and row.split()[4] == "admin" for row in rows)

        assert await run("devices", "remove", "tablet") == (0, f"removed device {ids['tablet']} (tablet)\n", "")
        assert sorted(d.device_id for d in listing()) == sorted(phones)

        assert await run("devices", "role", ids["phone-2"], "owner") == (
            0, f"device {ids['phone-2']} (phone) is now an owner\n", "",
        )
        code, out, _ = await run("devices", "list", "--json")
        assert {d["device_id"]: d["role"] for d in json.loads(out)} == {ids["phone-1"]: "member", ids["phone-2"]: "owner"}
        code, _, err = await run("devices", "role", ids["phone-2"], "king")
        assert code == 2 and "argument ROLE: invalid choice: 'king'" in err
