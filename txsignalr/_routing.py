"""
Hub proxies and the routing of client-method calls to their handlers.

Names match case-insensitively, but the server always spells a hub and a method the same
way, so the receive path looks handlers up in a cache keyed by the server's spelling
(hub -> method -> handlers) and only falls back to the case-insensitive search on a miss.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsignalr._events import Observers
from txsignalr._protocol import ClientInvocation, MalformedMessage, message_from_json
from txsignalr.errors import SignalRError

if TYPE_CHECKING:
    from txsignalr._connection import HubConnection

__all__ = ["HubProxy", "Router"]

Handler = Callable[..., object]


class _Receiving(Protocol):
    """What the fast path checks: the transport the connection receives from."""

    @property
    def transport(self) -> object: ...


class HubProxy:
    """
    A client-side handle on one hub: invoke server methods, receive client calls.

    Obtain it with :meth:`HubConnection.hub`; create every proxy before
    :meth:`HubConnection.start`, since the server only delivers client-method calls
    for the hubs named when the connection started.

    :ivar name: the hub name as given.
    :ivar state: the hub state, sent with every invocation when non-empty and merged
        with the changes the server sends back.
    """

    def __init__(self, connection: HubConnection, router: Router, name: str) -> None:
        self.name = name
        self.state: dict[str, Any] = {}
        self._connection = connection
        self._router = router
        self._handlers: dict[str, list[Handler]] = {}
        self._any: list[Handler] = []

    def __repr__(self) -> str:
        return f"<HubProxy {self.name!r}>"

    def on(self, method: str, callback: Handler) -> Callable[[], None]:
        """
        Call ``callback(*args)`` whenever the server calls client method ``method``.

        Method names match case-insensitively.  A callback may return a Deferred or
        a coroutine; a failure in either is logged.  Handlers may be added before or
        after :meth:`HubConnection.start`.

        :returns: a function that removes this handler.
        """
        key = method.lower()
        self._handlers.setdefault(key, []).append(callback)
        self._router.changed()

        def remove() -> None:
            self.off(method, callback)

        return remove

    def on_any(self, callback: Handler) -> Callable[[], None]:
        """
        Call ``callback(method, *args)`` for every client-method call on this hub,
        whatever the method; ``method`` is the server's spelling.  Runs after the
        handlers registered with :meth:`on` for that method.

        :returns: a function that removes this handler.
        """
        self._any.append(callback)
        self._router.changed()

        def remove() -> None:
            if callback in self._any:
                self._any.remove(callback)
                self._router.changed()

        return remove

    def off(self, method: str, callback: Handler | None = None) -> None:
        """Remove one handler of ``method``, or all of them when ``callback`` is None."""
        key = method.lower()
        handlers = self._handlers.get(key)
        if handlers is not None:
            if callback is None:
                del self._handlers[key]
            elif callback in handlers:
                handlers.remove(callback)
                if not handlers:
                    del self._handlers[key]
        self._router.changed()

    def result_handlers(self, method: str) -> list[Handler]:
        """The :meth:`on` handlers of ``method`` alone (those that may give a result)."""
        return list(self._handlers.get(method.lower(), ()))

    def any_handlers(self, method: str) -> list[Handler]:
        """The :meth:`on_any` callbacks, bound to ``method``."""
        return [functools.partial(callback, method) for callback in self._any]

    def handlers_for(self, method: str) -> list[Handler]:
        """The handlers for the server's spelling of ``method`` (cached by the router)."""
        handlers = list(self._handlers.get(method.lower(), ()))
        handlers.extend(functools.partial(callback, method) for callback in self._any)
        return handlers

    def invoke(
        self,
        method: str,
        *args: Any,
        on_progress: Callable[[Any], object] | None = None,
        timeout: float | None = None,
    ) -> Deferred[Any]:
        """
        Invoke server method ``method`` with ``args``.

        :param on_progress: called with each progress value the method reports.
        :param timeout: seconds to wait for the result; the connection's
            ``invoke_timeout`` when None.  No timeout when both are None.
        :returns: a Deferred firing with the method's return value (``None`` for void).
            It fails with :class:`~txsignalr.HubError` when the method raised,
            :class:`~twisted.internet.defer.TimeoutError` on timeout,
            :class:`~txsignalr.ConnectionClosed` when the connection starts reconnecting
            (WebSockets) or closes first, :class:`~txsignalr.InvalidStateError` when not
            connected, :class:`TypeError` for arguments that are not JSON-serialisable.
        """
        return self._connection._invoke(self, method, args, on_progress, timeout)


class Router:
    """
    The hub proxies of a connection and the dispatch of client-method calls to their
    handlers.

    :param log: where handler failures are logged.
    :param on_error: fired with a :class:`~txsignalr.SignalRError` for each handler
        failure and each malformed message.
    """

    def __init__(self, log: Logger, on_error: Observers) -> None:
        self.proxies: dict[str, HubProxy] = {}
        # server hub spelling -> server method spelling -> handlers: the one cache of
        # the receive path, cleared whenever a proxy or a handler is added or removed
        self._routes: dict[str, dict[str, list[Handler]]] = {}
        self._log = log
        self._on_error = on_error

    @property
    def routes(self) -> dict[str, dict[str, list[Handler]]]:
        """
        The route cache (server hub spelling -> server method spelling -> handlers),
        for a receive loop that looks its handlers up itself.  It is cleared in place
        when handlers change, so look the hub up again for every call: a handler may
        add or remove handlers.  A miss is :meth:`call`'s to fill.
        """
        return self._routes

    def add(self, proxy: HubProxy) -> None:
        """Register a new proxy."""
        self.proxies[proxy.name.lower()] = proxy
        self._routes.clear()

    def changed(self) -> None:
        """A handler was added or removed: forget the cached routes."""
        self._routes.clear()

    def proxy_for(self, spelling: str) -> HubProxy | None:
        """The proxy of a hub, by any spelling of its name."""
        return self.proxies.get(spelling.lower())

    def names(self) -> list[str]:
        """The hub names, in the order the proxies were created."""
        return [p.name for p in self.proxies.values()]

    def route(self, hub: str, method: str) -> list[Handler]:
        """The handlers for a server spelling of hub and method (cached)."""
        routes = self._routes.get(hub)
        handlers = None if routes is None else routes.get(method)
        if handlers is None:
            proxy = self.proxy_for(hub)
            handlers = [] if proxy is None else proxy.handlers_for(method)
            self._routes.setdefault(hub, {})[method] = handlers
        return handlers

    def call(self, hub: str, method: str, args: Sequence[Any]) -> bool:
        """
        Call the handlers of a server spelling of hub and method with ``args`` (the
        hot path: :meth:`route` and :meth:`call_handlers` in one).

        :returns: whether there was any handler.
        """
        route = self._routes.get(hub)
        handlers = None if route is None else route.get(method)
        if handlers is None:
            handlers = self.route(hub, method)
        if not handlers:
            return False
        self.call_handlers(handlers, args, hub, method)
        return True

    def dispatch_plain(
        self,
        messages: list[Any],
        link: _Receiving,
        transport: object,
        other: Callable[[Any], None],
    ) -> None:
        """
        Dispatch the elements of a frame's ``M`` straight from their decoded JSON (the
        hot path).  Elements that are not plain ``{"H","M","A"}`` calls go to ``other``
        as message values.

        :param link: its ``transport`` is checked after every call that had handlers:
            dispatch stops when it is no longer ``transport`` (a handler stopped or
            dropped the connection).
        """
        call = self.call
        for item in messages:
            if type(item) is dict and len(item) == 3:
                hub = item.get("H")
                method = item.get("M")
                args = item.get("A")
                if type(hub) is str and type(method) is str and type(args) is list:
                    if call(hub, method, args) and link.transport is not transport:
                        return
                    continue
            other(message_from_json(item))
            if link.transport is not transport:
                return

    def client_call(self, call: ClientInvocation) -> None:
        """Dispatch one client-method call given as a message value."""
        if call.state:
            proxy = self.proxy_for(call.hub)
            if proxy is not None:
                proxy.state.update(call.state)
        self.call_handlers(self.route(call.hub, call.method), call.args, call.hub, call.method)

    def call_handlers(
        self, handlers: list[Handler], args: Sequence[Any], hub: str, method: str
    ) -> None:
        """Call each handler with ``args``; failures are reported, never raised."""
        for handler in handlers:
            try:
                outcome = handler(*args)
            except Exception:
                self.handler_failed(Failure(), hub, method)
                continue
            if outcome is not None:
                self._watch_outcome(outcome, hub, method)

    def _watch_outcome(self, outcome: object, hub: str, method: str) -> None:
        if isinstance(outcome, Deferred):
            d: Deferred[Any] = outcome
        elif hasattr(outcome, "__await__") and hasattr(outcome, "send"):
            d = ensureDeferred(outcome)  # type: ignore[arg-type]
        else:
            return

        def failed(f: Failure) -> None:
            self.handler_failed(f, hub, method)

        d.addErrback(failed)

    def handler_failed(self, failure: Failure, hub: str, method: str) -> None:
        """Log a handler's failure and report it through ``on_error``."""
        self._log.failure("handler for {hub}.{method} raised", failure, hub=hub, method=method)
        kind = failure.type.__name__ if failure.type is not None else "error"
        error = SignalRError(
            f"handler for {hub}.{method} raised {kind}: {failure.getErrorMessage()}"
        )
        self._on_error.fire(error)

    def malformed(self, message: MalformedMessage) -> None:
        """Report a broken element of ``M``."""
        self._log.error("{error}", error=str(message.error))
        self._on_error.fire(message.error)
