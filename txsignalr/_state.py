"""The states of a hub connection (shared by the façade and the family engines)."""

from __future__ import annotations

import enum

__all__ = ["ConnectionState"]


class ConnectionState(str, enum.Enum):
    """The states of a :class:`~txsignalr.HubConnection`."""

    connecting = "connecting"
    connected = "connected"
    reconnecting = "reconnecting"
    disconnected = "disconnected"
