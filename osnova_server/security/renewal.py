"""Renewing the certificate `init --self-signed` made, by the server itself, before it expires.

A background job (aiojobs) looks at the served certificate at start and every 12 hours. Within
`RENEW_BEFORE` (30 days) of its expiry, a certificate this server made is reissued with the same
key, so the pairing fingerprint (the key's) stays the same and no phone has to pair again; the
new one is served from the next handshake on. A certificate someone else issued is never
touched: the job only warns that it needs renewing where it came from.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from osnova_server.security.tls import (
    RENEW_BEFORE,
    TlsError,
    certificate_not_after,
    generated_by_init,
    renew_self_signed,
)

_LOGGER = logging.getLogger(__name__)

CHECK_INTERVAL: Final = 12 * 3600.0


class CertificateRenewal:
    """The job that keeps the served self-signed certificate from expiring."""

    __slots__ = ("_on_renewed", "_paths", "clock")

    def __init__(
        self,
        paths: Callable[[], tuple[Path, Path]],
        on_renewed: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Read at each check, so a SIGHUP that points [tls] at other files is followed.
        self._paths = paths
        self._on_renewed = on_renewed
        self.clock = clock

    def check(self) -> bool:
        """Renew the certificate if it is ours and due; whether it was (blocking: run in a thread)."""
        cert_path, key_path = self._paths()
        not_after = certificate_not_after(cert_path)
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        if not_after - now > RENEW_BEFORE:
            return False
        if not generated_by_init(cert_path, key_path):
            _LOGGER.warning(
                "TLS certificate %s expires on %s; it was not made by `osnova-server init --self-signed`, "
                "so renew it where it was issued and run `systemctl reload osnova-server`",
                cert_path, not_after.isoformat(),
            )
            return False
        renew_self_signed(cert_path, key_path)
        return True

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        """Check now and then every `interval` seconds, for as long as the server runs."""
        while True:
            try:
                renewed = await asyncio.to_thread(self.check)
            except (TlsError, OSError) as err:
                _LOGGER.warning("cannot renew the TLS certificate (will try again): %s", err)
                renewed = False
            if renewed:
                self._on_renewed()
            await asyncio.sleep(interval)
