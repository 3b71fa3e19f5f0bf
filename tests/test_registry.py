"""The method registry and the dispatcher that runs it: binding, type checks, roles, failures.

These use their own Registry and Dispatcher with methods declared here, so a method that fails
on purpose never ships in the product.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Literal, cast

import pytest

from osnova_server.errors import NotFound
from osnova_server.rpc import protocol
from osnova_server.rpc.context import Context
from osnova_server.rpc.protocol import BATCH_CONCURRENCY, UNKNOWN_METHOD, Dispatcher
from osnova_server.rpc.registry import Registry
from osnova_server.security.roles import Role
from osnova_server.security.tokens import Claims, Scope, TokenAuthority

SECRET_IN_FAILURE = "hunter2-do-not-leak"
UNBOUNDED = 1 << 40  # an answer budget no test reaches

registry = Registry()


@registry.method("echo.args", role=Role.MEMBER)
async def echo_args(
    ctx: Context, name: str, count: int = 1, tags: list[str] | None = None, ratio: float = 0.5,
) -> dict[str, Any]:
    """Return the bound arguments, so a test sees exactly what binding produced."""
    return {"name": name, "count": count, "tags": tags, "ratio": ratio}


@registry.method("echo.kinds", role=Role.MEMBER)
async def echo_kinds(
    ctx: Context, flag: bool, mode: Literal["a", "b"], extra: dict[str, Any], anything: Any, items: list[int],
) -> list[Any]:
    """Return the arguments of the other kinds of type hints."""
    return [flag, mode, extra, anything, items]


@registry.method("open.ping", role=Role.PUBLIC)
async def open_ping(ctx: Context) -> str:
    """Answer anyone."""
    return "pong"


@registry.method("admin.only", role=Role.ADMIN)
async def admin_only(ctx: Context) -> str:
    """Answer admins only."""
    return "yes"


@registry.method("events.only", role=Role.MEMBER, websocket_only=True)
async def events_only(ctx: Context) -> str:
    """Answer only on the WebSocket."""
    return ctx.transport


@registry.method("broken.unexpected", role=Role.MEMBER)
async def broken_unexpected(ctx: Context) -> None:
    """Fail the way a bug does."""
    raise RuntimeError(f"database password is {SECRET_IN_FAILURE}")


@registry.method("broken.expected", role=Role.MEMBER, errors=(NotFound,))
async def broken_expected(ctx: Context, thing: str) -> None:
    """Fail the way a service does, with an RpcError."""
    raise NotFound(f"no thing called {thing}; list them with things.list", data={"thing": thing})


@registry.method("broken.result", role=Role.MEMBER)
async def broken_result(ctx: Context) -> Any:
    """Return something JSON cannot carry."""
    return {"when": object()}


_authority = TokenAuthority(b"0123456789abcdef0123456789abcdef", 600)


def claims(scope: Scope) -> Claims:
    """Real verified claims of a fresh token of `scope`."""
    token, _ = _authority.issue(scope, "device-1" if scope is Scope.DEVICE else None)
    return _authority.verify(token)


def context(scope: Scope | None = Scope.DEVICE, transport: str = "http") -> Context:
    """A context for these methods, which never touch the runtime."""
    return Context(
        cast(Any, None), None if scope is None else claims(scope), "127.0.0.1", transport,
        role_of=lambda device_id: Role.MEMBER,
    )


class Observed:
    """Records what the dispatcher reports after each message: the calls that ran in it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.messages: list[list[tuple[str, str]]] = []

    def __call__(self, calls: list[protocol.FinishedCall], ctx: Context) -> None:
        assert all(seconds >= 0 for _, _, seconds, _, _ in calls)
        self.messages.append([(method, outcome) for method, outcome, _, _, _ in calls])
        self.calls.extend(self.messages[-1])


async def call(method: str, params: Any = None, ctx: Context | None = None, dispatcher: Dispatcher | None = None) -> Any:
    """Run one request with id 1 and return its answer."""
    request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": 1}
    if params is not None:
        request["params"] = params
    return await (dispatcher or Dispatcher(registry)).call(request, ctx or context())


# -- binding --------------------------------------------------------------------------------

SURROGATE = "holds a lone UTF-16 surrogate; send valid Unicode text"

GOOD_BINDINGS = [
    pytest.param({"name": "a", "count": 60.0}, {"name": "a", "count": 60, "tags": None, "ratio": 0.5},
                 id="whole-float-for-int"),
    pytest.param({"name": "a", "count": -6e1}, {"name": "a", "count": -60, "tags": None, "ratio": 0.5},
                 id="exponent-for-int"),
    pytest.param({"name": "\U0001f600 \u00fc"}, {"name": "\U0001f600 \u00fc", "count": 1, "tags": None, "ratio": 0.5},
                 id="astral-and-latin"),
    pytest.param({"name": "a"}, {"name": "a", "count": 1, "tags": None, "ratio": 0.5}, id="name-defaults"),
    pytest.param(["a"], {"name": "a", "count": 1, "tags": None, "ratio": 0.5}, id="position-defaults"),
    pytest.param(["a", 3, ["x", "y"], 2], {"name": "a", "count": 3, "tags": ["x", "y"], "ratio": 2.0},
                 id="all-positional-int-for-float"),
    pytest.param({"ratio": 0.25, "name": "a", "count": 0}, {"name": "a", "count": 0, "tags": None, "ratio": 0.25},
                 id="named-any-order"),
    pytest.param({"name": "a", "tags": None}, {"name": "a", "count": 1, "tags": None, "ratio": 0.5},
                 id="null-for-optional"),
    pytest.param({"name": "a", "tags": []}, {"name": "a", "count": 1, "tags": [], "ratio": 0.5}, id="empty-list"),
    pytest.param({"name": "", "count": -7}, {"name": "", "count": -7, "tags": None, "ratio": 0.5},
                 id="empty-string-negative-int"),
]


async def _spin_until(condition: Callable[[], bool]) -> None:
    """Let the event loop run, turn by turn (100 turns at most, no sleeping), until `condition()` holds."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)


@pytest.mark.parametrize(("params", "expected"), GOOD_BINDINGS)
async def test_params_bind_by_name_or_position(params: Any, expected: dict[str, Any]) -> None:
    answer = await call("echo.args", params)
    assert answer == {"jsonrpc": "2.0", "result": expected, "id": 1}
    assert type(answer["result"]["ratio"]) is float
    assert type(answer["result"]["count"]) is int


async def test_other_hint_kinds_bind() -> None:
    params = {"flag": False, "mode": "b", "extra": {"k": [1]}, "anything": [None, 1.5], "items": [1, 2]}
    answer = await call("echo.kinds", params)
    assert answer["result"] == [False, "b", {"k": [1]}, [None, 1.5], [1, 2]]


BAD_BINDINGS = [
    pytest.param("echo.args", None, "Invalid params: missing required param 'name'", id="absent-params"),
    pytest.param("echo.args", [], "Invalid params: missing required param 'name'", id="too-few"),
    pytest.param("echo.args", ["a", 1, None, 1.0, "x"], "Invalid params: echo.args takes at most 4 positional params, got 5",
                 id="too-many"),
    pytest.param("echo.args", {"name": "a", "nmae": "b"}, "Invalid params: unexpected param 'nmae'", id="unknown-name"),
    pytest.param("echo.args", {"name": 1}, "Invalid params: 'name' must be a string", id="int-for-str"),
    pytest.param("echo.args", {"name": None}, "Invalid params: 'name' must be a string", id="null-for-required"),
    pytest.param("echo.args", {"name": "a", "count": True}, "Invalid params: 'count' must be an integer",
                 id="true-for-int"),
    pytest.param("echo.args", {"name": "a", "count": "1"}, "Invalid params: 'count' must be an integer",
                 id="string-for-int"),
    pytest.param("echo.args", {"name": "a", "count": 1.5}, "Invalid params: 'count' must be an integer",
                 id="fraction-for-int"),
    pytest.param("echo.args", {"name": "a\ud800"}, f"Invalid params: 'name' {SURROGATE}", id="surrogate-str"),
    pytest.param("echo.args", {"name": "a", "tags": ["x", "\udfff"]}, f"Invalid params: 'tags[1]' {SURROGATE}",
                 id="surrogate-list-item"),
    pytest.param("echo.kinds", [True, "a", {"k": ["\ud800"]}, None, []], f"Invalid params: 'extra.k[0]' {SURROGATE}",
                 id="surrogate-in-object"),
    pytest.param("echo.kinds", [True, "a", {"\ud800": 1}, None, []], f"Invalid params: 'extra' {SURROGATE}",
                 id="surrogate-object-key"),
    pytest.param("echo.kinds", [True, "a", {}, "\ud800", []], f"Invalid params: 'anything' {SURROGATE}",
                 id="surrogate-any"),
    pytest.param("echo.args", {"name": "a", "ratio": False}, "Invalid params: 'ratio' must be a number",
                 id="bool-for-float"),
    pytest.param("echo.args", {"name": "a", "tags": "x"}, "Invalid params: 'tags' must be an array",
                 id="string-for-list"),
    pytest.param("echo.args", {"name": "a", "tags": ["x", 2]}, "Invalid params: 'tags[1]' must be a string",
                 id="bad-list-item"),
    pytest.param("echo.kinds", [1, "a", {}, None, []], "Invalid params: 'flag' must be a boolean", id="int-for-bool"),
    pytest.param("echo.kinds", [True, "c", {}, None, []], 'Invalid params: \'mode\' must be one of "a", "b"',
                 id="not-a-choice"),
    pytest.param("echo.kinds", [True, "a", [], None, []], "Invalid params: 'extra' must be an object", id="list-for-dict"),
    pytest.param("echo.kinds", [True, "a", {}, None, [True]], "Invalid params: 'items[0]' must be an integer",
                 id="bool-item-for-int"),
]


@pytest.mark.parametrize(("method", "params", "message"), BAD_BINDINGS)
async def test_bad_params_are_invalid_params_naming_the_param(method: str, params: Any, message: str) -> None:
    answer = await call(method, params)
    assert answer == {"jsonrpc": "2.0", "error": {"code": -32602, "message": message}, "id": 1}


# -- scopes and transports --------------------------------------------------------------------

NEEDS_TOKEN = "needs an access token; pair a device or use `osnova-server token`"
NEEDS_ADMIN = "needs an admin token; get one with `osnova-server token`"
SCOPES = [
    pytest.param("open.ping", None, "pong", None, id="public-anonymous"),
    pytest.param("open.ping", Scope.DEVICE, "pong", None, id="public-device"),
    pytest.param("echo.args", None, None, f"echo.args {NEEDS_TOKEN}", id="device-method-anonymous"),
    pytest.param("admin.only", None, None, f"admin.only {NEEDS_TOKEN}", id="admin-method-anonymous"),
    pytest.param("admin.only", Scope.DEVICE, None, f"admin.only {NEEDS_ADMIN}", id="admin-method-device"),
    pytest.param("admin.only", Scope.ADMIN, "yes", None, id="admin-method-admin"),
]


@pytest.mark.parametrize(("method", "scope", "expected", "refusal"), SCOPES)
async def test_scopes(method: str, scope: Scope | None, expected: Any, refusal: str | None) -> None:
    params = {"name": "a"} if method == "echo.args" else None
    answer = await call(method, params, context(scope))
    if refusal is None:
        assert answer["result"] == expected
    else:
        assert answer["error"] == {"code": -32003, "message": refusal}


@pytest.mark.parametrize(("transport", "expected"), [
    ("ws", {"result": "ws"}),
    ("http", {"error": {"code": -32601, "message": "Method not found: events.only (it is served on the WebSocket /ws only)"}}),
])
async def test_websocket_only_methods(transport: str, expected: dict[str, Any]) -> None:
    answer = await call("events.only", None, context(Scope.DEVICE, transport))
    assert answer == {"jsonrpc": "2.0", **expected, "id": 1}


# -- failures ---------------------------------------------------------------------------------


async def test_unexpected_failure_is_internal_error_without_details_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    observed = Observed()
    dispatcher = Dispatcher(registry, observe=observed)
    request = {"jsonrpc": "2.0", "method": "broken.unexpected", "id": "req-4242"}
    with caplog.at_level(logging.ERROR, logger="osnova_server.rpc.protocol"):
        answer = await dispatcher.call(request, context())
    assert answer is not None
    wire = protocol.encode_answer(answer)
    assert json.loads(wire) == {"jsonrpc": "2.0", "error": {"code": -32603, "message": "Internal error"}, "id": "req-4242"}
    assert SECRET_IN_FAILURE.encode() not in wire
    assert b"Traceback" not in wire and b"RuntimeError" not in wire
    [record] = [r for r in caplog.records if r.name == "osnova_server.rpc.protocol"]
    assert "broken.unexpected" in record.getMessage()
    assert "req-4242" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert "Traceback" in caplog.text
    assert observed.calls == [("broken.unexpected", "internal_error")]


async def test_expected_failure_carries_code_message_and_data() -> None:
    answer = await call("broken.expected", ["gizmo"])
    assert answer["error"] == {
        "code": -32001, "message": "no thing called gizmo; list them with things.list", "data": {"thing": "gizmo"},
    }


async def test_a_result_that_is_not_json_becomes_an_internal_error_for_that_call_only(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = Dispatcher(registry)
    envelope = protocol.decode(
        b'[{"jsonrpc":"2.0","method":"broken.result","id":1},{"jsonrpc":"2.0","method":"open.ping","id":2}]', 100,
    )
    with caplog.at_level(logging.ERROR, logger="osnova_server.rpc.protocol"):
        wire = await dispatcher.respond(envelope, context(), UNBOUNDED)
    assert wire is not None
    assert json.loads(wire) == [
        {"jsonrpc": "2.0", "error": {"code": -32603, "message": "Internal error"}, "id": 1},
        {"jsonrpc": "2.0", "result": "pong", "id": 2},
    ]
    assert "request id 1" in caplog.text


async def test_observer_counts_unknown_methods_under_one_label() -> None:
    observed = Observed()
    dispatcher = Dispatcher(registry, observe=observed)
    for name in ("nope.a", "nope.b", "open.ping"):
        await call(name, None, context(), dispatcher)
    await call("echo.args", {"name": 5}, context(), dispatcher)
    assert observed.calls == [
        (UNKNOWN_METHOD, "method_not_found"), (UNKNOWN_METHOD, "method_not_found"),
        ("open.ping", "ok"), ("echo.args", "invalid_params"),
    ]


async def test_batch_members_run_concurrently_within_the_bound() -> None:
    local = Registry()
    running = 0
    peak = 0
    release = asyncio.Event()

    @local.method("slow.wait", role=Role.MEMBER)
    async def slow_wait(ctx: Context) -> int:
        """Hold a slot until released."""
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return peak

    members = [{"jsonrpc": "2.0", "method": "slow.wait", "id": n} for n in range(BATCH_CONCURRENCY * 3)]
    task = asyncio.ensure_future(Dispatcher(local).respond(protocol.Envelope(members, True), context(), UNBOUNDED))
    await _spin_until(lambda: running == BATCH_CONCURRENCY)
    assert running == BATCH_CONCURRENCY  # that many run at once, and no more
    release.set()
    wire = await task
    assert wire is not None
    answers = json.loads(wire)
    assert peak == BATCH_CONCURRENCY
    assert [answer["id"] for answer in answers] == list(range(BATCH_CONCURRENCY * 3))


async def test_batch_members_that_do_not_wait_run_without_a_task_each() -> None:
    loop = asyncio.get_running_loop()
    created: list[object] = []
    default_factory = loop.get_task_factory()

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs) if default_factory is None else default_factory(loop, coro)

    loop.set_task_factory(counting_factory)
    try:
        members = [{"jsonrpc": "2.0", "method": "echo.args", "params": {"name": f"n{n}"}, "id": n} for n in range(10)]
        wire = await Dispatcher(registry).respond(protocol.Envelope(members, True), context(), UNBOUNDED)
    finally:
        loop.set_task_factory(default_factory)
    assert wire is not None
    assert [answer["result"]["name"] for answer in json.loads(wire)] == [f"n{n}" for n in range(10)]
    assert created == []


async def test_a_waiting_member_keeps_its_task_and_the_members_after_it_run_meanwhile() -> None:
    local = Registry()
    release = asyncio.Event()
    tasks: dict[str, asyncio.Task[Any] | None] = {}
    finished: list[str] = []

    @local.method("slow.timed", role=Role.MEMBER)
    async def slow_timed(ctx: Context, name: str) -> str:
        """Wait under a timeout, which holds the task that entered it."""
        async with asyncio.timeout(0.05):
            await release.wait()  # never set: the timeout ends it
        return name

    @local.method("quick.note", role=Role.MEMBER)
    async def quick_note(ctx: Context, name: str) -> str:
        """Answer at once, saying which task ran it."""
        tasks[name] = asyncio.current_task()
        finished.append(name)
        return name

    members = [
        {"jsonrpc": "2.0", "method": "quick.note", "params": {"name": "first"}, "id": 0},
        {"jsonrpc": "2.0", "method": "slow.timed", "params": {"name": "slow"}, "id": 1},
        {"jsonrpc": "2.0", "method": "quick.note", "params": {"name": "after"}, "id": 2},
        {"jsonrpc": "2.0", "method": "slow.timed", "params": {"name": "slow too"}, "id": 3},
    ]
    own = asyncio.current_task()
    wire = await Dispatcher(local).respond(protocol.Envelope(members, True), context(), UNBOUNDED)
    assert wire is not None
    answers = json.loads(wire)
    assert [answer["id"] for answer in answers] == [0, 1, 2, 3]
    assert answers[0]["result"] == "first" and answers[2]["result"] == "after"
    # Each timeout cancelled only its own member (an internal error), not the batch's task.
    assert answers[1]["error"]["code"] == answers[3]["error"]["code"] == -32603
    assert tasks["first"] is own  # started in the request's task and done there
    assert tasks["after"] is not own  # started while a member before it waited
    assert finished == ["first", "after"]
    assert own is not None and own.cancelling() == 0


async def test_cancelling_a_batch_cancels_the_waiting_member_and_those_after_it() -> None:
    local = Registry()
    cancelled: list[int] = []
    waiting = 0

    @local.method("slow.forever", role=Role.MEMBER)
    async def slow_forever(ctx: Context, n: int) -> int:
        """Wait until cancelled, and say so."""
        nonlocal waiting
        waiting += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    members = [{"jsonrpc": "2.0", "method": "slow.forever", "params": {"n": n}, "id": n} for n in range(3)]
    task = asyncio.ensure_future(Dispatcher(local).respond(protocol.Envelope(members, True), context(), UNBOUNDED))
    await _spin_until(lambda: waiting == 3)
    assert waiting == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(10):
        await asyncio.sleep(0)
    assert sorted(cancelled) == [0, 1, 2]


async def test_a_batch_is_observed_once_with_its_calls_in_the_order_they_ended() -> None:
    observed = Observed()
    members: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "method": "open.ping", "id": 0},
        {"jsonrpc": "2.0", "method": "nope.nothing", "id": 1},
        {"jsonrpc": "2.0", "method": "echo.args", "params": {"name": 5}, "id": 2},
        {"jsonrpc": "2.0", "method": "open.ping"},  # a notification is a call too
    ]
    wire = await Dispatcher(registry, observe=observed).respond(protocol.Envelope(members, True), context(), UNBOUNDED)
    assert wire is not None and len(json.loads(wire)) == 3
    assert observed.messages == [[
        ("open.ping", "ok"), (UNKNOWN_METHOD, "method_not_found"), ("echo.args", "invalid_params"), ("open.ping", "ok"),
    ]]


async def test_a_batch_cut_short_reports_the_calls_that_ended() -> None:
    local = Registry()
    waiting = 0
    stubborn = asyncio.Event()

    @local.method("quick.ping", role=Role.MEMBER)
    async def quick_ping(ctx: Context) -> str:
        """Answer at once."""
        return "pong"

    @local.method("slow.forever", role=Role.MEMBER)
    async def slow_forever(ctx: Context) -> int:
        """Wait until cancelled."""
        nonlocal waiting
        waiting += 1
        await asyncio.Event().wait()
        return 0

    @local.method("slow.stubborn", role=Role.MEMBER)
    async def slow_stubborn(ctx: Context) -> str:
        """Wait, and end anyway when cancelled: it ends after its batch was reported."""
        nonlocal waiting
        waiting += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            stubborn.set()
        return "late"

    observed = Observed()
    names = ["quick.ping", "quick.ping", "slow.forever", "quick.ping", "slow.stubborn"]
    members = [{"jsonrpc": "2.0", "method": name, "id": n} for n, name in enumerate(names)]
    dispatcher = Dispatcher(local, observe=observed)
    task = asyncio.ensure_future(dispatcher.respond(protocol.Envelope(members, True), context(), UNBOUNDED))
    await _spin_until(lambda: waiting == 2)
    assert waiting == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(stubborn.wait(), 5)
    for _ in range(10):
        await asyncio.sleep(0)
    # The three quick members ended and are reported with the batch; the cancelled one never
    # ended; the one that ended after the report is reported on its own.
    assert observed.messages == [[("quick.ping", "ok")] * 3, [("slow.stubborn", "ok")]]


# -- declaration --------------------------------------------------------------------------------


def test_methods_iterate_sorted_and_describe_themselves() -> None:
    names = [method.name for method in registry]
    assert names == sorted(names)
    method = registry.get("echo.args")
    assert method is not None
    assert [(p.name, p.required) for p in method.params] == [
        ("name", True), ("count", False), ("tags", False), ("ratio", False),
    ]
    assert method.summary == "Return the bound arguments, so a test sees exactly what binding produced."
    assert registry.is_public("open.ping") and not registry.is_public("echo.args") and not registry.is_public(1)


async def _sync_ctx(ctx: Context) -> None:
    """A valid shape, used to check duplicates."""


def test_bad_declarations_are_refused_at_import() -> None:
    local = Registry()
    local.method("dup", role=Role.MEMBER)(_sync_ctx)
    with pytest.raises(ValueError, match="registered twice"):
        local.method("dup", role=Role.MEMBER)(_sync_ctx)

    def not_async(ctx: Context) -> None:
        """Not a coroutine function."""

    async def no_ctx(name: str) -> None:
        """Missing ctx."""

    async def star_args(ctx: Context, *names: str) -> None:
        """Varargs cannot be described."""

    async def no_hint(ctx: Context, name) -> None:  # type: ignore[no-untyped-def]
        """No type hint."""

    async def odd_type(ctx: Context, when: complex) -> None:
        """A type JSON cannot carry."""

    declarations: list[tuple[Any, str]] = [
        (not_async, "must be async"), (no_ctx, "first parameter"), (star_args, "ordinary named parameter"),
        (no_hint, "needs a type hint"), (odd_type, "unsupported parameter type"),
    ]
    for func, message in declarations:
        with pytest.raises(TypeError, match=message):
            local.method("bad", role=Role.MEMBER)(func)
    # Who may call it is part of every declaration: it cannot be left out or misspelt.
    with pytest.raises(TypeError, match="role"):
        local.method("bad")(_sync_ctx)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="role must be a Role"):
        local.method("bad", role="owner")(_sync_ctx)  # type: ignore[arg-type]
    assert local.get("bad") is None


def test_derived_values_are_kept_until_a_method_is_added() -> None:
    local = Registry()
    builds: list[int] = []

    def build(reg: Registry) -> int:
        builds.append(len(reg))
        return len(reg)

    assert local.derived("count", build) == 0
    assert local.derived("count", build) == 0
    local.method("one", role=Role.MEMBER)(_sync_ctx)
    assert local.derived("count", build) == 1
    assert builds == [0, 1]


# -- the answer budget ----------------------------------------------------------------------------


@registry.method("big.text", role=Role.MEMBER)
async def big_text(ctx: Context, size: int) -> str:
    """Return `size` characters, so a test controls how large each answer is."""
    return "x" * size


def big_batch(count: int, size: int) -> protocol.Envelope:
    """A batch of `count` big.text calls, ids 0 to count - 1."""
    return protocol.Envelope(
        [{"jsonrpc": "2.0", "method": "big.text", "params": [size], "id": n} for n in range(count)], True,
    )


def too_large(limit: int, request_id: Any) -> dict[str, Any]:
    """The -32007 answer for a budget of `limit` bytes."""
    return {"jsonrpc": "2.0", "id": request_id, "error": {
        "code": -32007,
        "message": f"answer too large: it would take this message's answer past [limits] max_response_bytes = "
                   f"{limit} bytes; ask for less in one message (split the batch)",
        "data": {"max_response_bytes": limit},
    }}


@pytest.mark.parametrize("count", [1, 10, BATCH_CONCURRENCY * 2])
async def test_batch_members_past_the_budget_are_answered_answer_too_large(count: int) -> None:
    one = len(protocol.encode_answer({"jsonrpc": "2.0", "result": "x" * 1000, "id": 0})) + 1
    limit = one * 3 + 10  # room for three answers, and a little
    wire = await Dispatcher(registry).respond(big_batch(count, 1000), context(), limit)
    assert wire is not None
    answers = json.loads(wire)
    fitting = min(count, 3)
    assert [answer.get("result") for answer in answers[:fitting]] == ["x" * 1000] * fitting
    assert answers[fitting:] == [too_large(limit, n) for n in range(fitting, count)]
    # What was built for this message: the budget, plus a short error for each member past it.
    assert len(wire) <= limit + 250 * (count - fitting)


async def test_a_single_answer_past_the_budget_is_answer_too_large() -> None:
    request = {"jsonrpc": "2.0", "method": "big.text", "params": {"size": 5000}, "id": "big"}
    wire = await Dispatcher(registry).respond(protocol.Envelope([request], False), context(), 4096)
    assert wire is not None and json.loads(wire) == too_large(4096, "big")
    fits = await Dispatcher(registry).respond(protocol.Envelope([request], False), context(), 6000)
    assert fits is not None and json.loads(fits)["result"] == "x" * 5000


async def test_notifications_take_nothing_from_the_budget() -> None:
    members = [{"jsonrpc": "2.0", "method": "big.text", "params": [3000]} for _ in range(5)]
    members.append({"jsonrpc": "2.0", "method": "big.text", "params": [3000], "id": 9})
    wire = await Dispatcher(registry).respond(protocol.Envelope(members, True), context(), 4096)
    assert wire is not None and [answer["id"] for answer in json.loads(wire)] == [9]
    assert "result" in json.loads(wire)[0]
