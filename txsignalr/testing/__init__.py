"""
An in-process classic ASP.NET SignalR 2.x server for tests, examples and users' tests.

It speaks the WebSockets, Server-Sent Events and long polling transports (client
protocol 1.2 to 2.0) the way Microsoft's server does: the same negotiate document, init
frame, cursors, groups tokens, hub results (over HTTP transports: the ``/send`` body),
error texts and keep-alives.  See :class:`SignalRServer`.

Reconnect policy: a ``/reconnect`` is accepted for any valid token.  Within
``disconnect_timeout + 5`` seconds of losing its socket (long polling: of its last poll
ending) the connection is still known:
the server's own group membership wins over the client's groups token (groups changed
while the client was away, or whose ``G`` frame was lost with the socket, are kept, and
a fresh ``G`` is sent when the token differs), and everything published after the
client's cursor (hub, group and connection messages, up to ``buffer_size`` per topic;
for a group joined after that cursor, everything since the join) is replayed.  After
that window (or after ``/abort``) the server has run ``on_disconnected`` and forgotten
the connection; a late ``/reconnect`` is still accepted as a new connection state whose
groups come from the groups token, and replays what the hub and group topics still
buffer, but messages addressed to that connection alone are gone.

Sizes: client messages over 64 KiB drop the TCP connection (as on Microsoft's server);
what the server sends is not limited.

The same server also speaks ASP.NET Core SignalR (the JSON hub protocol, and MessagePack
when ``ormsgpack`` is installed) over WebSockets, Server-Sent Events (JSON only) and long
polling, each hub at :meth:`SignalRServer.core_url`
(``/hubs/<hub>``), with Microsoft's negotiate (v0/v1), handshake, messages, streams both
ways, client results (:class:`CoreHubCall`), pings, client timeout, Close, an Azure
style redirect (:meth:`SignalRServer.redirect_url`) and bearer tokens.
"""

from txsignalr.testing._context import HubContext
from txsignalr.testing._core_hubs import CoreHubCall, UploadStream
from txsignalr.testing._demo import C3Hub, ChatHub, EchoHub
from txsignalr.testing._hubs import ClientResultError, Hub, HubCall, HubException
from txsignalr.testing._server import SignalRServer

__all__ = [
    "C3Hub",
    "ChatHub",
    "ClientResultError",
    "CoreHubCall",
    "EchoHub",
    "Hub",
    "HubCall",
    "HubContext",
    "HubException",
    "SignalRServer",
    "UploadStream",
]
