"""Two network namespaces joined by a veth pair: a LAN of two machines that the test owns.

Addresses come from 10.231.0.0/16 and exist only inside the namespaces, so whatever the tests
send there (mDNS multicast included) never leaves them. Everything is removed again by the
fixture that made it, even when the test fails.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

CLONE_NEWNET: Final = 0x40000000
_counter = itertools.count(1)


class NamespaceUnavailable(Exception):
    """Network namespaces cannot be made here (not root, no `ip`, or a sandbox forbids it)."""


@dataclass(frozen=True)
class Machine:
    """One side of the LAN: a namespace name, its interface and its address."""

    namespace: str
    interface: str
    address: str

    def command(self, *argv: str) -> list[str]:
        """`argv` run inside this machine's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def python(self, *argv: str) -> list[str]:
        """This interpreter run inside the namespace."""
        return self.command(sys.executable, *argv)

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run this thread in the namespace meanwhile: sockets made here stay on this machine."""
        libc = ctypes.CDLL(None, use_errno=True)
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{self.namespace}", os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into the test namespace failed")
            try:
                yield
            finally:
                if libc.setns(own, CLONE_NEWNET) != 0:  # pragma: no cover - the kernel gave it, it takes it back
                    raise OSError(ctypes.get_errno(), "setns back to the test's own namespace failed")
        finally:
            os.close(own)
            os.close(target)


@dataclass(frozen=True)
class Lan:
    """The server's machine and a second machine on the same link."""

    server: Machine
    second: Machine


def _ip(*argv: str) -> None:
    """Run one `ip` command; a failure becomes NamespaceUnavailable with ip's own words."""
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise NamespaceUnavailable(f"`ip {' '.join(argv)}` failed: {result.stderr.strip()}")


@contextmanager
def two_machines(multicast: bool = True) -> Iterator[Lan]:
    """Make the two namespaces and the veth pair between them; delete them all afterwards."""
    if shutil.which("ip") is None:
        raise NamespaceUnavailable("the `ip` command (iproute2) is not installed")
    if os.geteuid() != 0:
        raise NamespaceUnavailable("making network namespaces needs root")
    number = next(_counter)
    tag = f"{os.getpid() % 100000}x{number}"
    subnet = f"10.231.{(os.getpid() + number) % 250 + 1}"
    server = Machine(f"osnova-s{tag}", f"os{tag}", f"{subnet}.1")
    second = Machine(f"osnova-c{tag}", f"oc{tag}", f"{subnet}.2")
    made: list[str] = []
    try:
        for machine in (server, second):
            _ip("netns", "add", machine.namespace)
            made.append(machine.namespace)
        _ip("link", "add", server.interface, "netns", server.namespace, "type", "veth",
            "peer", "name", second.interface, "netns", second.namespace)
        for machine in (server, second):
            _ip("-n", machine.namespace, "addr", "add", f"{machine.address}/24", "dev", machine.interface)
            _ip("-n", machine.namespace, "link", "set", machine.interface,
                "multicast", "on" if multicast else "off", "up")
            _ip("-n", machine.namespace, "link", "set", "lo", "up")
        yield Lan(server, second)
    finally:
        for namespace in made:
            subprocess.run(["ip", "netns", "delete", namespace], capture_output=True, check=False, timeout=30)


def run_in(machine: Machine, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command on `machine` and capture its output."""
    return subprocess.run(machine.command(*argv), capture_output=True, text=True, timeout=timeout, check=False)
