"""Real engines for cluster tests: redis-server, PostgreSQL and HAProxy from Debian, on loopback.

Each engine runs in a temp dir on a free 127.0.0.1 port and is stopped by its PID. PostgreSQL's
`initdb` refuses root, so when the tests run as root (CI) the cluster is made and run as the
unprivileged user `osnova-test`, created on first use. A data directory is made once per test
session and copied for each server, since copying is much faster than `initdb`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

PG_USER: Final = "osnova-test"
START_TIMEOUT: Final = 30.0


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries Debian installed, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


def missing(*names: str) -> str | None:
    """Why the cluster tests cannot run here (a binary is missing), or None."""
    for name in names:
        if name == "postgresql":
            if _pg_bin() is None:
                return "PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed"
        elif shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists():
            return f"{name} is not installed"
    return None


def _wait(until: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll `until` every 20 ms; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send `sig` to `pid` and wait for it to be gone (SIGKILL after `timeout`)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# -- Redis ---------------------------------------------------------------------------------------


class RedisServer:
    """One redis-server without persistence; `stop` and `start` again keep the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis:// URL of database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server and wait until it answers."""
        self.process = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.directory), "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _port_open(self.port), f"redis-server on port {self.port} answering")

    def stop(self) -> None:
        """Stop it by PID (all keys are gone: nothing is saved)."""
        if self.process is not None:
            _kill(self.process.pid)
            self.process.wait()
            self.process = None

    def flush(self) -> None:
        """Forget every key (between tests)."""
        subprocess.run(["redis-cli", "-p", str(self.port), "FLUSHALL"], check=True, capture_output=True)


# -- PostgreSQL ----------------------------------------------------------------------------------


def _pg_owner() -> pwd.struct_passwd | None:
    """The unprivileged user PostgreSQL runs as under root (created if needed); None if not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True, capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


def _as_owner(owner: pwd.struct_passwd | None, argv: Sequence[str]) -> list[str]:
    """`argv` run as the PostgreSQL owner (through setpriv) when we are root."""
    if owner is None:
        return list(argv)
    return ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--clear-groups", *argv]


def _chown_tree(path: Path, owner: pwd.struct_passwd | None) -> None:
    """Give `path` and everything under it to the PostgreSQL owner."""
    if owner is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, owner.pw_uid, owner.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), owner.pw_uid, owner.pw_gid, follow_symlinks=False)


def make_pg_template(directory: Path) -> Path:
    """`initdb` once into `directory`/template (trust auth on loopback, no fsync: tests only)."""
    bin_dir = _pg_bin()
    assert bin_dir is not None
    owner = _pg_owner()
    os.chmod(directory, 0o755)
    _chown_tree(directory, owner)
    data = directory / "template"
    subprocess.run(
        _as_owner(owner, [
            str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        ]),
        check=True, capture_output=True, cwd=directory,
    )
    return data


class PostgresServer:
    """One PostgreSQL cluster copied from the session's template, on a free loopback port."""

    def __init__(self, directory: Path, template: Path) -> None:
        self.bin = _pg_bin()
        assert self.bin is not None
        self.owner = _pg_owner()
        self.directory = directory
        self.data = directory / "data"
        self.sockets = directory / "sockets"
        shutil.copytree(template, self.data, symlinks=True)
        self.sockets.mkdir()
        os.chmod(directory, 0o755)
        _chown_tree(directory, self.owner)
        os.chmod(self.data, 0o700)
        self.port = free_port()
        self.pid: int | None = None

    def url(self, database: str = "postgres") -> str:
        """The postgresql:// URL of `database`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start the postmaster (fsync off: tests only) and wait until it accepts connections."""
        options = f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -F -c max_connections=200"
        subprocess.run(
            _as_owner(self.owner, [
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "log"),
                "-o", options, "-w", "-t", str(int(START_TIMEOUT)), "start",
            ]),
            check=True, capture_output=True, cwd=self.directory,
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop it by PID: SIGINT is PostgreSQL's fast shutdown (clients are disconnected)."""
        if self.pid is not None:
            _kill(self.pid, signal.SIGINT, timeout=20)
            self.pid = None

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql as the superuser; its output."""
        psql = self.bin / "psql" if (self.bin / "psql").exists() else Path("/usr/bin/psql")
        done = subprocess.run(
            [str(psql), "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return done.stdout.strip()

    def new_database(self) -> str:
        """A fresh empty database for one test; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)


# -- HAProxy -------------------------------------------------------------------------------------

HAPROXY_CONFIG: Final = """\
global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 60s
    option redispatch
    retries 2
frontend osnova
    bind 127.0.0.1:{port}
    default_backend osnova
backend osnova
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
{servers}
"""


class HAProxy:
    """HAProxy in the foreground, balancing /rpc and /ws over `backends` round robin."""

    def __init__(self, directory: Path, backends: Sequence[int]) -> None:
        self.port = free_port()
        self.config_path = directory / "haproxy.cfg"
        servers = "\n".join(f"    server s{i} 127.0.0.1:{port} check" for i, port in enumerate(backends))
        self.config_path.write_text(HAPROXY_CONFIG.format(port=self.port, servers=servers))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The balanced http:// address."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Check the config, start HAProxy and wait until it listens."""
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        subprocess.run([binary, "-c", "-q", "-f", str(self.config_path)], check=True, capture_output=True)
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _port_open(self.port), f"haproxy on port {self.port} listening")

    def stop(self) -> None:
        """Stop it by PID."""
        if self.process is not None:
            _kill(self.process.pid)
            self.process.wait()
            self.process = None


def scratch_dir() -> Path:
    """A temp dir outside pytest's 0700 tree, so the PostgreSQL user can enter it."""
    path = Path(tempfile.mkdtemp(prefix="osnova-engines-"))
    path.chmod(0o755)
    return path
