"""
txsignalr: a SignalR client for Twisted.

ASP.NET Core SignalR (JSON or MessagePack hub protocol) and classic ASP.NET SignalR 2.x hubs over
WebSockets, Server-Sent Events or long polling, behind one API: Deferred-based
invocations, streams, client results, automatic reconnects, a twistd service that
keeps subscriptions alive, and an in-process test server (:mod:`txsignalr.testing`)
for both families.
"""

from txsignalr._connection import ConnectionState, HubConnection, HubProxy
from txsignalr._core_msgpack import MessagePackExt
from txsignalr._protocol import Transport
from txsignalr._streams import HubStream
from txsignalr._tls import tls_policy, tls_policy_from_files
from txsignalr._version import __version__
from txsignalr.errors import (
    ConnectionClosed,
    HandshakeError,
    HubError,
    InvalidStateError,
    InvalidURL,
    MessageTooLarge,
    NegotiationError,
    NoTransportError,
    ProtocolError,
    SignalRError,
    StartError,
    TLSConfigError,
)
from txsignalr.payloads import decode_deflate_base64, encode_deflate_base64

__all__ = [
    "ConnectionClosed",
    "ConnectionState",
    "HandshakeError",
    "HubConnection",
    "HubError",
    "HubProxy",
    "HubStream",
    "InvalidStateError",
    "InvalidURL",
    "MessagePackExt",
    "MessageTooLarge",
    "NegotiationError",
    "NoTransportError",
    "ProtocolError",
    "SignalRError",
    "StartError",
    "TLSConfigError",
    "Transport",
    "__version__",
    "decode_deflate_base64",
    "encode_deflate_base64",
    "tls_policy",
    "tls_policy_from_files",
]
