"""The pairing QR code as an SVG image the page can show under its strict CSP.

The CSP (`default-src 'self'`) admits neither inline markup from script nor `data:` or `blob:`
images, so the QR is a same-origin image URL. Its text (the pairing payload, which holds the
code) is sealed into that URL with Fernet, keyed from the JWT secret: the image needs no server
state (any process of a cluster can draw it), and the access log, which records URLs, shows only
ciphertext. A sealed URL works for an hour, the longest a pairing code lives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
from typing import Final

from cryptography.fernet import Fernet, InvalidToken

_KEY_LABEL: Final = b"osnova admin qr v1"
SEALED_LIFETIME: Final = 3600
# A pairing payload is about 250 bytes; anything far longer is not one.
MAX_TEXT_CHARS: Final = 2048


class QrSeal:
    """Seals QR texts into URL-safe tokens and opens them again."""

    __slots__ = ("_fernet",)

    def __init__(self, secret: bytes) -> None:
        key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, text: str) -> str:
        """An opaque, URL-safe token holding `text`."""
        return self._fernet.encrypt(text.encode()).decode("ascii")

    def open(self, token: str) -> str | None:
        """The text a token holds, or None if it is forged, mangled or older than an hour."""
        try:
            return self._fernet.decrypt(token.encode("ascii"), ttl=SEALED_LIFETIME).decode()
        except (InvalidToken, UnicodeError, ValueError):
            return None


def qr_svg(text: str) -> bytes:
    """`text` as a QR code in an SVG document (dark modules on white, with the quiet zone)."""
    # Imported on first use: qrcode loads its image drawers (Pillow's among them) at import, which
    # start-up need not wait for.
    import qrcode  # type: ignore[import-untyped]  # no stubs published
    import qrcode.image.svg  # type: ignore[import-untyped]

    image = qrcode.make(text, image_factory=qrcode.image.svg.SvgPathFillImage, border=4)
    out = io.BytesIO()
    image.save(out)
    return out.getvalue()
