"""The method registry: typed async functions declared once, served on /rpc and /ws alike.

A method is an `async def name(ctx: Context, param: type, ...) -> result`. The decorator reads
its signature once, at import, and turns each parameter's type hint into a small checker, so
binding params at call time is a dict walk, and `rpc.discover` is built from the same facts the
binder uses: the documentation cannot drift from the code.
"""

from __future__ import annotations

import inspect
import json
import types
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from osnova_server.errors import Forbidden, InvalidParams
from osnova_server.security.roles import Role
from osnova_server.security.tokens import Scope

T = TypeVar("T")
MethodFunc = Callable[..., Awaitable[Any]]
Checker = Callable[[str, Any], Any]

_MISSING: Final = inspect.Parameter.empty
_TYPE_NAMES: Final = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


@dataclass(frozen=True, slots=True)
class Param:
    """One declared parameter: its name, type hint, checker and default."""

    name: str
    annotation: Any
    check: Checker
    default: Any = _MISSING

    @property
    def required(self) -> bool:
        """Whether a call must give this parameter."""
        return self.default is _MISSING


@dataclass(frozen=True, slots=True)
class Method:
    """A registered RPC method and everything known about it from its declaration."""

    name: str
    func: MethodFunc
    role: Role
    params: tuple[Param, ...]
    result: Any
    summary: str
    description: str
    errors: tuple[type[Exception], ...] = ()
    websocket_only: bool = False
    by_name: Mapping[str, Param] = field(default_factory=dict)
    # The caller roles `role` admits, as a set: the per-call check is one lookup.
    admitted: frozenset[Role] = frozenset()

    def bind(self, params: Any) -> dict[str, Any]:
        """Turn JSON-RPC `params` (array, object or absent) into checked keyword arguments."""
        if params is None:
            params = {}
        if isinstance(params, list):
            if len(params) > len(self.params):
                raise InvalidParams(
                    f"Invalid params: {self.name} takes at most {len(self.params)} "
                    f"positional params, got {len(params)}"
                )
            params = {spec.name: value for spec, value in zip(self.params, params)}
        kwargs: dict[str, Any] = {}
        for key in params:
            if key not in self.by_name:
                raise InvalidParams(f"Invalid params: unexpected param {key!r}")
        for spec in self.params:
            if spec.name in params:
                kwargs[spec.name] = spec.check(spec.name, params[spec.name])
            elif spec.required:
                raise InvalidParams(f"Invalid params: missing required param {spec.name!r}")
        return kwargs

    @property
    def scope(self) -> Scope:
        """The token a caller needs (what `x-scope` published before roles): public, device or admin."""
        if self.role is Role.PUBLIC:
            return Scope.PUBLIC
        return Scope.ADMIN if self.role is Role.ADMIN else Scope.DEVICE

    def authorize(self, caller: Role) -> None:
        """Refuse (-32003) a caller whose role is below the method's; public methods admit anyone."""
        if caller in self.admitted:
            return
        if caller is Role.PUBLIC:
            raise Forbidden(f"{self.name} needs an access token; pair a device or use `osnova-server token`")
        if self.role is Role.ADMIN:
            raise Forbidden(f"{self.name} needs an admin token; get one with `osnova-server token`")
        raise Forbidden(
            f"{self.name} needs an owner device or an admin token; this device is a {caller}, "
            "an owner can change that with devices.setRole"
        )


def has_lone_surrogate(text: str) -> bool:
    """Whether a str holds a UTF-16 surrogate on its own (JSON's `"\\ud800"`), which no UTF-8 can carry."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _no_lone_surrogates(name: str, value: Any) -> None:
    """Refuse (-32602, naming the param) any string inside `value` that holds a lone surrogate."""
    if isinstance(value, str):
        if has_lone_surrogate(value):
            raise InvalidParams(f"Invalid params: {name!r} holds a lone UTF-16 surrogate; send valid Unicode text")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_lone_surrogates(f"{name}[{index}]", item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_lone_surrogates(name, key)
            _no_lone_surrogates(f"{name}.{key}", item)


def _scalar_checker(kind: type) -> Checker:
    """A checker for str, int, float or bool that refuses JSON's look-alikes (true is not 1).

    A whole number written as a float (`60.0`, `6e1`) is an integer: JSON has one number type.
    """

    def check(name: str, value: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind is int and type(value) is float and value.is_integer():
            return int(value)
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            if kind is str:
                _no_lone_surrogates(name, value)
            return value
        raise InvalidParams(f"Invalid params: {name!r} must be {_TYPE_NAMES[kind]}")

    return check


def _checker_for(annotation: Any) -> Checker:
    """Build the checker for a parameter's type hint."""
    if annotation is Any:

        def check_any(name: str, value: Any) -> Any:
            _no_lone_surrogates(name, value)
            return value

        return check_any
    if annotation in _TYPE_NAMES:
        return _scalar_checker(annotation)
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [arg for arg in args if arg is not type(None)]
        if len(inner) != 1:
            raise TypeError(f"unsupported union {annotation!r}")
        check_inner = _checker_for(inner[0])
        return lambda name, value: None if value is None else check_inner(name, value)
    if origin is Literal:
        allowed = args

        def check_literal(name: str, value: Any) -> Any:
            # `True == 1` in Python, so compare types too: JSON's true is not 1.
            if any(type(value) is type(choice) and value == choice for choice in allowed):
                return value
            choices = ", ".join(json.dumps(choice) for choice in allowed)
            raise InvalidParams(f"Invalid params: {name!r} must be one of {choices}")

        return check_literal
    if origin is list or annotation is list:
        check_item = _checker_for(args[0] if args else Any)

        def check_list(name: str, value: Any) -> Any:
            if not isinstance(value, list):
                raise InvalidParams(f"Invalid params: {name!r} must be an array")
            return [check_item(f"{name}[{index}]", item) for index, item in enumerate(value)]

        return check_list
    if origin is dict or annotation is dict:

        def check_dict(name: str, value: Any) -> Any:
            if not isinstance(value, dict):
                raise InvalidParams(f"Invalid params: {name!r} must be an object")
            _no_lone_surrogates(name, value)
            return value

        return check_dict
    raise TypeError(f"unsupported parameter type {annotation!r}")


class Registry:
    """The set of RPC methods, filled by the `method` decorator."""

    __slots__ = ("_methods", "_derived")

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}
        # Things computed from the whole set (the OpenRPC document); dropped on every change.
        self._derived: dict[str, Any] = {}

    def method(
        self,
        name: str,
        *,
        role: Role,
        errors: tuple[type[Exception], ...] = (),
        websocket_only: bool = False,
    ) -> Callable[[MethodFunc], MethodFunc]:
        """Register the decorated `async def f(ctx, ...)` under `name`, callable by `role` and above.

        `role` has no default: every method states who may call it, so none can be forgotten.
        """

        def register(func: MethodFunc) -> MethodFunc:
            if name in self._methods:
                raise ValueError(f"method {name} registered twice")
            self._methods[name] = _describe(name, func, role, errors, websocket_only)
            self._derived.clear()
            return func

        return register

    def get(self, name: str) -> Method | None:
        """The method registered under `name`, if any."""
        return self._methods.get(name)

    def derived(self, key: str, build: Callable[[Registry], T]) -> T:
        """`build(self)`, computed once until the next registration (e.g. the OpenRPC document)."""
        if key not in self._derived:
            self._derived[key] = build(self)
        value: T = self._derived[key]
        return value

    def is_public(self, name: Any) -> bool:
        """Whether `name` is a method anyone may call without a token."""
        method = self._methods.get(name) if isinstance(name, str) else None
        return method is not None and method.role is Role.PUBLIC

    def __iter__(self) -> Iterator[Method]:
        return iter(sorted(self._methods.values(), key=lambda method: method.name))

    def __len__(self) -> int:
        return len(self._methods)


def _describe(
    name: str,
    func: MethodFunc,
    role: Role,
    errors: tuple[type[Exception], ...],
    websocket_only: bool,
) -> Method:
    """Read a method's signature, hints and docstring into a `Method`."""
    if not isinstance(role, Role):
        raise TypeError(f"{name}: role must be a Role (who may call it), not {role!r}")
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"{name}: RPC methods must be async functions")
    hints = get_type_hints(func)
    signature = inspect.signature(func)
    declared = list(signature.parameters.values())
    if not declared or declared[0].name != "ctx":
        raise TypeError(f"{name}: the first parameter must be `ctx: Context`")
    for p in declared[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise TypeError(f"{name}: parameter {p.name} must be an ordinary named parameter")
        if p.name not in hints:
            raise TypeError(f"{name}: parameter {p.name} needs a type hint")
    params = tuple(
        Param(p.name, hints[p.name], _checker_for(hints[p.name]), p.default) for p in declared[1:]
    )
    doc = inspect.getdoc(func) or name
    summary, _, description = doc.partition("\n")
    return Method(
        name=name,
        func=func,
        role=role,
        params=params,
        result=hints.get("return", Any),
        summary=summary.strip(),
        description=description.strip(),
        errors=errors,
        websocket_only=websocket_only,
        by_name={param.name: param for param in params},
        admitted=frozenset(caller for caller in Role if role.admits(caller)),
    )


def is_optional(annotation: Any) -> bool:
    """Whether a hint admits None."""
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


__all__ = ["Method", "Param", "Registry", "is_optional"]
