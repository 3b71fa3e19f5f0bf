"""TLS for the server: build, hot-reload and self-sign the certificate served on HTTPS and WSS.

Every failure a user can cause (a missing, unreadable or garbled file, a certificate issued for a
different key) becomes one `TlsError` line naming the file and the fix, checked with
`cryptography` before OpenSSL sees the file, so a daemon never shows an OpenSSL error code and
never waits for a passphrase on a terminal.

Reloading keeps the `SSLContext` object the listening socket holds. Loading a new chain into
that context is not enough: OpenSSL keeps one certificate per key type, so after moving from an
EC to an RSA certificate the old EC one would still be chosen for most clients. Instead every
context made here carries a server-name callback, which OpenSSL calls for each handshake (with
or without SNI), and which moves the handshake onto the most recently loaded context.

`cryptography` is imported inside the functions that read or make certificates, not at the top:
its X.509 part costs about 15 ms at start-up (`python -X importtime`), and a server with TLS off
never needs it (tests/test_startup_imports.py holds it to that).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Final

from osnova_server.files import make_private_dirs, replace_file

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "TLS12_CIPHERS",
    "NotRenewable",
    "TlsError",
    "certificate_fingerprint",
    "certificate_not_after",
    "create_ssl_context",
    "generate_self_signed",
    "reload_ssl_context",
    "renew_self_signed",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_VALIDITY_DAYS: Final = 397
"""Browsers and Apple platforms refuse server certificates valid for more than 398 days."""
RENEW_BEFORE: Final = dt.timedelta(days=30)
"""The server renews the certificate `init --self-signed` made this long before it expires."""
GENERATED_NAME_PREFIX: Final = "osnova-server "
"""How the common name of every certificate `generate_self_signed` makes begins."""

_KEY_MODE: Final = 0o600
_CERT_MODE: Final = 0o644
_CLOCK_SKEW: Final = dt.timedelta(minutes=5)
_DEFAULT_NAMES: Final = ("localhost", "127.0.0.1", "::1")
_SELF_SIGNED_HINT: Final = "run `osnova-server init --self-signed` or set [tls] enabled = false"
_KEY_FORMATS: Final = "PKCS#8, PKCS#1 RSA or SEC1 EC"
# TLS 1.2 suites offered: ECDHE key exchange (forward secrecy) with an AEAD cipher only, so no
# CBC suite (Lucky13, padding oracles) and no static RSA key exchange. TLS 1.3 has its own list,
# all of it AEAD, and is left at OpenSSL's default.
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL"


class TlsError(Exception):
    """A certificate or key problem, worded as one line telling the user what to do."""


class _CertificateSwitch:
    """Server-name callback that moves each new handshake onto the latest loaded context."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        """Start with no replacement: handshakes use the context they arrived on."""
        self.current: ssl.SSLContext | None = None

    def __call__(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        """Swap the handshake's context (and with it the certificate) before it is sent."""
        if self.current is not None:
            ssl_object.context = self.current


def create_ssl_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Return a TLS 1.2+ server context serving the PEM chain and key, or raise TlsError."""
    context = _build_context(cert_path, key_path)
    context.sni_callback = _CertificateSwitch()
    return context


def reload_ssl_context(context: ssl.SSLContext, cert_path: Path, key_path: Path) -> None:
    """Make new handshakes on `context` serve the files' certificate; keep the old on error."""
    fresh = _build_context(cert_path, key_path)
    fingerprint = certificate_fingerprint(cert_path)
    _switch_of(context).current = fresh
    _LOGGER.info("TLS certificate reloaded from %s (%s)", cert_path, fingerprint)


def generate_self_signed(
    cert_path: Path,
    key_path: Path,
    hostnames: list[str] | None = None,
    days: int = DEFAULT_VALIDITY_DAYS,
) -> None:
    """Write a new EC P-256 key (0600) and a self-signed certificate (0644) for this host.

    The certificate names localhost, this host's name, 127.0.0.1 and ::1, plus `hostnames`
    (DNS names or IP addresses, e.g. the LAN address devices pair with).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    names = _subject_alt_names([*_DEFAULT_NAMES, socket.gethostname(), *(hostnames or [])])
    certificate = _self_signed_certificate(key, names, days)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    make_private_dirs(key_path.parent)
    make_private_dirs(cert_path.parent)
    replace_file(key_path, key_pem, _KEY_MODE)
    replace_file(cert_path, certificate.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    _LOGGER.info("self-signed certificate written to %s, key to %s", cert_path, key_path)


def certificate_fingerprint(cert_path: Path) -> str:
    """Return the pairing fingerprint of the leaf certificate's public key (see `public_key_fingerprint`)."""
    return public_key_fingerprint(_load_certificates(cert_path)[0])


def public_key_fingerprint(certificate: x509.Certificate) -> str:
    """`sha256:` and the hex SHA-256 of the DER SubjectPublicKeyInfo: what phones pin.

    It names the key, not the certificate, so a renewal with the same key keeps every pairing.
    """
    from cryptography.hazmat.primitives import serialization

    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


class NotRenewable(TlsError):
    """The certificate was not made by `init --self-signed`, so this server must not reissue it."""


def renew_self_signed(cert_path: Path, key_path: Path, days: int = DEFAULT_VALIDITY_DAYS) -> x509.Certificate:
    """Reissue the certificate `generate_self_signed` made, with the same key and names, for `days`.

    Raises NotRenewable for any other certificate (one a CA or the household issued), and
    TlsError when the files cannot be used at all. Blocking: run it in a thread from the loop.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    leaf = _load_certificates(cert_path)[0]
    key = _load_private_key(key_path)
    _check_key_matches(leaf, key, cert_path, key_path)
    reason = _why_not_generated(leaf, key)
    if reason is not None:
        raise NotRenewable(
            f"certificate {cert_path} was not made by `osnova-server init --self-signed` ({reason}); "
            "renew it where it was issued, then run `systemctl reload osnova-server`"
        )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    names = list(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    renewed = _self_signed_certificate(key, names, days, subject=leaf.subject)
    replace_file(cert_path, renewed.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    _LOGGER.info(
        "renewed the self-signed certificate %s with the same key: valid until %s (%s)",
        cert_path, renewed.not_valid_after_utc.isoformat(), public_key_fingerprint(renewed),
    )
    return renewed


def generated_by_init(cert_path: Path, key_path: Path) -> bool:
    """Whether the files are a certificate and key `generate_self_signed` made (and may renew)."""
    leaf = _load_certificates(cert_path)[0]
    return _why_not_generated(leaf, _load_private_key(key_path)) is None


def _why_not_generated(certificate: x509.Certificate, key: PrivateKeyTypes) -> str | None:
    """None for a certificate `generate_self_signed` made; else why it cannot be one of ours."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if certificate.issuer != certificate.subject:
        return f"it was issued by {certificate.issuer.rfc4514_string()}"
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or not str(names[0].value).startswith(GENERATED_NAME_PREFIX):
        return f"its subject {certificate.subject.rfc4514_string()} is not one init writes"
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return "its key is not the EC P-256 key init makes"
    try:
        certificate.verify_directly_issued_by(certificate)
        certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return "it is not signed by its own key with the names init writes"
    return None


def certificate_not_after(cert_path: Path) -> dt.datetime:
    """Return when the leaf certificate expires, as an aware UTC datetime."""
    return _load_certificates(cert_path)[0].not_valid_after_utc


def _switch_of(context: ssl.SSLContext) -> _CertificateSwitch:
    """Return the context's certificate switch, installing one if it has no callback yet."""
    callback = context.sni_callback
    if isinstance(callback, _CertificateSwitch):
        return callback
    if callback is not None:
        raise ValueError("this SSLContext has its own sni_callback; it cannot be reloaded")
    switch = _CertificateSwitch()
    context.sni_callback = switch
    return switch


def _build_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """Validate the files, then load them into a new TLS 1.2+ server context."""
    certificates = _load_certificates(cert_path)
    key = _load_private_key(key_path)
    _check_key_matches(certificates[0], key, cert_path, key_path)
    _warn_if_expired(certificates[0], cert_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    try:
        # The empty password makes an encrypted key fail instead of prompting on a terminal.
        context.load_cert_chain(cert_path, key_path, password=b"")
    except (OSError, ssl.SSLError) as err:
        raise TlsError(
            f"certificate {cert_path} with key {key_path} could not be loaded ({_reason(err)}); "
            f"check both files or {_SELF_SIGNED_HINT}"
        ) from err
    return context


def _read(path: Path, what: str, setting: str) -> bytes:
    """Return a file's bytes, or raise TlsError saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{what} {path} not found; {_SELF_SIGNED_HINT}") from None
    except OSError as err:
        raise TlsError(
            f"{what} {path} cannot be read ({_reason(err)}); make it readable by the server's "
            f"user or set [tls] {setting}"
        ) from None


def _load_certificates(cert_path: Path) -> list[x509.Certificate]:
    """Return the PEM chain in the file, leaf first, or raise TlsError."""
    from cryptography import x509

    data = _read(cert_path, "certificate", "cert_path")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsError(
            f"certificate {cert_path} is not a PEM certificate (-----BEGIN CERTIFICATE-----); "
            f"point [tls] cert_path at one or {_SELF_SIGNED_HINT}"
        ) from None


def _load_private_key(key_path: Path) -> PrivateKeyTypes:
    """Return the unencrypted PEM private key in the file, or raise TlsError."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    data = _read(key_path, "private key", "key_path")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsError(
            f"private key {key_path} is encrypted; the server cannot ask for a passphrase, so "
            f"decrypt it with `openssl pkey -in {key_path} -out {key_path}` (keep it mode 0600)"
        ) from None
    except ValueError:
        raise TlsError(
            f"private key {key_path} is not a PEM private key ({_KEY_FORMATS}); "
            f"point [tls] key_path at one or {_SELF_SIGNED_HINT}"
        ) from None
    except UnsupportedAlgorithm:
        raise TlsError(
            f"private key {key_path} is of a type the server cannot use; use an RSA or EC key "
            f"({_KEY_FORMATS} PEM) or {_SELF_SIGNED_HINT}"
        ) from None


def _check_key_matches(
    certificate: x509.Certificate, key: PrivateKeyTypes, cert_path: Path, key_path: Path
) -> None:
    """Raise TlsError unless the certificate was issued for this private key."""
    from cryptography.hazmat.primitives import serialization

    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise TlsError(
            f"certificate {cert_path} does not match private key {key_path}; set [tls] "
            f"key_path to the key the certificate was issued for, or {_SELF_SIGNED_HINT}"
        )


def _warn_if_expired(certificate: x509.Certificate, cert_path: Path) -> None:
    """Log a warning when the certificate is past its expiry; clients will refuse it."""
    not_after = certificate.not_valid_after_utc
    if not_after < dt.datetime.now(dt.UTC):
        _LOGGER.warning(
            "certificate %s expired on %s; renew it, then reload with `systemctl reload "
            "osnova-server`",
            cert_path,
            not_after.isoformat(),
        )


def _reason(err: OSError) -> str:
    """Return the human part of an OS or OpenSSL error, without codes or file names."""
    if isinstance(err, ssl.SSLError) and err.reason:
        return err.reason.lower().replace("_", " ")
    return (err.strerror or str(err)).lower()


def _subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    """Return the names, deduplicated, as IP address or DNS name entries."""
    from cryptography import x509

    entries: list[x509.GeneralName] = []
    for name in dict.fromkeys(n.strip().lower() for n in names if n.strip()):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _self_signed_certificate(
    key: ec.EllipticCurvePrivateKey, names: list[x509.GeneralName], days: int, subject: x509.Name | None = None,
) -> x509.Certificate:
    """Return a leaf (CA:FALSE) server certificate for `names`, signed by its own key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    subject = subject or x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, f"{GENERATED_NAME_PREFIX}{socket.gethostname()}"[:64]),
    ])
    now = dt.datetime.now(dt.UTC)
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


