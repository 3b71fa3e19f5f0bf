"""osnova-server: the home-server daemon of Osnova's client-server mode."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
