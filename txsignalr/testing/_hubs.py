"""
Hubs of the test server: the :class:`Hub` base class users subclass, the per-call
context :class:`HubCall`, :class:`HubException`, and the dispatcher that resolves a
client invocation to a hub method and turns its outcome into a hub result frame, with
the error texts of ``HubDispatcher``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from twisted.internet import defer
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from txsignalr.testing._context import HubContext
from txsignalr.testing._wire import Invocation, client_invocation, hub_result

__all__ = [
    "ClientResultError",
    "Hub",
    "HubCall",
    "HubException",
    "invoke_hub_method",
    "run_hooks",
]

_log = Logger(namespace="txsignalr.testing")

#: ``Exception.Message`` of a .NET ``HubException`` made without a message.
DEFAULT_HUB_EXCEPTION_MESSAGE = (
    "Exception of type 'Microsoft.AspNet.SignalR.HubException' was thrown."
)


class HubException(Exception):
    """
    Raise from a hub method to send the client an error it is meant to see: ``E`` is
    the message, ``H`` is ``true`` and ``D`` carries ``data`` (omitted when ``None``),
    whatever ``detailed_errors`` says.

    :param message: the error text; ``None`` gives .NET's default text, so that the
        result still has an ``E`` (without one, clients would take it for a success).
    :param data: any JSON value sent as error data.
    """

    def __init__(self, message: str | None = None, data: Any = None) -> None:
        text = DEFAULT_HUB_EXCEPTION_MESSAGE if message is None else str(message)
        super().__init__(text)
        self.message = text
        self.data = data


class ClientResultError(Exception):
    """
    A client result (ASP.NET Core: ``invoke_with_result``) failed: the client answered
    with an error Completion (its text is the message), the connection ended first, or
    the connection cannot give results (classic SignalR, or not an open Core connection).
    """


class Hub:
    """
    Base class of the test server's hubs.

    Every public method defined on a subclass is a hub method, callable by clients
    under any letter case.  It receives a :class:`HubCall` and then the client's
    arguments, and may return a JSON value, a ``Deferred`` or be a coroutine function.

    :cvar name: the hub's server spelling, sent back in ``H``; defaults to the class name.
    """

    name: ClassVar[str] = "Hub"
    _methods: ClassVar[dict[str, str] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        cls._methods = None

    _server: HubContext | None = None

    @property
    def server(self) -> HubContext:
        """The context of the server this hub is registered with."""
        if self._server is None:
            raise RuntimeError(f"hub {self.name!r} is not registered with a server")
        return self._server

    def attach(self, server: HubContext) -> None:
        """Called by the server when the hub is registered."""
        self._server = server

    # -- lifecycle hooks (no-ops by default) ---------------------------------------

    def on_connected(self, connection_id: str) -> Any:
        """A client listing this hub called ``/start`` (or connected with protocol < 1.4)."""

    def on_reconnected(self, connection_id: str) -> Any:
        """A client listing this hub reconnected."""

    def on_disconnected(self, connection_id: str, stop_called: bool) -> Any:
        """A connection listing this hub ended (``stop_called``: via ``/abort``)."""

    def on_start(self) -> None:
        """The server started (listening); start periodic work here."""

    def on_stop(self) -> None:
        """The server stopped; delayed calls made through the server are already cancelled."""

    # -- helpers to reach clients --------------------------------------------------

    def send_to_all(self, method: str, *args: Any) -> None:
        """Call a client method on every connection listing this hub."""
        self.server.send_to_all(self.name, method, *args)

    def send_to_group(self, group: str, method: str, *args: Any) -> None:
        """Call a client method on every member of one of this hub's groups."""
        self.server.send_to_group(self.name, group, method, *args)

    def send_to_connection(self, connection_id: str, method: str, *args: Any) -> None:
        """Call a client method on one connection."""
        self.server.send_to_connection(connection_id, self.name, method, *args)

    # -- method table --------------------------------------------------------------

    @classmethod
    def hub_methods(cls) -> dict[str, str]:
        """:returns: lower-cased method name -> attribute name of every hub method."""
        if cls._methods is None:
            table: dict[str, str] = {}
            reserved = set(dir(Hub))
            for klass in cls.__mro__:
                if klass is Hub or klass is object:
                    continue
                for attr_name, value in vars(klass).items():
                    if attr_name.startswith("_") or attr_name in reserved:
                        continue
                    if inspect.isfunction(value):
                        table.setdefault(attr_name.lower(), attr_name)
            cls._methods = table
        return cls._methods


class _CallerGroups:
    def __init__(self, call: HubCall) -> None:
        self._call = call

    def add(self, group: str) -> None:
        """Add the caller to one of this hub's groups."""
        self._call.server.add_to_group(self._call.connection_id, self._call.hub.name, group)

    def remove(self, group: str) -> None:
        """Remove the caller from one of this hub's groups."""
        self._call.server.remove_from_group(self._call.connection_id, self._call.hub.name, group)


class _Caller:
    def __init__(self, call: HubCall) -> None:
        self._call = call

    def invoke(self, method: str, *args: Any) -> None:
        """Call a client method on the caller (with the changed caller state in ``S``)."""
        call = self._call
        payload = client_invocation(call.hub.name, method, args, call.state_changes())
        call.server.publish_to_connection(call.connection_id, payload)

    def invoke_with_result(self, method: str, *args: Any) -> defer.Deferred[Any]:
        """
        Client results are an ASP.NET Core feature: over classic SignalR this fails
        with :class:`ClientResultError`.
        """
        return defer.fail(
            ClientResultError("client results need an ASP.NET Core SignalR connection")
        )


class HubCall:
    """
    The context of one hub method invocation.

    :ivar connection_id: the caller's connection id.
    :ivar invocation_id: the invocation id as a string.
    :ivar state: the caller state sent in ``S``; keys the method adds or changes are
        sent back in the result's ``S``.
    :ivar hub: the hub being called.
    :ivar server: the server's :class:`HubContext`.
    :ivar groups: ``add(group)``/``remove(group)`` for the caller.
    :ivar caller: ``invoke(method, *args)`` calls a client method on the caller.
    """

    def __init__(
        self,
        server: HubContext,
        hub: Hub,
        connection_id: str,
        invocation_id: str,
        state: dict[str, Any],
    ) -> None:
        self.server = server
        self.hub = hub
        self.connection_id = connection_id
        self.invocation_id = invocation_id
        self.state: dict[str, Any] = dict(state)
        self._original_state = dict(state)
        self.groups = _CallerGroups(self)
        self.caller = _Caller(self)
        self.completed = False

    def state_changes(self) -> dict[str, Any]:
        """:returns: the state keys added or changed so far (``StateChangeTracker``)."""
        return {
            k: v
            for k, v in self.state.items()
            if k not in self._original_state or self._original_state[k] != v
        }

    def report_progress(self, value: Any) -> None:
        """
        Send a progress message for this invocation to the caller through the bus.

        :raises RuntimeError: once the method has completed, as the real server does.
        """
        if self.completed:
            raise RuntimeError(
                "You cannot report progress on a hub method invocation that has already completed."
            )
        self.server.report_progress(self.connection_id, self.invocation_id, value)


def _arity(fn: Callable[..., Any]) -> tuple[int, float, list[str]]:
    """:returns: (required, maximum, parameter names) of a bound hub method after ``call``."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    required = 0
    maximum: float = 0
    names: list[str] = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            maximum += 1
            names.append(p.name)
            if p.default is p.empty:
                required += 1
        elif p.kind is p.VAR_POSITIONAL:
            maximum = float("inf")
            names.append("*" + p.name)
    return required, maximum, names


def invoke_hub_method(
    hub: Hub, call: HubCall, invocation: Invocation, detailed_errors: bool
) -> defer.Deferred[str]:
    """
    Run a client invocation on a hub and build the hub result frame.

    Whatever the method does (raise anything, return a value that cannot be written as
    JSON, fail its Deferred with an exception whose text cannot be read), the client
    gets a result frame: an error result at worst.

    :returns: a Deferred that fires with the result frame text; it never fails.
    """
    generic = f"There was an error invoking Hub method '{invocation.hub}.{invocation.method}'."

    def error_frame(message: str) -> str:
        return hub_result(call.invocation_id, error=message)

    def last_resort(failure: Failure) -> str:
        _log.failure(
            "could not build the result of {hub}.{method}",
            failure=failure,
            hub=hub.name,
            method=invocation.method,
        )
        return error_frame(generic)

    try:
        d = _invoke(hub, call, invocation, detailed_errors, generic, error_frame)
    except Exception:
        return defer.succeed(last_resort(Failure()))
    return d.addErrback(last_resort)


def _invoke(
    hub: Hub,
    call: HubCall,
    invocation: Invocation,
    detailed_errors: bool,
    generic: str,
    error_frame: Callable[[str], str],
) -> defer.Deferred[str]:
    attr_name = hub.hub_methods().get(invocation.method.lower())
    if attr_name is None:
        text = (
            f"'{invocation.method}' method could not be resolved. No method found with that name."
        )
        return defer.succeed(error_frame(text if detailed_errors else generic))
    fn: Callable[..., Any] = getattr(hub, attr_name)
    required, maximum, names = _arity(fn)
    if not required <= len(invocation.args) <= maximum:
        signature = f"{attr_name}({', '.join(n + ':Object' for n in names)}):Object"
        text = (
            f"'{invocation.method}' method could not be resolved. "
            f"Potential candidates are: \n{signature}"
        )
        return defer.succeed(error_frame(text if detailed_errors else generic))

    def on_result(result: Any) -> str:
        call.completed = True
        try:
            return hub_result(call.invocation_id, result=result, state=call.state_changes())
        except Exception as e:
            # TypeError/ValueError for non-JSON values, RecursionError for deep nesting.
            _log.warn(
                "hub method {hub}.{method} returned a value that is not JSON: {error}",
                hub=hub.name,
                method=attr_name,
                error=_text(e, type(e).__name__),
            )
            return error_frame(_text(e, generic) if detailed_errors else generic)

    def on_error(failure: Failure) -> str:
        call.completed = True
        exc = failure.value
        if isinstance(exc, HubException):
            try:
                return hub_result(
                    call.invocation_id,
                    error=exc.message,
                    is_hub_exception=True,
                    error_data=exc.data,
                    state=call.state_changes(),
                )
            except Exception:
                return hub_result(call.invocation_id, error=exc.message, is_hub_exception=True)
        _log.failure(
            "hub method {hub}.{method} raised",
            failure=failure,
            level=LogLevel.info,
            hub=hub.name,
            method=attr_name,
        )
        return error_frame(_text(exc, generic) if detailed_errors else generic)

    try:
        outcome = fn(call, *invocation.args)
    except Exception:
        return defer.succeed(on_error(Failure()))
    d: defer.Deferred[Any]
    if inspect.iscoroutine(outcome):
        d = defer.ensureDeferred(outcome)
    elif isinstance(outcome, defer.Deferred):
        d = outcome
    else:
        d = defer.succeed(outcome)
    return d.addCallbacks(on_result, on_error)


def _text(exc: object, fallback: str) -> str:
    """An exception's message, or ``fallback`` when its ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:
        return fallback


def run_hooks(hubs: Iterable[Hub], hook: Callable[[Hub], Any]) -> defer.Deferred[Any]:
    """
    Run a lifecycle hook (``on_connected``...) on each hub, coroutines and Deferreds
    included; failures are logged, never raised.

    :returns: a Deferred fired when every hook has finished.
    """
    waits: list[defer.Deferred[Any]] = []
    for hub in hubs:
        try:
            outcome = hook(hub)
        except Exception:
            _log.failure("hub {hub} lifecycle hook raised", hub=hub.name)
            continue
        if inspect.iscoroutine(outcome):
            outcome = defer.ensureDeferred(outcome)
        if isinstance(outcome, defer.Deferred):
            waits.append(outcome.addErrback(_log_hook_failure, hub.name))
    return defer.gatherResults(waits, consumeErrors=True)


def _log_hook_failure(failure: Failure, hub_name: str) -> None:
    _log.failure("hub {hub} lifecycle hook failed", failure=failure, hub=hub_name)
