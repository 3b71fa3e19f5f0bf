"""JSON-RPC 2.0 framing: decode a message, run its calls through the registry, shape answers.

This module knows the specification and nothing of HTTP or WebSockets; `/rpc` and `/ws` both
call `decode` then `Dispatcher.respond`. Decoding is separate from running so a transport can
look at what a message calls (public methods only? how many members to charge the rate
limiter?) before anything runs.

Answers are encoded as each call finishes, against the message's byte budget
(`[limits] max_response_bytes`): a call whose answer would take the message's answer past it is
answered -32007 instead, so one small request can never make the server hold more than the
budget (plus those short errors) for it, however large each result is.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Final, TypeVar

from osnova_server.errors import (
    AnswerTooLarge,
    InternalError,
    InvalidRequest,
    MethodNotFound,
    ParseError,
    RpcError,
)
from osnova_server.rpc import codec
from osnova_server.rpc.context import Context
from osnova_server.rpc.registry import Registry

_LOGGER = logging.getLogger(__name__)

BATCH_CONCURRENCY: Final = 16
T = TypeVar("T")
UNKNOWN_METHOD: Final = "(unknown)"

# One finished call: method label, outcome, seconds it ran, the wall-clock time it ended, and the
# (trace id, span id) of its span (None without tracing), for its metrics and its audit line.
FinishedCall = tuple[str, str, float, float, tuple[str, str] | None]
# Called once per message with the calls that ran, in the order they ended (a message cut short
# reports the calls that did end); metrics and the audit log hook in here.
CallObserver = Callable[[list[FinishedCall], Context], None]


class Finished(list[FinishedCall]):
    """The calls of one message that have ended; once reported, a late one is reported on its own."""

    # A class default instead of __slots__ and an __init__: one is made per message, and a
    # Python-level __init__ would cost more than the list itself; `reported` is set once.
    reported = False


class Envelope:
    """A decoded message: its members, whether it was a batch, or the error that ends it."""

    __slots__ = ("members", "is_batch", "error")

    def __init__(self, members: list[Any], is_batch: bool, error: RpcError | None = None) -> None:
        self.members = members
        self.is_batch = is_batch
        self.error = error

    @property
    def cost(self) -> int:
        """What the message costs against the rate limiter: one per member."""
        return max(1, len(self.members))

    def method_names(self) -> list[str]:
        """The method each member would run (for the public-methods check).

        Members that are not request objects run nothing (they are answered -32600 whoever
        asks), so they name no method.
        """
        return [m["method"] for m in self.members if isinstance(m, dict) and isinstance(m.get("method"), str)]


def decode(raw: bytes | str, max_batch: int) -> Envelope:
    """Parse one HTTP body or WebSocket frame into an Envelope; never raises."""
    try:
        message = codec.loads(raw)
    except ValueError as err:
        return Envelope([], False, ParseError(f"Parse error: {err}; send one JSON-RPC request, or an array of them."))
    if isinstance(message, list):
        if not message:
            return Envelope([], True, InvalidRequest("Invalid Request: empty batch"))
        if len(message) > max_batch:
            return Envelope(
                [], True,
                InvalidRequest(f"Invalid Request: batch of {len(message)} exceeds the limit of {max_batch}"),
            )
        return Envelope(message, True)
    return Envelope([message], False)


def error_answer(error: RpcError, request_id: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response object."""
    return {"jsonrpc": "2.0", "error": error.to_dict(), "id": request_id}


def encode_answer(answer: dict[str, Any]) -> bytes:
    """One response object as bytes; the one place results become bytes.

    A result that is not JSON (a method returned a datetime, say) must not cost the whole
    answer: only that call turns into -32603, and the log says which request it was.
    """
    try:
        return codec.dumps(answer)
    except (TypeError, ValueError):
        _LOGGER.error("result of request id %r is not JSON: %s", answer.get("id"), type(answer.get("result")).__name__)
        return codec.dumps(error_answer(InternalError(), answer.get("id")))


class AnswerBudget:
    """The bytes one message's answer may still take; `take` encodes within it."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, answer: dict[str, Any]) -> bytes:
        """Encode one response object, or -32007 for its id when it would not fit any more."""
        try:
            encoded = codec.dumps(answer)
        except (TypeError, ValueError):  # not JSON: encode_answer says so, and answers -32603
            encoded = encode_answer(answer)
        # One byte more for the comma or bracket around it in a batch.
        if self.used + len(encoded) + 1 > self.limit:
            del encoded
            encoded = codec.dumps(error_answer(AnswerTooLarge(
                f"answer too large: it would take this message's answer past [limits] max_response_bytes = "
                f"{self.limit} bytes; ask for less in one message (split the batch)",
                data={"max_response_bytes": self.limit},
            ), answer.get("id")))
        self.used += len(encoded) + 1
        return encoded


def _valid_id(member: dict[str, Any]) -> Any:
    """The member's id if it is a JSON-RPC id (string, number or null), else None."""
    request_id = member.get("id")
    if request_id is None or isinstance(request_id, (str, float)):
        return request_id
    if isinstance(request_id, int) and not isinstance(request_id, bool):
        return request_id
    return None


_clock: Final = time.perf_counter
_wall_clock: Final = time.time
_NO_ARGUMENTS: Final[dict[str, Any]] = {}
# The types a valid id has (bool is excluded: it is not one of them, though a subclass of int).
_ID_TYPES: Final = frozenset({str, int, float, type(None)})


def _is_plain_request(member: Any) -> bool:
    """A quick yes for the common well-formed request; `_invalid_reason` has the last word on a no."""
    return (
        type(member) is dict
        and member.get("jsonrpc") == "2.0"
        and type(member.get("method")) is str
        and type(member.get("params", _NO_ARGUMENTS)) in (dict, list)
        and type(member.get("id")) in _ID_TYPES
    )


def _invalid_reason(member: Any) -> str | None:
    """Why `member` is not a valid Request object, or None if it is."""
    if not isinstance(member, dict):
        return "a request must be an object"
    if member.get("jsonrpc") != "2.0":
        return 'missing "jsonrpc": "2.0"'
    if not isinstance(member.get("method"), str):
        return '"method" must be a string'
    if "params" in member and not isinstance(member["params"], (list, dict)):
        return '"params" must be an array or an object'
    if "id" in member and member["id"] is not None and _valid_id(member) is None:
        return '"id" must be a string, a number or null'
    return None


@types.coroutine
def resume_started(started: Coroutine[Any, Any, T], waiting_on: Any) -> Generator[Any, Any, T]:
    """Go on running a coroutine that was started by hand and is waiting on `waiting_on`.

    Whoever runs a call by hand (`coro.send(None)`) so that one that does not wait costs no task
    (a batch's members here, a WebSocket's messages in web/websocket.py, a written frame in
    web/pool.py) awaits this when it did wait. The running task is handed what the coroutine waits on and passes back what it sends or
    throws (a result, or a cancellation), until the coroutine returns.
    """
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:  # this wrapper is being closed: close what it runs too
            started.close()
            raise
        except BaseException as err:  # noqa: BLE001 - thrown in by the task (a cancellation): passed on
            try:
                waiting_on = started.throw(err)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]
        else:
            try:
                waiting_on = started.send(sent)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]


class Dispatcher:
    """Runs decoded messages against one registry; shared by every transport."""

    __slots__ = ("registry", "observe")

    def __init__(self, registry: Registry, observe: CallObserver | None = None) -> None:
        self.registry = registry
        self.observe = observe

    async def respond(self, envelope: Envelope, ctx: Context, max_bytes: int) -> bytes | None:
        """Run every call of the envelope; its encoded answer within `max_bytes`, or None when nothing is owed."""
        if envelope.error is not None:
            return codec.dumps(error_answer(envelope.error))
        budget = AnswerBudget(max_bytes)
        members = envelope.members
        finished = Finished()
        try:
            if not envelope.is_batch:
                answer = await self._call(members[0], ctx, finished)
                return None if answer is None else budget.take(answer)
            parts = await self._run_batch(members, ctx, budget, finished)
        finally:
            self._report(finished, ctx)
        present = [part for part in parts if part is not None]
        return b"[" + b",".join(present) + b"]" if present else None

    def _report(self, finished: Finished, ctx: Context) -> None:
        """Hand the calls of a message to the observer, once, however the message ended."""
        finished.reported = True
        if finished and self.observe is not None:
            self.observe(finished, ctx)

    async def _run_batch(
        self, members: list[Any], ctx: Context, budget: AnswerBudget, finished: Finished,
    ) -> list[bytes | None]:
        """Answer a batch's members in order of the batch, the slow ones concurrently.

        Most members finish without waiting for anything (an answer from memory), and a task
        for each would cost more than the call itself. So each member starts here, in the
        request's own task; the first one that has to wait (a database read, a manifest fetch)
        goes on in this task while every member after it starts in a task of its own, at most
        BATCH_CONCURRENCY running at once in all. The waiting member stays in the task it
        started in because whatever it captured before waiting (an `asyncio.timeout` holds
        `current_task()`) has to keep pointing at the task that runs it. Python 3.12's eager
        task factory does this in the standard library; this server runs on 3.11.
        """
        parts: list[bytes | None] = []
        for index, member in enumerate(members):
            # What the member sets while it runs (its tracing span) stays in this task's context
            # once it waits, so the members after it start from the context as it was before.
            before = contextvars.copy_context()
            started = self._call(member, ctx, finished)
            try:
                waiting_on = started.send(None)
            except StopIteration as done:
                answer = done.value
                parts.append(None if answer is None else budget.take(answer))
                continue
            rest = members[index + 1:]
            others = self._run_concurrently(rest, ctx, budget, finished, before) if rest else None
            try:
                answer = await resume_started(started, waiting_on)
            except BaseException:
                if others is not None:
                    others.cancel()
                raise
            parts.append(None if answer is None else budget.take(answer))
            if others is not None:
                parts.extend(await others)
            break
        return parts

    def _run_concurrently(
        self, members: list[Any], ctx: Context, budget: AnswerBudget, finished: Finished,
        context: contextvars.Context,
    ) -> asyncio.Future[list[bytes | None]]:
        """Start each member in a task of its own (one runs in the caller's), BATCH_CONCURRENCY in all."""
        loop = asyncio.get_running_loop()
        bound = BATCH_CONCURRENCY - 1
        if len(members) <= bound:
            # Within the bound anyway: no semaphore, and no wrapper coroutine per member.
            runs = [self._answer(member, ctx, budget, finished) for member in members]
        else:
            gate = asyncio.Semaphore(bound)

            async def bounded(member: Any) -> bytes | None:
                async with gate:
                    return await self._answer(member, ctx, budget, finished)

            runs = [bounded(member) for member in members]
        return asyncio.gather(*(loop.create_task(run, context=context.copy()) for run in runs))

    async def _answer(self, member: Any, ctx: Context, budget: AnswerBudget, finished: Finished) -> bytes | None:
        """Run one batch member and encode its answer at once, so no result outlives its call."""
        answer = await self._call(member, ctx, finished)
        return None if answer is None else budget.take(answer)

    async def call(self, member: Any, ctx: Context) -> dict[str, Any] | None:
        """Run one Request object on its own (a message of one call); None for a notification."""
        finished = Finished()
        try:
            return await self._call(member, ctx, finished)
        finally:
            self._report(finished, ctx)

    def _finish(self, finished: Finished, ctx: Context, label: str, outcome: str, seconds: float) -> None:
        """Note a call that ended (in its own span, with tracing on) among its message's calls."""
        if finished.reported:
            self._note(finished, ctx, (label, outcome, seconds, _wall_clock(), None))
        else:
            finished.append((label, outcome, seconds, _wall_clock(), None))

    def _note(self, finished: Finished, ctx: Context, call: FinishedCall) -> None:
        """Add one ended call to its message's, or report it alone if the message was reported already."""
        if finished.reported:  # a member that ended after its batch was cut short
            if self.observe is not None:
                self.observe([call], ctx)
        else:
            finished.append(call)

    async def _call(self, member: Any, ctx: Context, finished: Finished) -> dict[str, Any] | None:
        """Run one Request object, noting how it ended in `finished`; None for a notification."""
        if not _is_plain_request(member):
            reason = _invalid_reason(member)
            if reason is not None:
                request_id = _valid_id(member) if isinstance(member, dict) else None
                return error_answer(InvalidRequest(f"Invalid Request: {reason}"), request_id)
        name: str = member["method"]
        is_notification = "id" not in member
        request_id = member.get("id")
        method = self.registry.get(name)
        label = name if method is not None else UNKNOWN_METHOD
        started = _clock()
        outcome = "ok"
        try:
            # Who calls, re-checked as each call starts (each batch member, each WebSocket
            # message): a device revoked meanwhile is refused here (-32002), and a role changed
            # meanwhile applies now.
            caller = ctx.role
            if method is None or (method.websocket_only and ctx.transport != "ws"):
                where = " (it is served on the WebSocket /ws only)" if method is not None else ""
                raise MethodNotFound(f"Method not found: {name}{where}")
            method.authorize(caller)
            params = member.get("params")
            # Most calls name a method without params; binding nothing needs no walk.
            kwargs = method.bind(params) if params or method.params else _NO_ARGUMENTS
            result = await method.func(ctx, **kwargs)
        except RpcError as err:
            outcome = _outcome(err)
            answer = error_answer(err, request_id)
        except Exception:
            outcome = "internal_error"
            _LOGGER.exception("method %s failed (request id %r)", name, request_id)
            answer = error_answer(InternalError(), request_id)
        else:
            answer = {"jsonrpc": "2.0", "result": result, "id": request_id}
        self._finish(finished, ctx, label, outcome, _clock() - started)
        return None if is_notification else answer


_OUTCOMES: Final = {
    -32700: "parse_error",
    -32600: "invalid_request",
    -32601: "method_not_found",
    -32602: "invalid_params",
    -32603: "internal_error",
    -32001: "not_found",
    -32002: "unauthorized",
    -32003: "forbidden",
    -32004: "manifest_invalid",
    -32005: "unsupported_scheme",
    -32006: "fetch_failed",
    -32007: "answer_too_large",
    -32029: "rate_limited",
}


def _outcome(error: RpcError) -> str:
    """A bounded metric label for an error."""
    return _OUTCOMES.get(error.code, "error")
