"""The configuration: every invalid config is refused with exit 2 and one clear line, by both
`check-config` and `serve`, before anything is created; good configs load, write and round-trip."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Final

import pytest

from osnova_server import config as config_module
from osnova_server.config import Config, ConfigError, parse_bind_address
from osnova_server.security.secret import SecretUnreadable, configured_secret, load_or_create_secret
from osnova_server.security.tls import generate_self_signed
from tests.conftest import TEST_SECRET, cli

REPO: Final = Path(__file__).resolve().parent.parent
SAMPLE: Final = REPO / "etc" / "osnova" / "server.toml"
TLS_FIX: Final = "run `osnova-server init --self-signed` or set [tls] enabled = false"
COMMANDS: Final = ("check-config", "serve")


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """Two self-signed certificates with their keys: a.crt/a.key and b.crt/b.key."""
    files: dict[str, Path] = {}
    for name in ("a", "b"):
        files[f"{name}.crt"], files[f"{name}.key"] = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
        generate_self_signed(files[f"{name}.crt"], files[f"{name}.key"])
    return files


def _write(path: Path, text: str) -> Path:
    """Write a config file and return its path."""
    path.write_text(text, encoding="utf-8")
    return path


def _base(tmp: Path, secret: bool = True) -> str:
    """A valid config: loopback port 0, state in tmp/state, optionally an inline secret."""
    text = f'[server]\nbind_address = "127.0.0.1:0"\nstate_dir = "{tmp / "state"}"\n'
    text += '[logging]\nlevel = "warning"\n'
    if secret:
        text += f'[auth]\njwt_secret = "{TEST_SECRET}"\n'
    return text


def _refused(result: subprocess.CompletedProcess[str]) -> list[str]:
    """Assert a refusal (exit 2, nothing on stdout, no traceback); return the stderr lines."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("osnova-server: ") for line in lines)
    return [line.removeprefix("osnova-server: ") for line in lines]


# -- a config file that does not parse or does not type-check --------------------------------

# (id, extra TOML appended to a valid base, the exact problem line)
BAD_KEYS: Final = [
    (
        "unknown key",
        "[limits]\nmax_size = 5\n",
        re.escape("unknown key [limits] max_size; remove it or fix its spelling (known keys: max_body_bytes, ") + ".*",
    ),
    (
        "unknown section",
        '[database]\npath = "x"\n',
        re.escape("unknown section [database]; remove it or fix its spelling (known sections: server, tls, ") + ".*",
    ),
    (
        "section not a table",
        "cors = 5\n",
        re.escape("cors must be a table: write [cors] on its own line, then its keys below it"),
    ),
    (
        "string for int",
        '[limits]\nmax_batch = "5"\n',
        re.escape('[limits] max_batch must be a whole number, not "5"; write the number without quotes'),
    ),
    ("float for int", "[limits]\nmax_batch = 2.5\n", re.escape("[limits] max_batch must be a whole number, not 2.5")),
    ("bool for int", "[limits]\nmax_batch = true\n", re.escape("[limits] max_batch must be a whole number, not true")),
    ("int for bool", "[tls]\nenabled = 1\n", re.escape("[tls] enabled must be true or false, not 1")),
    (
        "string for bool",
        '[apps]\nallow_http = "true"\n',
        re.escape('[apps] allow_http must be true or false, not "true"; write true or false without quotes'),
    ),
    (
        "int for string",
        "[tls]\ncert_path = 10\n",
        re.escape("[tls] cert_path must be a quoted string, not 10; put the value in double quotes"),
    ),
    (
        "string for number",
        '[rate_limit]\nrequests_per_second = "fast"\n',
        re.escape('[rate_limit] requests_per_second must be a number, not "fast"; write the number without quotes'),
    ),
    (
        "nan for number",
        "[rate_limit]\nrequests_per_second = nan\n",
        re.escape("[rate_limit] requests_per_second must be a finite number, not nan"),
    ),
    (
        "string for list",
        '[cors]\nallowed_origins = "http://a"\n',
        re.escape('[cors] allowed_origins must be a list of quoted strings such as ["a", "b"], not "http://a"'),
    ),
    (
        "list of ints",
        "[metrics]\nallow_from = [1]\n",
        re.escape('[metrics] allow_from must be a list of quoted strings such as ["a", "b"], not [1]'),
    ),
    ("nested table", "[apps.extra]\n", re.escape("unknown key [apps] extra; remove it or fix its spelling") + ".*"),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("extra", "expected"), [case[1:] for case in BAD_KEYS], ids=[case[0] for case in BAD_KEYS])
def test_bad_key_or_type_is_one_line_exit_2(tmp_path: Path, command: str, extra: str, expected: str) -> None:
    """Unknown keys and sections and wrong types: exit 2, the key named, no state created."""
    base = _base(tmp_path, secret=False)
    # A key line goes first, or it would land in the base's last table.
    path = _write(tmp_path / "server.toml", base + extra if extra.startswith("[") else extra + base)
    before = path.read_bytes()
    lines = _refused(cli("--config", str(path), command))
    assert len(lines) == 1 and re.fullmatch(expected, lines[0]), lines
    assert not (tmp_path / "state").exists()
    assert path.read_bytes() == before


def _bind_problem(value: str, reason: str) -> str:
    """The line a bind address that does not parse gets."""
    return f'[server] bind_address {value!r} does not parse ({reason}); use e.g. "127.0.0.1:8080" or "[::]:8080"'


# (id, [server] line, the exact problem line)
BAD_VALUES: Final = [
    ("max_clients 0", "max_clients = 0", "[server] max_clients must be at least 1, not 0; set it to 1 or more"),
    (
        "max_clients negative",
        "max_clients = -3",
        "[server] max_clients must be at least 1, not -3; set it to 1 or more",
    ),
    ("bind without port", 'bind_address = "127.0.0.1"', _bind_problem("127.0.0.1", "expected HOST:PORT")),
    ("bind empty host", 'bind_address = ":8080"', _bind_problem(":8080", "expected HOST:PORT")),
    (
        "bind port too big",
        'bind_address = "127.0.0.1:99999"',
        _bind_problem("127.0.0.1:99999", "port '99999' is not a number from 0 to 65535"),
    ),
    (
        "bind port not a number",
        'bind_address = "127.0.0.1:http"',
        _bind_problem("127.0.0.1:http", "port 'http' is not a number from 0 to 65535"),
    ),
    (
        "bind bad ipv4",
        'bind_address = "1.2.3.4.5:80"',
        _bind_problem("1.2.3.4.5:80", "'1.2.3.4.5' is neither an IP address nor a host name"),
    ),
    (
        "bind bad host name",
        'bind_address = "my_host!:80"',
        _bind_problem("my_host!:80", "'my_host!' is neither an IP address nor a host name"),
    ),
    (
        "bind bare ipv6",
        'bind_address = "::1:8080"',
        _bind_problem("::1:8080", "IPv6 addresses are written [addr]:port"),
    ),
    ("bind bad ipv6", 'bind_address = "[::zz]:8080"', _bind_problem("[::zz]:8080", "'::zz' is not an IPv6 address")),
    (
        "empty state_dir",
        'state_dir = ""',
        '[server] state_dir is empty; set it to a directory such as "/var/lib/osnova"',
    ),
]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("line", "expected"), [case[1:] for case in BAD_VALUES], ids=[case[0] for case in BAD_VALUES])
def test_bad_server_value_is_one_line_exit_2(tmp_path: Path, command: str, line: str, expected: str) -> None:
    """max_clients < 1 and bind addresses that do not parse: exit 2 with the fix, nothing created."""
    text = f'[server]\n{line}\n[auth]\njwt_secret = "{TEST_SECRET}"\n'
    if "state_dir" not in line:
        text = text.replace("[server]\n", f'[server]\nstate_dir = "{tmp_path / "state"}"\n', 1)
    if "bind_address" not in line:
        text = text.replace("[server]\n", '[server]\nbind_address = "127.0.0.1:0"\n', 1)
    path = _write(tmp_path / "server.toml", text)
    assert _refused(cli("--config", str(path), command)) == [expected]
    assert not (tmp_path / "state").exists()


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Several mistakes give one line each, so a user fixes them in one go."""
    path = _write(tmp_path / "server.toml", '[server]\nmax_clients = 0\nbind_address = "x"\n[limits]\nmax_batch = 0\n')
    lines = _refused(cli("--config", str(path), "check-config"))
    assert len(lines) == 3
    assert lines[0].startswith("[server] bind_address 'x' does not parse")
    assert lines[1].startswith("[server] max_clients must be at least 1")
    assert lines[2] == "[limits] max_batch must be at least 1"


# -- the file itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            b"[server\n",
            "is not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 8); fix that line",
        ),
        (
            b"[server]\nmax_clients = 5\nmax_clients = 6\n",
            "is not valid TOML: Cannot overwrite a value (at line 3, column 16); fix that line",
        ),
        (b"\xff\xfe[server]\n", "is not UTF-8 text; save it as UTF-8"),
    ],
    ids=["unclosed table", "duplicate key", "not utf-8"],
)
def test_file_that_is_not_toml(tmp_path: Path, command: str, content: bytes, expected: str) -> None:
    """Invalid TOML names the file, the line and the column."""
    path = tmp_path / "server.toml"
    path.write_bytes(content)
    assert _refused(cli("--config", str(path), command)) == [f"config file {path} {expected}"]
    assert path.read_bytes() == content


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_config_file(tmp_path: Path, command: str) -> None:
    """A config file that does not exist says how to make one, and is not created."""
    path = tmp_path / "nope.toml"
    assert _refused(cli("--config", str(path), command)) == [
        f"config file {path} not found; create one with `osnova-server --config {path} init`"
    ]
    assert not path.exists()


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    """A directory given as the config file is named as such."""
    assert _refused(cli("--config", str(tmp_path), "check-config")) == [
        f"config file {tmp_path} is a directory; pass the path of the .toml file inside it"
    ]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_config_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path: Path, command: str, kind: str) -> None:
    """A FIFO (no writer would ever come) or a device (endless) is refused at once, not read."""
    if kind == "fifo":
        path = tmp_path / "server.toml"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    assert _refused(cli("--config", str(path), command, timeout=20)) == [
        f"config file {path} is not a regular file; pass the path of a .toml file"
    ]


# -- TLS files -----------------------------------------------------------------------------------


def _tls(cert: Path | str, key: Path | str) -> str:
    """A [tls] table turning TLS on with these files."""
    return f'[tls]\nenabled = true\ncert_path = "{cert}"\nkey_path = "{key}"\n'


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "case",
    [
        "missing cert",
        "missing key",
        "key is a directory",
        "cert is a directory",
        "empty cert_path",
        "cert does not match key",
        "cert is not PEM",
    ],
)
def test_unusable_tls_files(tmp_path: Path, tls_files: dict[str, Path], command: str, case: str) -> None:
    """A missing, unreadable, garbled or mismatched certificate or key: exit 2 with the fix."""
    cert, key = tls_files["a.crt"], tls_files["a.key"]
    gone, folder = tmp_path / "gone.pem", tmp_path / "folder"
    folder.mkdir()
    garbled = _write(tmp_path / "garbled.crt", "hello\n")
    path = tmp_path / "server.toml"
    table, expected = {
        "missing cert": (_tls(gone, key), f"certificate {gone} not found; {TLS_FIX}"),
        "missing key": (_tls(cert, gone), f"private key {gone} not found; {TLS_FIX}"),
        "key is a directory": (
            _tls(cert, folder),
            f"private key {folder} is a directory; set [tls] key_path to the PEM file inside it, or {TLS_FIX}",
        ),
        "cert is a directory": (
            _tls(folder, key),
            f"certificate {folder} is a directory; set [tls] cert_path to the PEM file inside it, or {TLS_FIX}",
        ),
        "empty cert_path": (_tls("", key), f"[tls] cert_path is empty in {path}; {TLS_FIX}"),
        "cert does not match key": (
            _tls(cert, tls_files["b.key"]),
            (
                f"certificate {cert} does not match private key {tls_files['b.key']}; set [tls] key_path to the key "
                f"the certificate was issued for, or {TLS_FIX}"
            ),
        ),
        "cert is not PEM": (
            _tls(garbled, key),
            (
                f"certificate {garbled} is not a PEM certificate (-----BEGIN CERTIFICATE-----); "
                f"point [tls] cert_path at one or {TLS_FIX}"
            ),
        ),
    }[case]
    _write(path, _base(tmp_path) + table)
    assert _refused(cli("--config", str(path), command)) == [expected]
    assert not (tmp_path / "state").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway; the directory case covers root")
@pytest.mark.parametrize("command", COMMANDS)
def test_unreadable_key(tmp_path: Path, tls_files: dict[str, Path], command: str) -> None:
    """A key the server's user cannot read is refused at start, not at the first handshake."""
    key = tls_files["a.key"]
    key.chmod(0)
    path = _write(tmp_path / "server.toml", _base(tmp_path) + _tls(tls_files["a.crt"], key))
    assert _refused(cli("--config", str(path), command)) == [
        f"private key {key} is not readable; make it readable by the server's user (mode 0600 for a key) or {TLS_FIX}"
    ]


# -- the JWT secret ------------------------------------------------------------------------------

SHORT: Final = "tooshort-0123456789"  # 19 bytes
SAMPLE_VALUE: Final = "your-secret-key-here"
SHORT_LINE: Final = "is 19 bytes; it must be at least 32 (make one with `openssl rand -hex 32`)"
SAMPLE_LINE: Final = (
    "is the sample value 'your-secret-key-here'; remove it to use a generated one, "
    "or set a random one of at least 32 bytes"
)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("source", "value", "expected"),
    [
        ("config", SHORT, f"the JWT secret from [auth] jwt_secret {SHORT_LINE}"),
        ("config", SAMPLE_VALUE, f"the JWT secret from [auth] jwt_secret {SAMPLE_LINE}"),
        ("env", SHORT, f"the JWT secret from $OSNOVA_JWT_SECRET {SHORT_LINE}"),
        ("env", f"  {SAMPLE_VALUE}\n", f"the JWT secret from $OSNOVA_JWT_SECRET {SAMPLE_LINE}"),
        ("file", SHORT + "\n", "the JWT secret from the file {file} " + SHORT_LINE),
        ("file", SAMPLE_VALUE, "the JWT secret from the file {file} " + SAMPLE_LINE),
        ("file", "  \n", "JWT secret file {file} is empty; delete it to have a new one generated"),
        ("file", None, "JWT secret file {file} is a directory; remove it or point [auth] jwt_secret_file at a file"),
    ],
    ids=[
        "config short",
        "config sample",
        "env short",
        "env sample",
        "file short",
        "file sample",
        "file empty",
        "file is a directory",
    ],
)
def test_unusable_jwt_secret(tmp_path: Path, command: str, source: str, value: str | None, expected: str) -> None:
    """A secret shorter than 32 bytes or equal to the sample, wherever it comes from: exit 2."""
    secret_file = tmp_path / "jwt.secret"
    text = _base(tmp_path, secret=False) + f'[auth]\njwt_secret_file = "{secret_file}"\n'
    env = {"OSNOVA_JWT_SECRET": ""}
    if source == "config":
        text += f'jwt_secret = "{value}"\n'
    elif source == "env":
        assert value is not None
        text += f'jwt_secret = "{TEST_SECRET}"\n'  # the environment wins over a good config value
        env["OSNOVA_JWT_SECRET"] = value
    elif value is None:
        secret_file.mkdir()
    else:
        secret_file.write_text(value)
    path = _write(tmp_path / "server.toml", text)
    assert _refused(cli("--config", str(path), command, env=env)) == [expected.format(file=secret_file)]
    assert not (tmp_path / "state").exists()
    if source == "file" and value is not None:
        assert secret_file.read_text() == value


def test_secret_precedence_env_then_config_then_file(tmp_path: Path) -> None:
    """$OSNOVA_JWT_SECRET beats jwt_secret beats the file; white space around each is dropped."""
    secret_file = tmp_path / "jwt.secret"
    secret_file.write_text("f" * 64 + "\n")
    base = config_module.replace(Config(), "auth", jwt_secret_file=str(secret_file))
    with_config = config_module.replace(base, "auth", jwt_secret=" " + "c" * 40 + " ")
    assert configured_secret(base, {}) == b"f" * 64
    assert configured_secret(with_config, {}) == b"c" * 40
    assert configured_secret(with_config, {"OSNOVA_JWT_SECRET": "e" * 33 + "\n"}) == b"e" * 33
    assert configured_secret(with_config, {"OSNOVA_JWT_SECRET": "  "}) == b"c" * 40  # empty means "not set"


def test_secret_file_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    """With no secret set, the first start writes 64 hex characters (0600); later starts reuse it."""
    secret_file = tmp_path / "deep" / "jwt.secret"
    config = config_module.replace(Config(), "auth", jwt_secret_file=str(secret_file))
    first = load_or_create_secret(config, {})
    assert re.fullmatch(rb"[0-9a-f]{64}", first)
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(secret_file.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(config, {}) == first


def test_unreadable_secret_file_is_its_own_error(tmp_path: Path) -> None:
    """An unreadable secret is told apart from a bad one (the CLI's `token` exits 1 for it)."""
    (tmp_path / "jwt.secret").mkdir()
    config = config_module.replace(Config(), "auth", jwt_secret_file=str(tmp_path / "jwt.secret"))
    with pytest.raises(SecretUnreadable):
        configured_secret(config, {})


# -- choosing the file -------------------------------------------------------------------------


def test_osnova_config_picks_the_file_and_config_option_wins(tmp_path: Path) -> None:
    """$OSNOVA_CONFIG names the file; --config overrides it."""
    good = _write(tmp_path / "good.toml", _base(tmp_path))
    bad = _write(tmp_path / "bad.toml", "[server]\nmax_clients = 0\n")
    from_env = cli("check-config", env={"OSNOVA_CONFIG": str(bad)})
    assert _refused(from_env) == ["[server] max_clients must be at least 1, not 0; set it to 1 or more"]
    good_env = cli("check-config", env={"OSNOVA_CONFIG": str(good)})
    assert (good_env.returncode, good_env.stdout) == (0, "config OK\n")
    wins = cli("--config", str(good), "check-config", env={"OSNOVA_CONFIG": str(bad)})
    assert (wins.returncode, wins.stdout, wins.stderr) == (0, "config OK\n", "")


def test_resolve_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config, then $OSNOVA_CONFIG, then /etc/osnova/server.toml if it exists, then defaults."""
    system = tmp_path / "etc-server.toml"
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG_PATH", system)
    assert config_module.resolve_path(None, {}) is None
    system.write_text("")
    assert config_module.resolve_path(None, {}) == system
    assert config_module.resolve_path(None, {"OSNOVA_CONFIG": "/x.toml"}) == Path("/x.toml")
    assert config_module.resolve_path("/y.toml", {"OSNOVA_CONFIG": "/x.toml"}) == Path("/y.toml")


def test_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No file at all: loopback 8080, TLS off, no CORS origins, state under the XDG state dir."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    config = config_module.load(None)
    assert (config.host, config.port, config.scheme) == ("127.0.0.1", 8080, "http")
    assert config.cors.allowed_origins == []
    assert config.metrics.allow_from == ["127.0.0.0/8", "::1/128"]
    assert config.state_dir == tmp_path / "osnova"
    assert config.secret_file == tmp_path / "osnova" / "jwt.secret"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert config_module.load(None).state_dir == tmp_path / "home" / ".local" / "state" / "osnova"


def test_serve_on_embedded_defaults_creates_private_state(tmp_path: Path) -> None:
    """`serve` with no config binds 127.0.0.1:8080 and makes the state dir 0700, the secret 0600."""
    if config_module.SYSTEM_CONFIG_PATH.exists():
        pytest.skip("/etc/osnova/server.toml exists, so the embedded defaults are not used")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8080))
        except OSError:
            pytest.skip("port 8080 is taken on this machine")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path / "home")}
    for name in ("OSNOVA_CONFIG", "OSNOVA_JWT_SECRET"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "osnova_server", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_health("http://127.0.0.1:8080", process)
        state = tmp_path / "xdg" / "osnova"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        secret = state / "jwt.secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert re.fullmatch(r"[0-9a-f]{64}\n", secret.read_text())
    finally:
        process.terminate()
        _, err = process.communicate(timeout=15)
    assert process.returncode == 0, err


def _wait_for_health(url: str, process: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """Poll /health until it answers 200, failing early if the process dies."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.02)
    raise AssertionError("server did not answer /health")


# -- parsing, writing, the sample -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::]:8080", ("::", 8080)),
        ("[::1]:65535", ("::1", 65535)),
        ("localhost:8080", ("localhost", 8080)),
        ("home-server.lan:443", ("home-server.lan", 443)),
    ],
)
def test_bind_addresses_that_parse(value: str, expected: tuple[str, int]) -> None:
    """IPv4, bracketed IPv6 and host names with a port parse."""
    assert parse_bind_address(value) == expected


def test_write_round_trips_every_key(tmp_path: Path) -> None:
    """write() puts every key of every section in the file, and load() reads back the same config."""
    config = config_module.replace(Config(), "server", state_dir=str(tmp_path), max_clients=7)
    config = config_module.replace(config, "cors", allowed_origins=["https://a.example"])
    path = tmp_path / "server.toml"
    config_module.write(config, path)
    raw = tomllib.loads(path.read_text())
    assert {section: set(keys) for section, keys in raw.items()} == {
        section: set(keys) for section, keys in config_module.to_mapping(Config()).items()
    }
    assert config_module.load(path) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # no secret inside: the service user must read it


def test_write_with_inline_secret_is_private(tmp_path: Path) -> None:
    """A config holding jwt_secret itself is written 0600."""
    path = tmp_path / "server.toml"
    config_module.write(config_module.replace(Config(), "auth", jwt_secret=TEST_SECRET), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*.tmp"))


def test_sample_config_documents_every_key() -> None:
    """etc/osnova/server.toml has every section and key, each block of keys under a comment."""
    raw = tomllib.loads(SAMPLE.read_text())
    defaults = config_module.to_mapping(Config())
    assert {s: set(k) for s, k in raw.items()} == {s: set(k) for s, k in defaults.items()}
    previous = ""
    for line in SAMPLE.read_text().splitlines():
        if re.match(r"[a-z_]+ = ", line):
            assert previous.startswith("#") or re.match(r"[a-z_]+ = ", previous), f"undocumented: {line}"
        previous = line


def test_sample_config_passes_check_config_with_real_paths(tmp_path: Path, tls_files: dict[str, Path]) -> None:
    """The sample is accepted once its certificate and state paths point at real files."""
    text = SAMPLE.read_text()
    text = text.replace("/etc/osnova/certs/server.crt", str(tls_files["a.crt"]))
    text = text.replace("/etc/osnova/certs/server.pk8", str(tls_files["a.key"]))
    text = text.replace("/var/lib/osnova", str(tmp_path / "state"))
    path = _write(tmp_path / "server.toml", text)
    result = cli("--config", str(path), "check-config", env={"OSNOVA_JWT_SECRET": ""})
    assert (result.returncode, result.stdout, result.stderr) == (0, "config OK\n", "")


def test_sample_config_loads_with_tls_off() -> None:
    """The sample's values are the contract's: only its certificate paths are machine-specific."""
    raw = tomllib.loads(SAMPLE.read_text())
    raw["tls"]["enabled"] = False
    config = config_module.from_mapping(raw)
    assert config.server.bind_address == "0.0.0.0:8080"
    assert config.server.max_clients == 5
    assert config.auth.token_expiry == 86400
    assert config.cors.allowed_origins == ["http://localhost:3000"]
    assert (config.rate_limit.requests_per_second, config.rate_limit.burst_size) == (100.0, 200)
    assert (config.logging.level, config.logging.format, config.logging.file) == ("info", "json", "")


def test_config_error_lists_problems() -> None:
    """ConfigError keeps one line per problem."""
    with pytest.raises(ConfigError) as caught:
        config_module.from_mapping({"server": {"max_clients": 0, "idle_timeout": 0}})
    assert caught.value.problems == [
        "[server] max_clients must be at least 1, not 0; set it to 1 or more",
        "[server] idle_timeout must be at least 1 second",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("mdns = true", True), ("mdns = false", False), ('mdns = "auto"', "auto")],
)
def test_discovery_mdns_takes_a_boolean_or_auto(tmp_path: Path, text: str, expected: bool | str) -> None:
    """[discovery] mdns is true, false or "auto"; the three round-trip through the loader."""
    path = _write(tmp_path / "server.toml", f"[discovery]\n{text}\n")
    assert config_module.load(path).discovery.mdns == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('mdns = "yes"', "[discovery] mdns must be true, false or \"auto\", not 'yes'"),
        ("mdns = 1", '[discovery] mdns must be true, false or "auto", not 1'),
    ],
)
def test_discovery_mdns_refuses_anything_else(tmp_path: Path, text: str, problem: str) -> None:
    """Any other value of [discovery] mdns is one clear line."""
    path = _write(tmp_path / "server.toml", f"[discovery]\n{text}\n")
    with pytest.raises(ConfigError) as raised:
        config_module.load(path)
    assert raised.value.problems == [problem]


# -- cluster mode's engine URLs (CONTRACT 8): their syntax is checked, nothing is connected to -------

STORE_FIX: Final = 'use e.g. "postgresql://osnova@127.0.0.1:5432/osnova", or "" for SQLite in state_dir'
REDIS_FIX: Final = 'use e.g. "redis://127.0.0.1:6379/0", or "" for one process'
BAD_URLS: Final = [
    ("store scheme", '[store]\nurl = "mysql://db/osnova"\n',
     f"[store] url must start with postgresql:// or postgres://, not 'mysql://db/osnova'; {STORE_FIX}"),
    ("store no database", '[store]\nurl = "postgresql://osnova@db:5432"\n',
     f"[store] url 'postgresql://osnova@db:5432' names no database (the part after the last /); {STORE_FIX}"),
    ("store bad port", '[store]\nurl = "postgresql://db:99999/osnova"\n',
     f"[store] url 'postgresql://db:99999/osnova' does not parse (Port out of range 0-65535); {STORE_FIX}"),
    ("store password hidden", '[store]\nurl = "postgresql://osnova:hunter2@:5432/osnova"\n',
     f"[store] url 'postgresql://osnova:***@:5432/osnova' names no host; {STORE_FIX}"),
    ("redis scheme", '[cluster]\nredis_url = "http://127.0.0.1:6379"\n',
     f"[cluster] redis_url must start with redis:// or rediss:// or unix://, not 'http://127.0.0.1:6379'; {REDIS_FIX}"),
    ("redis database", '[cluster]\nredis_url = "redis://127.0.0.1:6379/zero"\n',
     f"[cluster] redis_url 'redis://127.0.0.1:6379/zero': the database after the / must be a number such as 0; {REDIS_FIX}"),
]


@pytest.mark.parametrize(("extra", "expected"), [case[1:] for case in BAD_URLS], ids=[case[0] for case in BAD_URLS])
def test_engine_urls_that_do_not_parse_are_one_line_exit_2(tmp_path: Path, extra: str, expected: str) -> None:
    path = _write(tmp_path / "server.toml", _base(tmp_path) + extra)
    assert _refused(cli("--config", str(path), "check-config")) == [expected]
    assert "hunter2" not in expected


@pytest.mark.parametrize("extra", [
    '[store]\nurl = "postgresql://osnova@127.0.0.1:5432/osnova"\n[cluster]\nredis_url = "redis://127.0.0.1:6379/0"\n',
    '[store]\nurl = "postgres:///osnova?host=/run/postgresql"\n',
    '[cluster]\nredis_url = "unix:///run/redis/redis-server.sock"\n',
])
def test_engine_urls_that_parse_are_ok_without_connecting(tmp_path: Path, extra: str) -> None:
    path = _write(tmp_path / "server.toml", _base(tmp_path) + extra)
    done = cli("--config", str(path), "check-config")
    assert (done.returncode, done.stdout.strip()) == (0, "config OK"), done.stderr


@pytest.mark.parametrize("name", ["Living room", "x" * 63, "ж" * 31, "Дом (кухня)"])
def test_discovery_name_takes_one_dns_label_of_utf8(tmp_path: Path, name: str) -> None:
    """Any name of at most 63 bytes of UTF-8 without control characters is a DNS-SD instance name."""
    path = _write(tmp_path / "server.toml", f'[discovery]\nname = "{name}"\n')
    assert config_module.load(path).discovery.name == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("x" * 64, "[discovery] name is 64 bytes of UTF-8; an mDNS name holds at most 63: shorten it"),
        ("ж" * 32, "[discovery] name is 64 bytes of UTF-8; an mDNS name holds at most 63: shorten it"),
        ("tab\\there", "[discovery] name contains a control character; use letters, digits, spaces and punctuation"),
    ],
)
def test_discovery_name_refuses_what_mdns_cannot_carry(tmp_path: Path, name: str, problem: str) -> None:
    """A name too long for one DNS label, or with a control character, is one clear line."""
    path = _write(tmp_path / "server.toml", f'[discovery]\nname = "{name}"\n')
    with pytest.raises(ConfigError) as raised:
        config_module.load(path)
    assert raised.value.problems == [problem]
