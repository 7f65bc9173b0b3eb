"""
Helpers for payloads that exchange feeds send through SignalR.

Exchange hubs (Bittrex's ``c2``/``c3`` and their imitators) send client-method arguments
and some results as *base64 of raw DEFLATE* (no zlib or gzip header) JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from txsignalr.errors import ProtocolError

__all__ = ["decode_deflate_base64", "encode_deflate_base64"]


def decode_deflate_base64(payload: str | bytes) -> Any:
    """
    Decode a base64, raw-DEFLATE compressed JSON payload.

    :param payload: the string found in the client call's arguments.
    :returns: the decoded JSON value.
    :raises ProtocolError: when the payload is not base64, not raw DEFLATE or not JSON.
    """
    if not isinstance(payload, (str, bytes)):
        raise ProtocolError("deflate-base64 payload is not a string", payload)
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ProtocolError(f"payload is not valid base64 ({e})", payload) from None
    try:
        text = zlib.decompress(raw, -zlib.MAX_WBITS)
    except zlib.error as e:
        raise ProtocolError(f"payload is not raw DEFLATE data ({e})", payload) from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ProtocolError(f"decompressed payload is not JSON ({e})", text[:500]) from None


def encode_deflate_base64(value: Any) -> str:
    """
    Encode a JSON value the way exchange feeds do (the inverse of
    :func:`decode_deflate_base64`).

    :param value: any JSON-serialisable value.
    :returns: base64 text of the raw-DEFLATE compressed compact JSON.
    """
    text = json.dumps(value, separators=(",", ":")).encode("utf-8")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return base64.b64encode(compressor.compress(text) + compressor.flush()).decode("ascii")
