"""Tests for osnova_server.discovery: the `_osnova._tcp` record, seen from a second machine of the LAN.

The LAN is two network namespaces joined by a veth pair (tests/netns.py): the server runs in
one (`ip netns exec`), and a python-zeroconf browser runs in this process with its sockets made
in the other. Where no namespace can be made, the same checks run on loopback if `lo` carries
multicast; otherwise they skip with the reason. No packet goes to any other address.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from osnova_server import __version__, discovery
from osnova_server import config as config_module
from osnova_server.config import Config
from osnova_server.discovery import SERVICE_TYPE, advertises, instance_name, numbered_name, txt_record
from osnova_server.security.tls import certificate_fingerprint, generate_self_signed
from tests.conftest import ServerProcess, free_port, make_config, write_config
from tests.netns import Lan, Machine, NamespaceUnavailable, run_in, two_machines

APPEAR_TIMEOUT: Final = 30.0
GOODBYE_BOUND: Final = 5.0
# Long enough for a server that was going to advertise to have probed and announced (about 2 s).
SILENCE_WINDOW: Final = 4.0
LOOPBACK: Final = Machine(namespace="", interface="lo", address="127.0.0.1")

StartServer = Callable[..., ServerProcess]


# -- what to advertise, decided without the network ----------------------------------------------


@pytest.mark.parametrize(
    ("mdns", "bind", "expected"),
    [
        ("auto", "0.0.0.0:8080", True),
        ("auto", "[::]:8080", True),
        ("auto", "192.168.1.20:8080", True),
        ("auto", "127.0.0.1:8080", False),
        ("auto", "127.0.0.2:8080", False),
        ("auto", "[::1]:8080", False),
        ("auto", "localhost:8080", False),
        (True, "127.0.0.1:8080", True),
        (True, "0.0.0.0:8080", True),
        (False, "0.0.0.0:8080", False),
        (False, "192.168.1.20:8080", False),
    ],
)
def test_advertises_follows_mdns_and_the_bind_address(mdns: bool | str, bind: str, expected: bool) -> None:
    """`auto` advertises unless bound to loopback only; `true` always; `false` never."""
    config = config_module.Config()
    config = config_module.replace(config, "server", bind_address=bind)
    config = config_module.replace(config, "discovery", mdns=mdns)

    assert advertises(config) is expected


def test_instance_name_is_the_configured_name_else_the_host_name() -> None:
    """[discovery] name wins; empty means the host name's first label."""
    named = config_module.replace(config_module.Config(), "discovery", name="Living room")

    assert instance_name(named) == "Living room"
    assert instance_name(config_module.Config()) == socket.gethostname().partition(".")[0]


@pytest.mark.parametrize(
    ("name", "number", "expected"),
    [
        ("osnova", 2, "osnova (2)"),
        ("osnova", 13, "osnova (13)"),
        ("x" * 63, 2, "x" * 59 + " (2)"),
        # Cut on a character boundary: "ж" is two bytes of UTF-8.
        ("ж" * 31 + "a", 2, "ж" * 29 + " (2)"),
    ],
)
def test_numbered_name_stays_one_dns_label(name: str, number: int, expected: str) -> None:
    """The name after a conflict is `NAME (N)`, cut so it still fits 63 bytes of UTF-8."""
    numbered = numbered_name(name, number)

    assert numbered == expected
    assert len(numbered.encode()) <= 63


@pytest.mark.parametrize(("tls", "flag"), [(True, "1"), (False, "0")])
def test_txt_record_names_fingerprint_version_tls_and_path(tls: bool, flag: str) -> None:
    """The four TXT keys of CONTRACT 10."""
    assert txt_record("sha256:ab", tls) == {"fp": "sha256:ab", "v": __version__, "tls": flag, "path": "/rpc"}


def test_the_server_imports_zeroconf_only_when_it_advertises(tmp_path: Path) -> None:
    """A server that does not advertise never loads python-zeroconf (it must start fast)."""
    config = make_config(tmp_path / "state", discovery={"mdns": "auto"})
    script = f"""
import asyncio, sys
from osnova_server import config as c
from osnova_server.server import Server

async def main():
    server = Server(c.load(c.Path({str(write_config(tmp_path / "server.toml", config))!r})))
    await server.start()
    await asyncio.sleep(0.5)  # the advertising job has decided by now
    await server.stop()

asyncio.run(main())
print(sorted(name for name in sys.modules if name.split(".")[0] in ("zeroconf", "ifaddr")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == 0, result.stderr
    assert "zeroconf" not in result.stdout


# -- the LAN --------------------------------------------------------------------------------------


def _multicast_loopback() -> bool:
    """Whether this host's `lo` carries multicast (`ip link set lo multicast on`)."""
    return bool(discovery._flags("lo") & 0x1000)  # the flag the server reads


@pytest.fixture
def lan() -> Iterator[Lan]:
    """Two machines on one link; on loopback where namespaces cannot be made and `lo` has multicast."""
    with ExitStack() as stack:
        try:
            made = stack.enter_context(two_machines())
        except NamespaceUnavailable as err:
            if not _multicast_loopback():
                pytest.skip(f"{err}; and lo has no multicast for the loopback fallback")
            made = Lan(LOOPBACK, LOOPBACK)
        yield made


def _on(machine: Machine) -> AbstractContextManager[None]:
    """Make sockets on `machine` meanwhile (a no-op on loopback)."""
    return machine.entered() if machine.namespace else nullcontext()


def _bind(machine: Machine, wildcard: bool = True) -> str:
    """The bind address of a server on `machine`: the wildcard on a namespace, else loopback."""
    host = "0.0.0.0" if wildcard and machine.namespace else machine.address
    return f"{host}:{free_port()}"


def _mdns(machine: Machine) -> bool | str:
    """`auto` on a LAN; `true` where the fallback binds loopback."""
    return "auto" if machine.namespace else True


@dataclass
class Seen:
    """What the browser knows of one instance."""

    txt: dict[str, str | None]
    port: int
    addresses: list[str]
    removed_at: float | None = None


@dataclass
class Browser:
    """A python-zeroconf browser on the second machine, recording every change it hears."""

    zeroconf: Zeroconf
    seen: dict[str, Seen] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        """Resolve additions and updates; stamp removals with the time they were heard."""
        instance = name.removesuffix("." + SERVICE_TYPE)
        if state_change is ServiceStateChange.Removed:
            if instance in self.seen:
                self.seen[instance].removed_at = time.monotonic()
            self.changed.set()
        else:
            asyncio.ensure_future(self._resolve(name, instance))

    async def _resolve(self, name: str, instance: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if await info.async_request(self.zeroconf, 3000) and info.port is not None:
            self.seen[instance] = Seen(info.decoded_properties, info.port, info.parsed_addresses())
            self.changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = APPEAR_TIMEOUT) -> None:
        """Wait until `condition()` holds, at most `timeout` seconds."""
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


@asynccontextmanager
async def browsing(machine: Machine) -> AsyncIterator[Browser]:
    """Browse `_osnova._tcp` on `machine`'s interface only."""
    with _on(machine):
        aiozc = AsyncZeroconf(interfaces=[machine.address], ip_version=IPVersion.V4Only)
    browser = Browser(aiozc.zeroconf)
    service_browser = AsyncServiceBrowser(aiozc.zeroconf, SERVICE_TYPE, handlers=[browser.on_change])
    try:
        yield browser
    finally:
        await service_browser.async_cancel()
        await aiozc.async_close()


def _server_config(tmp_path: Path, machine: Machine, **sections: dict[str, Any]) -> Config:
    """A test server config for `machine`, logging at info so the advertiser's lines show."""
    discovery_section = {"mdns": _mdns(machine), "name": "osnova-test", **sections.pop("discovery", {})}
    return make_config(
        tmp_path / "state",
        server={"bind_address": _bind(machine)},
        logging={"level": "info", "format": "text"},
        discovery=discovery_section,
        **sections,
    )


def _start(server_process: StartServer, machine: Machine, config_path: Path) -> ServerProcess:
    """`osnova-server serve` on `machine`."""
    return server_process(config_path, prefix=machine.command() if machine.namespace else ())


def _pairing_fingerprint(machine: Machine, config_path: Path) -> str:
    """The fingerprint `osnova-server pair --json` gives on the server's machine."""
    argv = [sys.executable, "-m", "osnova_server", "--config", str(config_path), "pair", "--json"]
    result = run_in(machine, argv) if machine.namespace else subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return str(json.loads(result.stdout)["server"]["fingerprint"])


def _renew(machine: Machine, config_path: Path) -> bytes:
    """`osnova-server cert renew` on the server's machine (it waits until the server serves it)."""
    argv = [sys.executable, "-m", "osnova_server", "--config", str(config_path), "cert", "renew"]
    result = run_in(machine, argv) if machine.namespace else subprocess.run(
        argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "serves it to new connections" in result.stdout, result.stdout
    tls_section = tomllib.loads(config_path.read_text())["tls"]
    return _first_der(Path(tls_section["cert_path"]).read_bytes())


def _first_der(pem: bytes) -> bytes:
    """The DER of the first certificate in a PEM file."""
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def _wait_healthy(machine: Machine, url: str, process: ServerProcess) -> None:
    """Poll the server's /health from its own machine until it answers."""
    with _on(machine):
        process.wait_ready(url)


async def test_second_machine_sees_the_record_with_the_pairing_fingerprint(
    lan: Lan, tmp_path: Path, server_process: StartServer
) -> None:
    """The record names the port, the version, TLS, /rpc and the fingerprint pairing gives;
    `cert renew` (same key) keeps it; a certificate with a new key on SIGHUP changes `fp` to the
    new pairing fingerprint."""
    cert, key = tmp_path / "tls" / "server.crt", tmp_path / "tls" / "server.key"
    generate_self_signed(cert, key, [lan.server.address])
    config = _server_config(tmp_path, lan.server, tls={"enabled": True, "cert_path": str(cert), "key_path": str(key)})
    config_path = write_config(tmp_path / "server.toml", config)
    async with browsing(lan.second) as browser:
        process = _start(server_process, lan.server, config_path)
        await browser.wait_for(lambda: "osnova-test" in browser.seen)
        seen = browser.seen["osnova-test"]
        paired = _pairing_fingerprint(lan.server, config_path)

        assert seen.txt == {"fp": paired, "v": __version__, "tls": "1", "path": "/rpc"}
        assert paired == certificate_fingerprint(cert)
        assert seen.port == config.port
        assert seen.addresses == [lan.server.address]

        cert_before = cert.read_bytes()
        renewed_der = _renew(lan.server, config_path)

        assert renewed_der != _first_der(cert_before)
        assert certificate_fingerprint(cert) == paired  # the same key: pairings stay valid
        assert _pairing_fingerprint(lan.server, config_path) == paired
        assert browser.seen["osnova-test"].txt["fp"] == paired

        generate_self_signed(cert, key, [lan.server.address])  # a new key this time
        process.process.send_signal(signal.SIGHUP)
        new_key = certificate_fingerprint(cert)
        await browser.wait_for(lambda: browser.seen["osnova-test"].txt.get("fp") == new_key)

        assert new_key != paired
        assert _pairing_fingerprint(lan.server, config_path) == new_key
    code, err = process.stop()
    assert code == 0, err
    assert err.count("mDNS record of 'osnova-test' updated") == 1, err  # for the new key, not the renewal


async def test_record_disappears_within_five_seconds_of_sigterm(
    lan: Lan, tmp_path: Path, server_process: StartServer
) -> None:
    """Shutdown sends goodbye packets first: the second machine forgets the server at once."""
    config_path = write_config(tmp_path / "server.toml", _server_config(tmp_path, lan.server))
    async with browsing(lan.second) as browser:
        process = _start(server_process, lan.server, config_path)
        await browser.wait_for(lambda: "osnova-test" in browser.seen)
        stopped_at = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        await browser.wait_for(lambda: browser.seen["osnova-test"].removed_at is not None, timeout=GOODBYE_BOUND)

        removed_at = browser.seen["osnova-test"].removed_at
        assert removed_at is not None and removed_at - stopped_at < GOODBYE_BOUND
    code, err = process.stop()
    assert code == 0, err
    assert "mDNS record of 'osnova-test' withdrawn" in err


async def test_a_taken_name_gets_the_next_free_one(lan: Lan, tmp_path: Path, server_process: StartServer) -> None:
    """A second server with the same name on the LAN becomes `osnova-test (2)`, and says so."""
    if not lan.server.namespace:
        pytest.skip("two servers on one loopback interface are not two machines of a LAN")
    first = write_config(tmp_path / "first.toml", _server_config(tmp_path / "a", lan.server))
    second = write_config(tmp_path / "second.toml", _server_config(tmp_path / "b", lan.second))
    # A second machine has a host name of its own (the namespaces share this one's otherwise).
    own_host_name = lan.second.command("unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', "second-host")
    async with browsing(lan.second) as browser:
        _start(server_process, lan.server, first)
        await browser.wait_for(lambda: "osnova-test" in browser.seen)
        later = server_process(second, prefix=own_host_name)
        try:
            await browser.wait_for(lambda: "osnova-test (2)" in browser.seen)
        except TimeoutError:
            raise AssertionError(f"saw {browser.seen}; the second server said {later.stop()[1]}") from None

        assert browser.seen["osnova-test"].addresses == [lan.server.address]
        assert browser.seen["osnova-test (2)"].addresses == [lan.second.address]
    _, err = later.stop()
    assert "mDNS name 'osnova-test' is taken on this network; trying 'osnova-test (2)'" in err
    assert "mDNS record of 'osnova-test (2)' withdrawn" in err


@pytest.mark.parametrize(
    ("mdns", "bind_loopback"),
    [(False, False), ("auto", True)],
    ids=["mdns-false", "auto-on-loopback"],
)
async def test_nothing_is_advertised_when_the_config_says_not_to(
    lan: Lan, tmp_path: Path, server_process: StartServer, mdns: bool | str, bind_loopback: bool
) -> None:
    """`mdns = false` advertises nothing; nor does `auto` on a loopback bind (the same browser
    sees a `true` server, so silence means something)."""
    if not lan.server.namespace:
        pytest.skip("on the loopback fallback every server is on loopback")
    # Loopback in the server's namespace carries multicast, so a record there would be heard.
    run_in(lan.server, ["ip", "link", "set", "lo", "multicast", "on"]).check_returncode()
    host = "127.0.0.1" if bind_loopback else "0.0.0.0"
    quiet = make_config(tmp_path / "quiet", server={"bind_address": f"{host}:{free_port()}"},
                        discovery={"mdns": mdns, "name": "quiet"})
    loud = make_config(tmp_path / "loud", server={"bind_address": f"127.0.0.1:{free_port()}"},
                       discovery={"mdns": True, "name": "loud"})
    on_loopback = Machine(lan.server.namespace, "lo", "127.0.0.1")
    quiet_process = _start(server_process, lan.server, write_config(tmp_path / "quiet.toml", quiet))
    _wait_healthy(lan.server, f"http://127.0.0.1:{quiet.port}", quiet_process)
    async with browsing(lan.second) as lan_browser, browsing(on_loopback) as loopback_browser:
        _start(server_process, lan.server, write_config(tmp_path / "loud.toml", loud))
        await loopback_browser.wait_for(lambda: "loud" in loopback_browser.seen)
        await asyncio.sleep(SILENCE_WINDOW)

        assert "quiet" not in loopback_browser.seen
        assert "quiet" not in lan_browser.seen
        assert "loud" not in lan_browser.seen  # loopback stays on its machine


async def test_a_link_without_multicast_logs_one_warning_and_serves(tmp_path: Path, server_process: StartServer) -> None:
    """No interface of the bind address can carry multicast: one warning, and /health answers."""
    try:
        with two_machines(multicast=False) as lan:
            config = _server_config(tmp_path, lan.server)
            process = _start(server_process, lan.server, write_config(tmp_path / "server.toml", config))
            _wait_healthy(lan.server, f"http://{lan.server.address}:{config.port}", process)
            await asyncio.sleep(1.0)  # the advertising job decides right after start
            code, err = process.stop()
    except NamespaceUnavailable as err:
        pytest.skip(str(err))

    assert code == 0, err
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) == 1, err
    assert re.search(r"not advertised over mDNS: the interfaces 0\.0\.0\.0:\d+ covers \(os\S+\) are down "
                     r"or cannot carry multicast", warnings[0]), warnings
    assert "advertising" not in err


# -- avahi, the browser of most Linux desktops ---------------------------------------------------

AVAHI_TOOLS: Final = ("avahi-daemon", "avahi-browse", "dbus-daemon")
DBUS_CONFIG: Final = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"""
AVAHI_CONFIG: Final = """[server]
use-ipv4=yes
use-ipv6=no
allow-interfaces={interface}
enable-dbus=yes
[wide-area]
enable-wide-area=no
[publish]
disable-publishing=yes
"""


@contextmanager
def avahi_on(machine: Machine, workdir: Path) -> Iterator[dict[str, str]]:
    """A private D-Bus and avahi-daemon on `machine`; yields the environment avahi-browse needs.

    Both run inside the namespace; avahi-daemon gets a fresh /run of its own (its pid file
    lives there), so the host's /run and any host avahi are untouched. Stopped by PID after.
    """
    workdir.mkdir(parents=True)
    bus = workdir / "bus"
    (workdir / "bus.conf").write_text(DBUS_CONFIG.format(socket=bus))
    (workdir / "avahi.conf").write_text(AVAHI_CONFIG.format(interface=machine.interface))
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={bus}"}
    started: list[subprocess.Popen[str]] = []
    try:
        started.append(subprocess.Popen(
            machine.command("dbus-daemon", f"--config-file={workdir / 'bus.conf'}", "--nofork", "--nopidfile"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
        deadline = time.monotonic() + 10
        while not bus.exists():
            assert time.monotonic() < deadline, "dbus-daemon did not start"
            time.sleep(0.02)
        daemon = subprocess.Popen(
            machine.command("sh", "-c", 'mount -t tmpfs osnova-test /run && mkdir /run/avahi-daemon && exec "$@"',
                            "avahi", "avahi-daemon", "-f", str(workdir / "avahi.conf"), "--no-drop-root",
                            "--no-chroot", "--no-rlimits", "--no-proc-title"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        started.append(daemon)
        yield env
    finally:
        for process in reversed(started):
            process.terminate()
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


def _avahi_records(machine: Machine, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """What `avahi-browse -rpt _osnova._tcp` resolves on `machine`: instance name -> TXT."""
    result = subprocess.run(machine.command("avahi-browse", "-r", "-p", "-t", "_osnova._tcp"),
                            capture_output=True, text=True, timeout=30, env=env, check=False)
    records: dict[str, dict[str, str]] = {}
    for line in result.stdout.splitlines():
        fields = line.split(";")
        if fields[0] == "=" and len(fields) >= 10:
            txt = dict(item.strip('"').partition("=")[::2] for item in re.findall(r'"[^"]*"', fields[9]))
            records[fields[3]] = {**txt, "address": fields[7], "port": fields[8]}
    return records


async def test_avahi_on_the_second_machine_sees_the_record_and_its_goodbye(
    tmp_path: Path, server_process: StartServer
) -> None:
    """avahi-browse, what a Linux desktop uses, resolves the same TXT values and sees the goodbye."""
    missing = [tool for tool in AVAHI_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    with ExitStack() as stack:
        try:
            lan = stack.enter_context(two_machines())
        except NamespaceUnavailable as err:
            pytest.skip(f"{err}; avahi-daemon is only started inside a namespace")
        env = stack.enter_context(avahi_on(lan.second, tmp_path / "avahi"))
        config = _server_config(tmp_path, lan.server)
        config_path = write_config(tmp_path / "server.toml", config)
        process = _start(server_process, lan.server, config_path)
        records = await _poll(lambda: _avahi_records(lan.second, env), lambda found: "osnova-test" in found)
        paired = _pairing_fingerprint(lan.server, config_path)

        assert records["osnova-test"] == {"fp": paired, "v": __version__, "tls": "0", "path": "/rpc",
                                          "address": lan.server.address, "port": str(config.port)}

        stopped_at = time.monotonic()
        process.process.send_signal(signal.SIGTERM)
        await _poll(lambda: _avahi_records(lan.second, env), lambda found: "osnova-test" not in found,
                    timeout=GOODBYE_BOUND)

        assert time.monotonic() - stopped_at < GOODBYE_BOUND + 1  # the last browse may end past the bound


async def _poll(ask: Callable[[], Any], done: Callable[[Any], bool], timeout: float = APPEAR_TIMEOUT) -> Any:
    """Ask (in a thread) until `done(answer)`, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await asyncio.to_thread(ask)
        if done(answer):
            return answer
        assert time.monotonic() < deadline, f"still {answer!r} after {timeout} s"
        await asyncio.sleep(0.2)
