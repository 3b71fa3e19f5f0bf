"""The JWT signing secret: from the environment, the config, or a file made on first start."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from osnova_server.config import MIN_SECRET_BYTES, SAMPLE_SECRET, Config, ConfigError
from osnova_server.files import create_file, make_private_dirs

_LOGGER = logging.getLogger(__name__)

ENV_SECRET: Final = "OSNOVA_JWT_SECRET"


class SecretUnreadable(ConfigError):
    """The secret file exists but this process cannot read it (wrong user, a directory...)."""


def write_secret_file(path: Path) -> None:
    """Create `path` holding 64 random hex characters (256 bits), mode 0600, never overwriting."""
    make_private_dirs(path.parent)
    create_file(path, (secrets.token_hex(32) + "\n").encode(), 0o600)


def _check(secret: str, where: str) -> bytes:
    """Refuse a secret that is the sample or too short to sign tokens safely."""
    if secret == SAMPLE_SECRET:
        raise ConfigError([
            (
                f"the JWT secret from {where} is the sample value {SAMPLE_SECRET!r}; "
                "remove it to use a generated one, or set a random one of at least 32 bytes"
            )
        ])
    encoded = secret.encode("utf-8")
    if len(encoded) < MIN_SECRET_BYTES:
        raise ConfigError([
            (
                f"the JWT secret from {where} is {len(encoded)} bytes; it must be at least "
                f"{MIN_SECRET_BYTES} (make one with `openssl rand -hex 32`)"
            )
        ])
    return encoded


def configured_secret(config: Config, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The secret set by $OSNOVA_JWT_SECRET, `jwt_secret` or an existing secret file, checked."""
    env = os.environ if environ is None else environ
    from_env = env.get(ENV_SECRET, "").strip()
    if from_env:
        return _check(from_env, f"${ENV_SECRET}")
    from_config = config.auth.jwt_secret.strip()
    if from_config:
        return _check(from_config, "[auth] jwt_secret")
    path = config.secret_file
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError([f"JWT secret file {path} is not text; delete it to have a new one generated"]) from None
    except OSError as err:
        if isinstance(err, IsADirectoryError):
            problem = f"JWT secret file {path} is a directory; remove it or point [auth] jwt_secret_file at a file"
        else:
            problem = (
                f"JWT secret file {path} cannot be read ({err.strerror}); "
                "run as the server's user, or fix its owner and mode (0600)"
            )
        raise SecretUnreadable([problem]) from None
    if not text:
        raise ConfigError([f"JWT secret file {path} is empty; delete it to have a new one generated"])
    return _check(text, f"the file {path}")


def load_or_create_secret(config: Config, environ: Mapping[str, str] | None = None) -> bytes:
    """The signing secret; on first start with none set, generate the secret file and use it."""
    secret = configured_secret(config, environ)
    if secret is not None:
        return secret
    path = config.secret_file
    try:
        write_secret_file(path)
    except FileExistsError:
        pass  # another process made it between our read and our write; use theirs
    except OSError as err:
        raise ConfigError([f"cannot create JWT secret file {path}: {err.strerror}"]) from None
    _LOGGER.info("generated a new JWT secret in %s", path)
    loaded = configured_secret(config, environ)
    assert loaded is not None
    return loaded
