"""
Sans-I/O protection of connection and groups tokens, standing in for SignalR's
``IProtectedData`` (machine key / DPAPI): opaque base64 text (``+``, ``/``, ``=`` are
common, so clients must percent-encode it once) that only the instance holding the key
can read back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os

__all__ = ["Protector"]

_MAC_SIZE = 16
_NONCE_SIZE = 16
_CONNECTION_PURPOSE = "SignalR.ConnectionToken"
_GROUPS_PURPOSE = "SignalR.Groups.v1.1"


class Protector:
    """
    Authenticated (not encrypted) tokens bound to a purpose, with a per-instance key.

    :param key: the secret; a new random key models a server restart with an
        auto-generated machine key, which makes every old token unreadable.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else os.urandom(32)

    def _mac(self, purpose: str, body: bytes) -> bytes:
        digest = hmac.new(self._key, purpose.encode("utf-8") + b"\0" + body, hashlib.sha256)
        return digest.digest()[:_MAC_SIZE]

    def protect(self, purpose: str, text: str) -> str:
        """:returns: base64 of MAC + random nonce + version byte + ``text``."""
        body = os.urandom(_NONCE_SIZE) + b"\x01" + text.encode("utf-8")
        return base64.b64encode(self._mac(purpose, body) + body).decode("ascii")

    def unprotect(self, purpose: str, token: str | None) -> str | None:
        """:returns: the protected text, or ``None`` when the token is not ours."""
        if not token:
            return None
        try:
            raw = base64.b64decode(token.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        if len(raw) < _MAC_SIZE + _NONCE_SIZE + 1:
            return None
        mac, body = raw[:_MAC_SIZE], raw[_MAC_SIZE:]
        if not hmac.compare_digest(mac, self._mac(purpose, body)):
            return None
        try:
            return body[_NONCE_SIZE + 1 :].decode("utf-8")
        except UnicodeDecodeError:
            return None

    def connection_token(self, connection_id: str, user_name: str = "") -> str:
        """:returns: the ``ConnectionToken`` for a connection id (``id:user``)."""
        return self.protect(_CONNECTION_PURPOSE, f"{connection_id}:{user_name}")

    def connection_id(self, token: str | None) -> str | None:
        """:returns: the connection id in a connection token, or ``None`` if invalid."""
        text = self.unprotect(_CONNECTION_PURPOSE, token)
        if text is None:
            return None
        connection_id, sep, _user = text.partition(":")
        return connection_id if sep and connection_id else None

    def groups_token(self, connection_id: str, groups: list[str]) -> str:
        """:returns: the groups token (``G``) binding a connection id and its groups."""
        return self.protect(_GROUPS_PURPOSE, connection_id + ":" + json.dumps(sorted(groups)))

    def groups(self, token: str | None, connection_id: str) -> list[str]:
        """
        :returns: the groups in a groups token, or ``[]`` when the token is invalid,
            foreign or made for another connection (``VerifyGroups``).
        """
        text = self.unprotect(_GROUPS_PURPOSE, token)
        if text is None:
            return []
        owner, sep, listing = text.partition(":")
        if not sep or owner != connection_id:
            return []
        try:
            value = json.loads(listing)
        except ValueError:
            return []
        if not isinstance(value, list):
            return []
        return [g for g in value if isinstance(g, str)]
