"""
Hub calls over ASP.NET Core SignalR: the Core :class:`CoreHubCall` (a :class:`HubCall`
whose caller can await a client result), upload streams handed to hub methods as async
iterators, and running one invocation or stream invocation with the error texts of
``DefaultHubDispatcher``.

Hub method conventions (the same :class:`Hub` classes serve both families):

* ``method(call, *arguments, *upload_streams)``: the client's arguments, then one
  async iterator per entry of ``streamIds`` (client-to-server streams), in order;
* return a JSON value (``None`` gives a void Completion), a ``Deferred``, or be a
  coroutine function;
* an async generator function (or a method returning an async iterable) is a
  server-to-client stream, invoked with a StreamInvocation.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from txsignalr.testing._context import HubContext
from txsignalr.testing._core_codecs import ServerCodec
from txsignalr.testing._hubs import ClientResultError, Hub, HubCall, HubException, _arity

__all__ = ["ClientResultError", "CoreHubCall", "UploadStream", "run_invocation", "run_stream"]

_log = Logger(namespace="txsignalr.testing")


class CoreConnectionApi(Protocol):
    """What a Core hub call needs of its connection."""

    id: str
    #: how this connection's messages are encoded
    codec: ServerCodec

    def send(self, data: bytes) -> None:
        """Write a hub message (types 1-3) to the client."""

    def writable(self) -> defer.Deferred[None] | None:
        """``None``, or a Deferred to wait on before sending more (back-pressure)."""

    def invoke_with_result(self, method: str, args: tuple[Any, ...]) -> defer.Deferred[Any]:
        """Invoke a client method with an invocation id; fires with its result."""

    def invoke_client(self, method: str, args: tuple[Any, ...]) -> None:
        """Invoke a client method without an invocation id."""


class _CoreCaller:
    def __init__(self, call: CoreHubCall) -> None:
        self._call = call

    def invoke(self, method: str, *args: Any) -> None:
        """Call a client method on the caller (no answer expected)."""
        self._call.connection.invoke_client(method, args)

    def invoke_with_result(self, method: str, *args: Any) -> defer.Deferred[Any]:
        """
        Call a client method on the caller and wait for its result (a Core
        Invocation with an ``invocationId``).

        :returns: a Deferred firing with the client's result (``None`` for a void
            Completion); it fails with :class:`ClientResultError` when the client
            answers with an error or the connection ends first.
        """
        return self._call.connection.invoke_with_result(method, args)


class CoreHubCall(HubCall):
    """
    A :class:`HubCall` over ASP.NET Core SignalR: no caller state, no progress; the
    caller can be invoked with ``call.caller.invoke(...)`` and awaited with
    ``await call.caller.invoke_with_result(...)``.

    :ivar connection: the caller's connection.
    :ivar headers: the invocation's ``headers``, or ``{}``.
    """

    def __init__(
        self,
        server: HubContext,
        hub: Hub,
        connection: CoreConnectionApi,
        invocation_id: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(server, hub, connection.id, invocation_id or "", {})
        self.connection = connection
        self.headers = dict(headers or {})
        self.caller = _CoreCaller(self)  # type: ignore[assignment]  # same methods

    def report_progress(self, value: Any) -> None:
        """Progress messages do not exist in ASP.NET Core SignalR: use a stream."""
        raise RuntimeError("progress is a classic SignalR feature; use a stream over Core")


class UploadStream:
    """
    A client-to-server stream: ``async for item in stream`` in the hub method.  Ends
    when the client completes the stream; a Completion with ``error`` raises
    :class:`HubException` with that text.

    :param limit: the most items buffered before the connection is closed.
    """

    def __init__(self, stream_id: str, limit: int = 10_000) -> None:
        self.stream_id = stream_id
        self._items: deque[Any] = deque()
        self._waiting: defer.Deferred[None] | None = None
        self._ended = False
        self._error: str | None = None
        self._limit = limit

    def feed(self, item: Any) -> bool:
        """Add an item.  :returns: ``False`` when the buffer is over its limit."""
        if self._ended:
            return True
        self._items.append(item)
        self._wake()
        return len(self._items) <= self._limit

    def end(self, error: str | None = None) -> None:
        """The client completed the stream (with ``error``), or the connection ended."""
        if not self._ended:
            self._ended = True
            self._error = error
            self._wake()

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise HubException(self._error)
                raise StopAsyncIteration
            self._waiting = defer.Deferred()
            await self._waiting
        return self._items.popleft()


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return type(exc).__name__


def build_error(message: str, exc: BaseException, detailed: bool) -> str:
    """``ErrorMessageHelper.BuildErrorMessage``: details for HubException or when detailed."""
    if isinstance(exc, HubException):
        return f"{message} HubException: {exc.message}"
    if detailed:
        return f"{message} {type(exc).__name__}: {_text(exc)}"
    return message


class Binding:
    """A resolved hub method and its arguments (upload streams appended)."""

    def __init__(self, fn: Callable[..., Any], name: str, args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.name = name
        self.args = args

    @property
    def is_stream(self) -> bool:
        return inspect.isasyncgenfunction(self.fn)


def bind(hub: Hub, target: str, args: tuple[Any, ...], detailed: bool) -> Binding | str:
    """
    Resolve ``target`` (any letter case) and check the argument count.

    :returns: the binding, or the Completion error text of a binding failure.
    """
    failed = f"Failed to invoke '{target}' due to an error on the server."
    attr_name = hub.hub_methods().get(target.lower())
    if attr_name is None:
        return f"{failed} HubException: Method does not exist."
    fn: Callable[..., Any] = getattr(hub, attr_name)
    required, maximum, _names = _arity(fn)
    if not required <= len(args) <= maximum:
        if detailed:
            expected = required if required == maximum else maximum
            return (
                f"{failed} InvalidDataException: Invocation provides {len(args)} argument(s) "
                f"but target expects {expected if expected != float('inf') else required}."
            )
        return failed
    return Binding(fn, attr_name, args)


def _as_deferred(outcome: Any) -> defer.Deferred[Any]:
    if inspect.iscoroutine(outcome):
        return defer.ensureDeferred(outcome)
    if isinstance(outcome, defer.Deferred):
        return outcome
    return defer.succeed(outcome)


def run_invocation(
    binding: Binding, call: CoreHubCall, target: str, invocation_id: str | None, detailed: bool
) -> defer.Deferred[None]:
    """
    Run a non-streaming invocation; with an ``invocation_id`` send its Completion
    (result, void for ``None``, or error) on the caller's connection.  The Deferred
    never fails.
    """
    unexpected = f"An unexpected error occurred invoking '{target}' on the server."
    connection = call.connection
    codec = connection.codec
    send = connection.send

    def on_result(result: Any) -> None:
        if invocation_id is None:
            return
        try:
            if result is None:
                record = codec.completion(invocation_id)
            else:
                record = codec.completion(invocation_id, result)
        except Exception as e:
            _log.warn(
                "hub method {method} returned a value that {protocol} cannot encode: {error}",
                method=binding.name,
                protocol=codec.name,
                error=_text(e),
            )
            record = codec.completion(invocation_id, error=build_error(unexpected, e, detailed))
        send(record)

    def on_error(failure: Failure) -> None:
        exc: BaseException = failure.value or Exception("unknown error")
        if not isinstance(exc, HubException):
            _log.failure(
                "hub method {method} raised",
                failure=failure,
                level=LogLevel.info,
                method=binding.name,
            )
        if invocation_id is not None:
            send(codec.completion(invocation_id, error=build_error(unexpected, exc, detailed)))

    try:
        d = _as_deferred(binding.fn(call, *binding.args))
    except Exception:
        on_error(Failure())
        return defer.succeed(None)
    d.addCallbacks(on_result, on_error)
    return d.addErrback(lambda f: _log.failure("Core invocation failed", failure=f))


class StreamRun:
    """A running server-to-client stream; :meth:`cancel` is CancelInvocation."""

    def __init__(self) -> None:
        self.cancelled = False
        self.deferred: defer.Deferred[None] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.deferred is not None and not self.deferred.called:
            self.deferred.cancel()


def run_stream(
    binding: Binding,
    call: CoreHubCall,
    target: str,
    invocation_id: str,
    detailed: bool,
    is_open: Callable[[], bool],
) -> StreamRun:
    """
    Run a StreamInvocation on the caller's connection: a StreamItem per item, then a
    Completion (void, or the streaming error text); after a cancel, a void Completion
    as .NET sends.
    """
    run = StreamRun()
    connection = call.connection
    codec = connection.codec
    send = connection.send
    streaming_error = "An error occurred on the server while streaming results."
    non_streaming = (
        f"The client attempted to invoke the non-streaming '{target}' method with a "
        "streaming invocation."
    )

    async def pump() -> None:
        try:
            outcome = binding.fn(call, *binding.args)
            if not binding.is_stream:
                outcome = await _as_deferred(outcome)
                if not hasattr(outcome, "__aiter__"):
                    send(codec.completion(invocation_id, error=non_streaming))
                    return
        except Exception as e:
            send(codec.completion(invocation_id, error=build_error(streaming_error, e, detailed)))
            return
        iterator = outcome.__aiter__()
        error: str | None = None
        try:
            while not run.cancelled and is_open():
                wait = connection.writable()
                if wait is not None:
                    await wait
                try:
                    item = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                if run.cancelled or not is_open():
                    break
                try:
                    record = codec.stream_item(invocation_id, item)
                except Exception as e:
                    error = build_error(streaming_error, e, detailed)
                    break
                send(record)
        except defer.CancelledError:
            if not run.cancelled:
                error = streaming_error
        except Exception as e:
            if not run.cancelled:
                error = build_error(streaming_error, e, detailed)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    pass
        if is_open():
            send(codec.completion(invocation_id, error=error))

    run.deferred = defer.ensureDeferred(pump())
    run.deferred.addErrback(lambda f: None if f.check(defer.CancelledError) else f)
    run.deferred.addErrback(lambda f: _log.failure("Core stream failed", failure=f))
    return run
