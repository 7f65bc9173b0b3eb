"""
The hub calls of one ASP.NET Core connection of the test server, :class:`CoreCalls`
(``DefaultHubDispatcher``'s share): invocations and stream invocations of hub methods,
cancels, client-to-server stream items, and the client results the server waits for.
The connection (:class:`~txsignalr.testing._core_connection.CoreConnection`) keeps the
connection's life and hands it every hub message but Close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from txsignalr._core_protocol import (
    CancelInvocation,
    Completion,
    HubMessage,
    Invocation,
    StreamInvocation,
    StreamItem,
)
from txsignalr.testing._core_hubs import (
    Binding,
    ClientResultError,
    CoreHubCall,
    StreamRun,
    UploadStream,
    bind,
    run_invocation,
    run_stream,
)

if TYPE_CHECKING:
    from txsignalr.testing._core_connection import CoreConnection

__all__ = ["CoreCalls"]


class CoreCalls:
    """
    Every hub call of one connection, both ways.

    :param connection: the connection they run on.
    """

    def __init__(self, connection: CoreConnection) -> None:
        self._conn = connection
        self._streams: dict[str, StreamRun] = {}
        self._uploads: dict[str, UploadStream] = {}
        self._results: dict[str, defer.Deferred[Any]] = {}
        self._next_id = 0

    def dispatch(self, message: HubMessage) -> None:
        """Handle one message from the client (Ping, Ack, Sequence: nothing to do)."""
        conn = self._conn
        if isinstance(message, (Invocation, StreamInvocation)):
            self._invoke(
                message.target,
                message.arguments,
                message.invocation_id,
                message.stream_ids,
                message.headers,
                streaming=type(message) is StreamInvocation,
            )
        elif isinstance(message, StreamItem):
            upload = self._uploads.get(message.invocation_id)
            if upload is not None and not upload.feed(message.item):
                conn.close(conn.closed_error("InvalidOperationException: stream buffer full"))
        elif isinstance(message, Completion):
            self._completion(message)
        elif isinstance(message, CancelInvocation):
            run = self._streams.pop(message.invocation_id, None)
            conn.event("cancel", invocation_id=message.invocation_id, known=run is not None)
            if run is not None:
                run.cancel()

    def _completion(self, message: Completion) -> None:
        waiting = self._results.pop(message.invocation_id, None)
        if waiting is not None:
            self._conn.event(
                "client_result",
                invocation_id=message.invocation_id,
                result=message.result,
                error=message.error,
            )
            if message.error is not None:
                waiting.errback(ClientResultError(message.error))
            else:
                waiting.callback(message.result)
            return
        upload = self._uploads.pop(message.invocation_id, None)
        if upload is not None:
            upload.end(message.error)

    def _invoke(
        self,
        target: str,
        arguments: tuple[Any, ...],
        invocation_id: str | None,
        stream_ids: tuple[str, ...],
        headers: Any,
        streaming: bool,
    ) -> None:
        conn = self._conn
        conn.event(
            "invoke",
            target=target,
            arguments=list(arguments),
            invocation_id=invocation_id,
            stream_ids=list(stream_ids),
            streaming=streaming,
        )
        detailed = conn.settings.detailed_errors
        uploads = [UploadStream(sid) for sid in stream_ids]
        bound = bind(conn.hub, target, tuple(arguments) + tuple(uploads), detailed)
        if isinstance(bound, str):
            if invocation_id is not None:
                conn.send(conn.codec.completion(invocation_id, error=bound))
            return
        binding: Binding = bound
        if binding.is_stream and not streaming:
            if invocation_id is not None:
                conn.send(
                    conn.codec.completion(
                        invocation_id,
                        error=f"The client attempted to invoke the streaming '{target}' method "
                        "with a non-streaming invocation.",
                    )
                )
            return
        for upload in uploads:
            self._uploads[upload.stream_id] = upload
        call = CoreHubCall(conn.registry.context, conn.hub, conn, invocation_id, headers)
        if streaming:
            assert invocation_id is not None
            run = run_stream(
                binding, call, target, invocation_id, detailed, lambda: not conn.closed
            )
            if run.deferred is not None and not run.deferred.called:
                self._streams[invocation_id] = run
                run.deferred.addBoth(self._stream_done, invocation_id, run)
            d = run.deferred
        else:
            d = run_invocation(binding, call, target, invocation_id, detailed)
        if uploads and d is not None:
            d.addBoth(self._drop_uploads, uploads)

    def _stream_done(self, result: Any, invocation_id: str, run: StreamRun) -> Any:
        if self._streams.get(invocation_id) is run:
            del self._streams[invocation_id]
        return result

    def _drop_uploads(self, result: Any, uploads: list[UploadStream]) -> Any:
        for upload in uploads:
            if self._uploads.get(upload.stream_id) is upload:
                del self._uploads[upload.stream_id]
        return result

    def invoke_with_result(self, method: str, args: tuple[Any, ...]) -> defer.Deferred[Any]:
        """An Invocation with an id (``s1``, ``s2``…); fires with the client's result."""
        self._next_id += 1
        invocation_id = f"s{self._next_id}"
        d: defer.Deferred[Any] = defer.Deferred()
        self._results[invocation_id] = d
        conn = self._conn
        conn.send(conn.codec.invocation(method, args, invocation_id))
        return d

    def shutdown(self, reason: str) -> None:
        """The connection ended: client results fail, streams stop, uploads end."""
        results, self._results = self._results, {}
        for d in results.values():
            d.errback(ClientResultError(f"connection {self._conn.id} closed: {reason}"))
        streams, self._streams = self._streams, {}
        for run in streams.values():
            run.cancel()
        uploads, self._uploads = self._uploads, {}
        for upload in uploads.values():
            upload.end("The connection closed before the stream completed.")
