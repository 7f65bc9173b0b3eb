"""
txsignalr: a SignalR client for Twisted.

Classic ASP.NET SignalR 2.x hubs over WebSockets, Server-Sent Events or long
polling, with Deferred-based invocations, automatic reconnects that lose nothing,
a twistd service that keeps subscriptions alive, and an in-process test server
(:mod:`txsignalr.testing`).
"""

from txsignalr._connection import ConnectionState, HubConnection, HubProxy
from txsignalr._protocol import Transport
from txsignalr._tls import tls_policy
from txsignalr._version import __version__
from txsignalr.errors import (
    ConnectionClosed,
    HubError,
    InvalidStateError,
    InvalidURL,
    MessageTooLarge,
    NegotiationError,
    NoTransportError,
    ProtocolError,
    SignalRError,
    StartError,
)
from txsignalr.payloads import decode_deflate_base64, encode_deflate_base64

__all__ = [
    "ConnectionClosed",
    "ConnectionState",
    "HubConnection",
    "HubError",
    "HubProxy",
    "InvalidStateError",
    "InvalidURL",
    "MessageTooLarge",
    "NegotiationError",
    "NoTransportError",
    "ProtocolError",
    "SignalRError",
    "StartError",
    "Transport",
    "__version__",
    "decode_deflate_base64",
    "encode_deflate_base64",
    "tls_policy",
]
