"""Every RPC method of the server; `load_registry()` imports the modules that declare them.

Each module in this package covers one domain and declares its methods with
`@REGISTRY.method(...)` at import; adding a module is all it takes to serve its methods.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Final

from osnova_server.rpc.registry import Registry

REGISTRY: Final = Registry()


def load_registry() -> Registry:
    """The registry with every method module of this package imported (idempotent)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return REGISTRY
