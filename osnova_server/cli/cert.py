"""`cert renew` and `rotate-secret`: replace the certificate or the JWT secret, and tell the server.

The running server is found through the state-dir lock, which records its PID, and told with
SIGHUP: the reload it already does for a changed config also loads a renewed certificate (for
new handshakes) and follows a new secret file. The command then checks that the server really
serves the new certificate or accepts the new secret before it says so.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from osnova_server.cli.common import EXIT_OK, EXIT_USAGE, PROG, CommandError, load_config, positive

if TYPE_CHECKING:
    from osnova_server.config import Config

PICK_UP_TIMEOUT: Final = 30.0
_POLL: Final = 0.1


def validity_days(text: str) -> int:
    """argparse type: a certificate lifetime phones accept, 1 to 397 days."""
    from osnova_server.security.tls import DEFAULT_VALIDITY_DAYS

    value = positive(text)
    if value > DEFAULT_VALIDITY_DAYS:
        raise argparse.ArgumentTypeError(f"must be at most {DEFAULT_VALIDITY_DAYS} (phones refuse longer)")
    return value


def signal_server(config: Config) -> int | None:
    """SIGHUP the server holding `config`'s state dir; its PID, or None when none runs.

    A migration or restore holding the lock is no server: SIGHUP would kill it midway, and the file
    just written is read by the next start anyway.
    """
    from osnova_server.statelock import server_pid

    pid = server_pid(config.state_dir)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return None  # it exited between the look and the signal
    except PermissionError:
        raise CommandError(
            f"not allowed to signal the server (PID {pid}); run this as its user, or run "
            "`systemctl reload osnova-server` now"
        ) from None
    return pid


def _wait_until(done: Any, what: str, pid: int) -> None:
    """Poll `done()` until it holds; a CommandError after PICK_UP_TIMEOUT seconds."""
    deadline = time.monotonic() + PICK_UP_TIMEOUT
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(_POLL)
    raise CommandError(f"the running server (PID {pid}) did not {what} within {PICK_UP_TIMEOUT:.0f} s; see its log")


def _served_certificate(config: Config) -> bytes | None:
    """The DER certificate the local server presents to a new handshake, or None if it does not answer."""
    import socket
    import ssl
    from urllib.parse import urlsplit

    from osnova_server.cli.common import local_url

    url = urlsplit(local_url(config))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # compared byte for byte below
    try:
        address = (url.hostname or "127.0.0.1", url.port or 443)
        with socket.create_connection(address, timeout=2) as raw, context.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)
    except OSError:
        return None


def cmd_cert_renew(args: argparse.Namespace) -> int:
    """Renew the self-signed certificate with the same key; the running server serves it at once."""
    from cryptography.hazmat.primitives import serialization

    from osnova_server.security.tls import TlsError, public_key_fingerprint, renew_self_signed

    config = load_config(args)
    if not config.tls.enabled:
        where = config.source or "the embedded defaults"
        raise CommandError(
            f"TLS is off ([tls] enabled = false in {where}), so there is no certificate to renew; "
            f"`{PROG} init --self-signed` makes one", EXIT_USAGE,
        )
    cert_path, key_path = Path(config.tls.cert_path), Path(config.tls.key_path)
    try:
        renewed = renew_self_signed(cert_path, key_path, args.days)
    except TlsError as err:
        raise CommandError(str(err), EXIT_USAGE) from None
    except OSError as err:
        raise CommandError(f"cannot write {cert_path} ({err.strerror}); run this as the server's user") from None
    print(
        f"renewed {cert_path}: valid until {renewed.not_valid_after_utc.strftime('%Y-%m-%dT%H:%M:%SZ')}, "
        f"same key, fingerprint {public_key_fingerprint(renewed)} (pairings stay valid)"
    )
    pid = signal_server(config)
    if pid is None:
        print("no server is running on this state directory; it serves the new certificate when it starts")
        return EXIT_OK
    der = renewed.public_bytes(serialization.Encoding.DER)
    _wait_until(lambda: _served_certificate(config) == der, "serve the renewed certificate", pid)
    print(f"the running server (PID {pid}) serves it to new connections; open ones keep theirs")
    return EXIT_OK


def cmd_rotate_secret(args: argparse.Namespace) -> int:
    """Write a new JWT secret; the running server signs with it at once and refuses older tokens."""
    from osnova_server.files import make_private_dirs, replace_file
    from osnova_server.security.secret import ENV_SECRET
    from osnova_server.security.tokens import generate_secret_hex

    config = load_config(args)
    if os.environ.get(ENV_SECRET, "").strip():
        raise CommandError(
            f"the JWT secret comes from ${ENV_SECRET}; set a new value there (`openssl rand -hex 32`) "
            "and restart the server", EXIT_USAGE,
        )
    if config.auth.jwt_secret.strip():
        raise CommandError(
            f"the JWT secret is written in {config.source} ([auth] jwt_secret); put a new one there "
            "(`openssl rand -hex 32`) and reload, or remove it to use jwt_secret_file", EXIT_USAGE,
        )
    path = config.secret_file
    try:
        make_private_dirs(path.parent)
        replace_file(path, (generate_secret_hex() + "\n").encode("ascii"), 0o600)
    except OSError as err:
        raise CommandError(f"cannot write {path} ({err.strerror}); run this as the server's user") from None
    print(f"wrote a new JWT secret to {path}")
    pid = signal_server(config)
    if pid is None:
        print("no server is running on this state directory; it signs with the new secret when it starts")
        return EXIT_OK
    _wait_until(lambda: _accepts_new_secret(config), "take the new secret", pid)
    print(
        f"the running server (PID {pid}) signs with it: every access token issued before is refused, "
        "devices get new ones with their refresh tokens, outstanding pairing codes are void"
    )
    return EXIT_OK


def _accepts_new_secret(config: Config) -> bool:
    """Whether the server answers an admin token signed with the secret now in the file."""
    from osnova_server.cli.common import call_server

    try:
        call_server(config, "status.get")
    except CommandError:
        return False
    return True


def register(commands: Any) -> None:
    """Add `cert renew` and `rotate-secret`."""
    from osnova_server.cli.common import Parser

    cert = commands.add_parser("cert", help="the server's TLS certificate", description="The server's TLS certificate.")
    actions = cert.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    actions.required = True
    renew = actions.add_parser(
        "renew", help="renew the certificate init made, with the same key",
        description="Renew the self-signed certificate `init --self-signed` made, with the same key and "
                    "names, so every pairing stays valid; the running server serves it at once.",
    )
    renew.add_argument("--days", type=validity_days, default=397, metavar="N",
                       help="how long the new certificate is valid (default and most: 397)")
    renew.set_defaults(func=cmd_cert_renew)
    rotate = commands.add_parser(
        "rotate-secret", help="replace the JWT secret; every access token stops working",
        description="Write a new JWT secret file. The running server signs with it at once: every access "
                    "token (admin and device) is refused, devices get new ones with their refresh tokens, "
                    "outstanding pairing codes are void.",
    )
    rotate.set_defaults(func=cmd_rotate_secret)
