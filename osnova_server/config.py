"""The server's configuration: frozen dataclasses read from TOML, checked, and written back.

Loading never half-succeeds: every problem found is collected into one `ConfigError`, whose
lines name the key or path and say how to fix it, so `check-config` can print them all at once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import stat
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_type_hints
from urllib.parse import urlsplit

import tomli_w

from osnova_server.files import replace_file

SYSTEM_CONFIG_PATH: Final = Path("/etc/osnova/server.toml")
SAMPLE_SECRET: Final = "your-secret-key-here"
MIN_SECRET_BYTES: Final = 32
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final = ("json", "text")
# A DNS-SD instance name is one DNS label: at most 63 bytes of UTF-8 (RFC 6763 section 4.1.1).
MAX_INSTANCE_NAME_BYTES: Final = 63
# One DNS label of a host name (RFC 1123); the last label of a name may not be all digits.
_HOST_LABEL: Final = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.IGNORECASE)


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one clear line per problem.

    `partial` is the config as far as it could be built (defaults in place of the bad values),
    so that `check-config` can go on to look at the certificate, the secret and the port.
    """

    def __init__(self, problems: list[str], partial: Config | None = None) -> None:
        self.problems = problems
        self.partial = partial
        super().__init__("; ".join(problems))


def default_state_dir() -> str:
    """The XDG state directory the embedded defaults keep everything in."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "osnova")


@dataclass(frozen=True, slots=True)
class ServerSection:
    """[server]: where to listen and how many clients to hold."""

    bind_address: str = "127.0.0.1:8080"
    max_clients: int = 5
    state_dir: str = field(default_factory=default_state_dir)
    advertised_address: str = ""
    idle_timeout: int = 300
    ws_heartbeat: int = 30
    trusted_proxies: list[str] = field(default_factory=list)
    shutdown_timeout: int = 10
    # Seconds a WebSocket without an Authorization header has to send its `auth` message.
    ws_auth_timeout: float = 10.0
    # Host names accepted in the Host header besides IPs, localhost, this machine's name (also
    # NAME.local) and the advertised host; anything else gets 421 (DNS rebinding).
    allowed_hosts: list[str] = field(default_factory=list)
    max_clients_per_device: int = 2


@dataclass(frozen=True, slots=True)
class TlsSection:
    """[tls]: HTTPS and WSS on the same port."""

    enabled: bool = False
    cert_path: str = ""
    key_path: str = ""


@dataclass(frozen=True, slots=True)
class CorsSection:
    """[cors]: browser origins that may call the API."""

    allowed_origins: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AuthSection:
    """[auth]: how access tokens are signed and how long they live."""

    jwt_secret: str = ""
    jwt_secret_file: str = ""
    token_expiry: int = 86400


@dataclass(frozen=True, slots=True)
class RateLimitSection:
    """[rate_limit]: the token bucket every client draws from."""

    requests_per_second: float = 100.0
    burst_size: int = 200


@dataclass(frozen=True, slots=True)
class LoggingSection:
    """[logging]: level, line format and destination."""

    level: str = "info"
    format: str = "json"
    file: str = ""
    # aiohttp's line per HTTP request; every RPC call has its own audit line either way.
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class LimitsSection:
    """[limits]: the size bounds of what clients may send."""

    max_body_bytes: int = 1_048_576
    max_ws_message_bytes: int = 1_048_576
    max_batch: int = 100
    max_connections: int = 512
    max_connections_per_address: int = 64
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_response_bytes: int = 8_388_608
    max_ws_queue_bytes: int = 8_388_608
    max_concurrent_fetches: int = 4


@dataclass(frozen=True, slots=True)
class AppsSection:
    """[apps]: where app manifests may be fetched from."""

    allow_http: bool = False
    ant_gateway: str = ""
    fetch_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class MetricsSection:
    """[metrics]: who may scrape /metrics."""

    allow_from: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


@dataclass(frozen=True, slots=True)
class BanSection:
    """[ban]: how many failed authentications from one address earn it a ban."""

    enabled: bool = True
    max_failures: int = 10
    window: int = 600
    duration: int = 3600
    # Addresses or networks never banned: local monitoring and the CLI.
    ignore: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])


@dataclass(frozen=True, slots=True)
class StoreSection:
    """[store]: where durable state lives; empty url means SQLite in state_dir."""

    url: str = ""


@dataclass(frozen=True, slots=True)
class ClusterSection:
    """[cluster]: state shared between processes through Redis; empty redis_url means one process."""

    redis_url: str = ""
    instance_name: str = ""


@dataclass(frozen=True, slots=True)
class TracingSection:
    """[tracing]: OpenTelemetry spans, exported over OTLP/HTTP."""

    enabled: bool = False
    otlp_endpoint: str = ""
    service_name: str = "osnova-server"
    sample_ratio: float = 1.0


@dataclass(frozen=True, slots=True)
class DiscoverySection:
    """[discovery]: the mDNS (DNS-SD) advertisement phones find the server by."""

    # "auto": advertise unless bound to loopback only; or true / false.
    mdns: bool | str = "auto"
    # The instance name phones list; empty means this machine's host name.
    name: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; `source` is the file it came from, if any."""

    server: ServerSection = field(default_factory=ServerSection)
    tls: TlsSection = field(default_factory=TlsSection)
    cors: CorsSection = field(default_factory=CorsSection)
    auth: AuthSection = field(default_factory=AuthSection)
    rate_limit: RateLimitSection = field(default_factory=RateLimitSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    apps: AppsSection = field(default_factory=AppsSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    ban: BanSection = field(default_factory=BanSection)
    store: StoreSection = field(default_factory=StoreSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    tracing: TracingSection = field(default_factory=TracingSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    source: Path | None = field(default=None, compare=False)

    @property
    def state_dir(self) -> Path:
        """The directory that holds everything the server keeps."""
        return Path(self.server.state_dir).expanduser()

    @property
    def host(self) -> str:
        """The host part of `bind_address`, without IPv6 brackets."""
        return parse_bind_address(self.server.bind_address)[0]

    @property
    def port(self) -> int:
        """The port part of `bind_address`."""
        return parse_bind_address(self.server.bind_address)[1]

    @property
    def secret_file(self) -> Path:
        """Where the JWT secret is read from, or generated into on first start."""
        if self.auth.jwt_secret_file:
            return Path(self.auth.jwt_secret_file).expanduser()
        return self.state_dir / "jwt.secret"

    @property
    def scheme(self) -> str:
        """`https` when TLS is on, else `http`."""
        return "https" if self.tls.enabled else "http"


_SECTIONS: Final = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "source"}


def parse_bind_address(value: str) -> tuple[str, int]:
    """Split `host:port` or `[v6]:port`; raise ValueError with a reason when it does not parse."""
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ValueError("IPv6 addresses are written [addr]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("IPv6 addresses are written [addr]:port")
        if not _is_host(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return host, int(port_text)


def _is_host(host: str) -> bool:
    """Whether `host` is an IPv4 address or a well-formed DNS host name."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        return (
            len(host) <= 253
            and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit()
        )
    return True


_TYPE_NAMES: Final[dict[Any, str]] = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "a quoted string",
}


# Keys whose value is, or may hold, a secret: a message about its type names the type, not the value.
_SECRET_KEYS: Final = frozenset({"[auth] jwt_secret", "[store] url", "[cluster] redis_url"})


def _shown(where: str, value: Any) -> str:
    """`value` for a message about `where`; for a secret key only what kind of value it is."""
    if where not in _SECRET_KEYS:
        return _toml_repr(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return next((name for kind, name in _TYPE_NAMES.items() if isinstance(value, kind)), "another type")


def _check_type(where: str, value: Any, expected: Any, problems: list[str]) -> Any:
    """Return `value` if it has the TOML type the field expects, else record why not."""
    if expected == bool | str:
        if isinstance(value, (bool, str)):
            return value
        problems.append(f'{where} must be true, false or "auto", not {_toml_repr(value)}')
        return None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in _TYPE_NAMES:
        if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{where} must be a finite number, not {value!r}")
                return None
            return value
        hint = _type_hint(value, expected)
        problems.append(f"{where} must be {_TYPE_NAMES[expected]}, not {_shown(where, value)}{hint}")
        return None
    # list[str]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    problems.append(f'{where} must be a list of quoted strings such as ["a", "b"], not {_toml_repr(value)}')
    return None


def _toml_repr(value: Any) -> str:
    """Show a value on one line the way TOML writes it (true, "5", [1]), not as Python would."""
    if isinstance(value, list):
        return "[" + ", ".join(_toml_repr(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "a table"
    try:
        return tomli_w.dumps({"v": value})[4:].strip()
    except (TypeError, ValueError):
        return repr(value)


def _type_hint(value: Any, expected: Any) -> str:
    """A short fix for the commonest slips: a quoted number or boolean, a number for a boolean."""
    if isinstance(value, str) and expected in (int, float):
        return "; write the number without quotes"
    if isinstance(value, str) and expected is bool and value.lower() in ("true", "false"):
        return "; write true or false without quotes"
    if expected is str and not isinstance(value, (dict, list)):
        return "; put the value in double quotes"
    return ""


def _build_section(name: str, cls: Any, raw: Any, problems: list[str]) -> Any:
    """Build one section dataclass from its TOML table, recording unknown keys and bad types."""
    if not isinstance(raw, Mapping):
        problems.append(f"{name} must be a table: write [{name}] on its own line, then its keys below it")
        return cls()
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            known = ", ".join(hints)
            problems.append(f"unknown key [{name}] {key}; remove it or fix its spelling (known keys: {known})")
            continue
        expected = hints[key]
        checked = _check_type(f"[{name}] {key}", value, list if expected == list[str] else expected, problems)
        if checked is not None:
            values[key] = checked
    return cls(**values)


def from_mapping(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """Build a Config from parsed TOML, raising ConfigError with every problem found."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    hints = get_type_hints(Config)
    for name, table in raw.items():
        if name not in _SECTIONS:
            problems.append(
                f"unknown section [{name}]; remove it or fix its spelling (known sections: {', '.join(_SECTIONS)})"
            )
            continue
        sections[name] = _build_section(name, hints[name], table, problems)
    # Unknown keys and bad types are left out, so what remains is still checked: every problem at once.
    config = Config(**sections, source=source)
    problems.extend(validate(config))
    if problems:
        raise ConfigError(problems, config)
    return config


def validate(config: Config) -> list[str]:
    """Return a line per value that is well-typed but unusable."""
    problems: list[str] = []
    try:
        parse_bind_address(config.server.bind_address)
    except ValueError as err:
        problems.append(
            f"[server] bind_address {config.server.bind_address!r} does not parse ({err}); "
            'use e.g. "127.0.0.1:8080" or "[::]:8080"'
        )
    if config.server.max_clients < 1:
        clients = config.server.max_clients
        problems.append(f"[server] max_clients must be at least 1, not {clients}; set it to 1 or more")
    if not config.server.state_dir.strip():
        problems.append('[server] state_dir is empty; set it to a directory such as "/var/lib/osnova"')
    for key in ("idle_timeout", "ws_heartbeat", "shutdown_timeout"):
        if getattr(config.server, key) < 1:
            problems.append(f"[server] {key} must be at least 1 second")
    if not config.server.ws_auth_timeout > 0:
        problems.append("[server] ws_auth_timeout must be above 0 seconds")
    for proxy in config.server.trusted_proxies:
        problems.extend(_network_problem("[server] trusted_proxies", proxy))
    for proxy in config.metrics.allow_from:
        problems.extend(_network_problem("[metrics] allow_from", proxy))
    if config.auth.token_expiry < 60:
        problems.append("[auth] token_expiry must be at least 60 seconds")
    if config.rate_limit.requests_per_second <= 0 or config.rate_limit.burst_size < 1:
        problems.append("[rate_limit] requests_per_second must be above 0 and burst_size at least 1")
    for key in ("max_body_bytes", "max_ws_message_bytes", "max_batch"):
        if getattr(config.limits, key) < 1:
            problems.append(f"[limits] {key} must be at least 1")
    if config.apps.fetch_timeout <= 0:
        problems.append("[apps] fetch_timeout must be above 0 seconds")
    if config.logging.level.lower() not in LOG_LEVELS:
        problems.append(f"[logging] level must be one of {', '.join(LOG_LEVELS)}, not {config.logging.level!r}")
    if config.logging.format not in LOG_FORMATS:
        problems.append(f"[logging] format must be \"json\" or \"text\", not {config.logging.format!r}")
    if config.ban.max_failures < 1 or config.ban.window < 1 or config.ban.duration < 1:
        problems.append("[ban] max_failures, window and duration must each be at least 1")
    for network in config.ban.ignore:
        problems.extend(_network_problem("[ban] ignore", network))
    if config.server.max_clients_per_device < 1:
        problems.append("[server] max_clients_per_device must be at least 1")
    for key in ("max_connections", "max_connections_per_address", "max_response_bytes",
                "max_ws_queue_bytes", "max_concurrent_fetches"):
        if getattr(config.limits, key) < 1:
            problems.append(f"[limits] {key} must be at least 1")
    for key in ("header_timeout", "body_timeout", "keepalive_timeout"):
        if not getattr(config.limits, key) > 0:
            problems.append(f"[limits] {key} must be above 0 seconds")
    if not 0.0 <= config.tracing.sample_ratio <= 1.0:
        problems.append(f"[tracing] sample_ratio must be from 0.0 to 1.0, not {config.tracing.sample_ratio}")
    problems.extend(_tracing_problems(config.tracing))
    if isinstance(config.discovery.mdns, str) and config.discovery.mdns != "auto":
        problems.append(f'[discovery] mdns must be true, false or "auto", not {config.discovery.mdns!r}')
    problems.extend(_instance_name_problem(config.discovery.name))
    for origin in config.cors.allowed_origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            problems.append(f"[cors] allowed_origins entry {origin!r} must be \"*\" or start with http:// or https://")
    problems.extend(tls_file_problems(config))
    problems.extend(_url_problem(
        "[store] url", config.store.url, ("postgresql", "postgres"), "postgresql://osnova@127.0.0.1:5432/osnova",
    ))
    problems.extend(_url_problem(
        "[cluster] redis_url", config.cluster.redis_url, ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0",
    ))
    return problems


def tls_file_problems(config: Config) -> list[str]:
    """A line per [tls] file that is missing, empty, a directory or unreadable (none with TLS off)."""
    if not config.tls.enabled:
        return []
    where = f" in {config.source}" if config.source else ""
    problems: list[str] = []
    for key, what in (("cert_path", "certificate"), ("key_path", "private key")):
        problems.extend(_tls_file_problem(key, what, getattr(config.tls, key), where))
    return problems


def _url_problem(where: str, url: str, schemes: tuple[str, ...], example: str) -> list[str]:
    """Return a problem line if a non-empty engine URL does not parse as one of `schemes` (syntax only)."""
    if not url:
        return []
    fix = f'use e.g. "{example}", or "" for {"SQLite in state_dir" if "store" in where else "one process"}'
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as err:
        return [f"{where} {redacted_url(url)!r} does not parse ({err}); {fix}"]
    if parts.scheme not in schemes:
        return [f"{where} must start with {' or '.join(s + '://' for s in schemes)}, not {redacted_url(url)!r}; {fix}"]
    if parts.scheme == "unix":
        return [] if parts.path else [f"{where} {url!r} names no socket path; {fix}"]
    query_host = "host=" in parts.query  # libpq: a Unix-socket directory given as ?host=/run/postgresql
    if not parts.hostname and not query_host:
        return [f"{where} {redacted_url(url)!r} names no host; {fix}"]
    if port == 0:
        return [f"{where} {redacted_url(url)!r} has port 0; {fix}"]
    path = parts.path.lstrip("/")
    if parts.scheme.startswith("postgres") and not path:
        return [f"{where} {redacted_url(url)!r} names no database (the part after the last /); {fix}"]
    if parts.scheme.startswith("redis") and path and not path.isdigit():
        return [f"{where} {redacted_url(url)!r}: the database after the / must be a number such as 0; {fix}"]
    return []


def redacted_url(url: str) -> str:
    """An engine URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    user, colon, _ = credentials.partition(":")
    if not at or not colon:
        return url
    return f"{scheme}{sep}{user}:***@{host}"


def _tracing_problems(tracing: TracingSection) -> list[str]:
    """The extra must be installed when tracing is on; the endpoint must be an http(s) URL."""
    problems = []
    endpoint = tracing.otlp_endpoint
    if endpoint:
        try:
            parts = urlsplit(endpoint)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query
        except ValueError:
            valid = False
        if not valid:
            problems.append(
                f"[tracing] otlp_endpoint must be an http:// or https:// URL like "
                f"http://127.0.0.1:4318, not {endpoint!r}"
            )
    if tracing.enabled:
        # Imported only here: osnova_server.tracing pulls in the RPC layer, which every command
        # (`version` too) would otherwise pay for at start while tracing is off.
        from osnova_server.tracing import EXTRA_MISSING, extra_installed

        if not extra_installed():
            problems.append(EXTRA_MISSING)
    return problems


def _instance_name_problem(name: str) -> list[str]:
    """Return a problem line if `name` cannot be a DNS-SD instance name (one DNS label of UTF-8)."""
    if len(name.encode("utf-8")) > MAX_INSTANCE_NAME_BYTES:
        size = len(name.encode("utf-8"))
        return [f"[discovery] name is {size} bytes of UTF-8; an mDNS name holds at most {MAX_INSTANCE_NAME_BYTES}: shorten it"]
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in name):
        return ["[discovery] name contains a control character; use letters, digits, spaces and punctuation"]
    return []


def _tls_file_problem(key: str, what: str, path: str, where: str) -> list[str]:
    """Return a problem line if the [tls] file at `path` cannot be used."""
    fix = "run `osnova-server init --self-signed` or set [tls] enabled = false"
    if not path:
        return [f"[tls] {key} is empty{where}; {fix}"]
    if not os.path.exists(path):
        return [f"{what} {path} not found; {fix}"]
    if os.path.isdir(path):
        return [f"{what} {path} is a directory; set [tls] {key} to the PEM file inside it, or {fix}"]
    if not os.access(path, os.R_OK):
        return [f"{what} {path} is not readable; make it readable by the server's user (mode 0600 for a key) or {fix}"]
    return []


def _network_problem(where: str, value: str) -> list[str]:
    """Return a problem line if `value` is not an IP address or network."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return [f"{where} entry {value!r} is not an IP address or network such as \"192.168.1.0/24\""]
    return []


def resolve_path(cli_path: str | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """Pick the config file: --config, else $OSNOVA_CONFIG, else /etc/osnova/server.toml if present."""
    env = os.environ if environ is None else environ
    if cli_path:
        return Path(cli_path)
    if env.get("OSNOVA_CONFIG"):
        return Path(env["OSNOVA_CONFIG"])
    if SYSTEM_CONFIG_PATH.exists():
        return SYSTEM_CONFIG_PATH
    return None


def load(path: Path | None) -> Config:
    """Read and check the config at `path`, or return the embedded defaults when it is None."""
    if path is None:
        return Config()
    try:
        # Opened without blocking and checked to be a regular file before it is read: a FIFO
        # would wait for a writer forever, a device could be read without end.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(descriptor, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(path)
            if not stat.S_ISREG(mode):
                raise ConfigError([f"config file {path} is not a regular file; pass the path of a .toml file"])
            raw = tomllib.load(handle)
    except FileNotFoundError:
        problem = f"config file {path} not found; create one with `osnova-server --config {path} init`"
        raise ConfigError([problem]) from None
    except PermissionError:
        problem = f"config file {path} is not readable by this user; run as the server's user or fix its mode"
        raise ConfigError([problem]) from None
    except IsADirectoryError:
        raise ConfigError([f"config file {path} is a directory; pass the path of the .toml file inside it"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config file {path} is not UTF-8 text; save it as UTF-8"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"config file {path} is not valid TOML: {err}; fix that line"]) from None
    except OSError as err:
        raise ConfigError([f"config file {path} cannot be read: {err.strerror}"]) from None
    return from_mapping(raw, source=path)


def to_mapping(config: Config) -> dict[str, Any]:
    """The config as TOML-ready tables (every key, so the written file documents itself)."""
    return {name: dataclasses.asdict(getattr(config, name)) for name in _SECTIONS}


def write(config: Config, path: Path) -> None:
    """Write `config` as TOML to `path` atomically.

    The mode is 0600 when the file holds `jwt_secret` itself, else 0644: the service user
    (systemd's DynamicUser) must read a root-owned /etc/osnova/server.toml, and without an
    inline secret there is nothing in it to hide.
    """
    mode = 0o600 if config.auth.jwt_secret else 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, tomli_w.dumps(to_mapping(config)).encode("utf-8"), mode)


def replace(config: Config, section: str, **changes: Any) -> Config:
    """Return a copy of `config` with keys of one section changed."""
    updated = dataclasses.replace(getattr(config, section), **changes)
    return dataclasses.replace(config, **{section: updated})
