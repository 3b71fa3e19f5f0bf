"""The OpenRPC 1.3.2 document of a registry: what `rpc.discover` answers.

Everything in it comes from the facts the registry already holds about each method (its
signature, type hints, docstring, scope and declared errors), so the published API cannot drift
from the code that serves it. The document is built once per registry and reused.
"""

from __future__ import annotations

import json
import types
from typing import Any, Final, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

from osnova_server import __version__
from osnova_server.errors import Forbidden, InternalError, InvalidParams, RateLimited, RpcError, Unauthorized
from osnova_server.rpc.registry import Method, Registry
from osnova_server.security.tokens import Scope

OPENRPC_VERSION: Final = "1.3.2"
TITLE: Final = "osnova-server"
DESCRIPTION: Final = (
    "JSON-RPC 2.0 API of the Osnova home server, served on POST /rpc and on the WebSocket /ws. "
    "Params may be given by name or by position."
)
RESULT_NAME: Final = "result"

_SCALARS: Final[dict[Any, str]] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_NONE: Final = type(None)


def schema_for(annotation: Any) -> dict[str, Any]:
    """The JSON Schema (draft-07) of values of a Python type hint; `{}` when it says nothing."""
    if annotation is Any or annotation is object:
        return {}
    if annotation is None or annotation is _NONE:
        return {"type": "null"}
    if annotation in _SCALARS:
        return {"type": _SCALARS[annotation]}
    if is_typeddict(annotation):
        return _typed_dict_schema(annotation)
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        return _union_schema(args)
    if origin is Literal:
        return {"enum": list(args)}
    if annotation in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset):
        schema: dict[str, Any] = {"type": "array"}
        if origin is tuple and args and args[-1] is not Ellipsis:
            schema["items"] = [schema_for(arg) for arg in args]
        elif args:
            schema["items"] = schema_for(args[0])
        return schema
    if annotation is dict or origin is dict:
        schema = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            schema["additionalProperties"] = schema_for(args[1])
        return schema
    return {}


def _union_schema(args: tuple[Any, ...]) -> dict[str, Any]:
    """`X | Y | None`: a list of types when every member is a plain type, else oneOf."""
    members = [schema_for(arg) for arg in args]
    if all(set(member) == {"type"} and isinstance(member["type"], str) for member in members):
        return {"type": [member["type"] for member in members]}
    return {"oneOf": members}


def _typed_dict_schema(annotation: Any) -> dict[str, Any]:
    """An object schema naming each key of a TypedDict, and which ones are required."""
    hints = get_type_hints(annotation)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {key: schema_for(hint) for key, hint in hints.items()},
    }
    required = sorted(getattr(annotation, "__required_keys__", ()))
    if required:
        schema["required"] = required
    return schema


def _error_objects(method: Method) -> list[dict[str, Any]]:
    """The method's declared errors, then the ones any call of it may meet; one per code."""
    classes: list[type[Exception]] = list(method.errors)
    if method.params:
        classes.append(InvalidParams)
    if method.scope is not Scope.PUBLIC:
        classes.extend((Unauthorized, Forbidden))
    classes.extend((RateLimited, InternalError))
    seen: set[int] = set()
    objects = []
    for cls in classes:
        if not issubclass(cls, RpcError) or cls.code in seen:
            continue
        seen.add(cls.code)
        objects.append({"code": cls.code, "message": cls.default_message})
    return objects


def _default(value: Any) -> tuple[bool, Any]:
    """Whether a parameter's default can be published as JSON, and the value."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False, None
    return True, value


def method_object(method: Method) -> dict[str, Any]:
    """The OpenRPC Method Object of one registered method."""
    params = []
    for param in method.params:
        schema = schema_for(param.annotation)
        if not param.required:
            publishable, value = _default(param.default)
            if publishable:
                schema = {**schema, "default": value}
        params.append({"name": param.name, "required": param.required, "schema": schema})
    described: dict[str, Any] = {"name": method.name}
    if method.summary:
        described["summary"] = method.summary
    if method.description:
        described["description"] = method.description
    described["paramStructure"] = "either"
    described["params"] = params
    described["result"] = {"name": RESULT_NAME, "schema": schema_for(method.result)}
    described["errors"] = _error_objects(method)
    # Specification extensions: who may call it, and where it is served.
    described["x-scope"] = str(method.scope)
    described["x-roles"] = method.role.callers()
    described["x-transports"] = ["ws"] if method.websocket_only else ["http", "ws"]
    return described


def build_document(registry: Registry) -> dict[str, Any]:
    """The whole OpenRPC document: info, then every method sorted by name."""
    return {
        "openrpc": OPENRPC_VERSION,
        "info": {"title": TITLE, "version": __version__, "description": DESCRIPTION},
        "methods": [method_object(method) for method in registry],
    }


def document(registry: Registry) -> dict[str, Any]:
    """The registry's OpenRPC document, built on first use and kept until a method is added."""
    return registry.derived("openrpc", build_document)


__all__ = ["OPENRPC_VERSION", "build_document", "document", "method_object", "schema_for"]
