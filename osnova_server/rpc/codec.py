"""JSON in and out of the wire, through orjson when the `speedups` extra is installed.

Both paths agree on what they accept: strict JSON (no NaN), UTF-8 only, nesting bounded. A
100,000-deep document must be a parse error, never a crashed worker, so the stdlib path turns
RecursionError into the same ValueError orjson raises past its own depth limit.
"""

from __future__ import annotations

import json
from typing import Any, Final

try:  # pragma: no cover - depends on the installed extra
    import orjson
except ImportError:  # pragma: no cover
    orjson = None  # type: ignore[assignment]

USING_ORJSON: Final = orjson is not None


def _reject_constant(name: str) -> Any:
    """Refuse NaN and Infinity, which are not JSON."""
    raise ValueError(f"{name} is not valid JSON")


_decoder: Final = json.JSONDecoder(parse_constant=_reject_constant)


def loads(raw: bytes | str) -> Any:
    """Parse JSON; raise ValueError (with a short reason) on anything that is not valid JSON."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as err:
            raise ValueError(str(err).split(":", 1)[0]) from None
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return _decoder.decode(text)
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    except RecursionError:
        raise ValueError("nesting too deep") from None
    except json.JSONDecodeError as err:
        raise ValueError(err.msg) from None


def dumps(value: Any) -> bytes:
    """Serialise an answer to UTF-8 JSON bytes."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass  # e.g. an id beyond 64 bits; the stdlib handles it
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
