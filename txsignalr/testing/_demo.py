"""
Demo hubs shaped like the hubs of the recorded real-server transcripts: ``c3`` (an
exchange feed) and ``chat`` (classic transcripts; both also served over ASP.NET Core),
and ``echo``, the test hub of the ASP.NET Core transcripts (``transcripts-core/``) with
streams both ways and a client result.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from txsignalr.payloads import encode_deflate_base64
from txsignalr.testing._hubs import Hub, HubCall, HubException

__all__ = ["C3Hub", "ChatHub", "EchoHub"]


def _timestamp(seconds: float) -> str:
    """ISO-8601 UTC with 7 fractional digits, as .NET ``DateTime`` ``"o"`` prints it."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _result(success: bool, error_code: str | None = None) -> dict[str, Any]:
    return {"Success": success, "ErrorCode": error_code}


class C3Hub(Hub):
    """
    An exchange-feed hub (``c3``).  Topics are groups: ``Subscribe`` joins them (so the
    client gets a new groups token ``G``), and every ``interval`` seconds the hub
    pushes ``heartbeat()`` to ``heartbeat``, ``tick({"Seq", "Ts"})`` to ``tick`` and
    ``marketSummaries(<base64 raw-DEFLATE JSON>)`` to ``market_summaries``, all with
    one shared sequence number.

    :param interval: seconds between pushes.
    """

    name = "c3"

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.sequence = 0
        self._authenticated: set[str] = set()
        self._timer: IDelayedCall | None = None

    # -- lifecycle -----------------------------------------------------------------

    def on_start(self) -> None:
        self._timer = self.server.call_later(self.interval, self._push)

    def on_stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._authenticated.clear()

    def on_disconnected(self, connection_id: str, stop_called: bool) -> None:
        self._authenticated.discard(connection_id)

    def _push(self) -> None:
        self._timer = self.server.call_later(self.interval, self._push)
        self.sequence += 1
        n = self.sequence
        ts = _timestamp(self.server.reactor.seconds())
        self.send_to_group("heartbeat", "heartbeat")
        self.send_to_group("tick", "tick", {"Seq": n, "Ts": ts})
        summaries = {
            "sequence": n,
            "deltas": [
                {
                    "symbol": "BTC-USD",
                    "high": "1000.0",
                    "low": "900.0",
                    "volume": str(n),
                    "quoteVolume": "0",
                    "percentChange": "0.1",
                    "updatedAt": ts,
                },
                {
                    "symbol": "ETH-USD",
                    "high": "100.0",
                    "low": "90.0",
                    "volume": str(n),
                    "quoteVolume": "0",
                    "percentChange": "-0.1",
                    "updatedAt": ts,
                },
            ],
        }
        self.send_to_group("market_summaries", "marketSummaries", encode_deflate_base64(summaries))

    # -- hub methods ---------------------------------------------------------------

    def _check(self, call: HubCall, topic: Any) -> dict[str, Any] | None:
        if not isinstance(topic, str) or topic == "" or topic.startswith("invalid"):
            return _result(False, "INVALID_CHANNEL")
        if topic.startswith("private") and call.connection_id not in self._authenticated:
            return _result(False, "UNAUTHORIZED")
        return None

    def Subscribe(self, call: HubCall, topics: list[Any]) -> list[dict[str, Any]]:
        """Join each topic's group: ``[{"Success", "ErrorCode"}, ...]``."""
        results = []
        for topic in topics or []:
            failed = self._check(call, topic)
            if failed is None:
                call.groups.add(topic)
            results.append(failed or _result(True))
        return results

    def Unsubscribe(self, call: HubCall, topics: list[Any]) -> list[dict[str, Any]]:
        """Leave each topic's group: ``[{"Success", "ErrorCode"}, ...]``."""
        results = []
        for topic in topics or []:
            failed = self._check(call, topic)
            if failed is None:
                call.groups.remove(topic)
            results.append(failed or _result(True))
        return results

    def Authenticate(
        self, call: HubCall, apiKey: Any, timestamp: Any, randomContent: Any, signedContent: Any
    ) -> dict[str, Any]:
        """Accept any API key except ``"bad"`` (``INVALID_APIKEY``)."""
        if apiKey == "bad" or not apiKey:
            return _result(False, "INVALID_APIKEY")
        self._authenticated.add(call.connection_id)
        return _result(True)

    def IsAuthenticated(self, call: HubCall) -> bool:
        """Whether the caller authenticated."""
        return call.connection_id in self._authenticated

    def Echo(self, call: HubCall, value: Any) -> Any:
        """Return the argument."""
        return value

    def Fail(self, call: HubCall) -> None:
        """Raise a HubException with error data."""
        raise HubException(
            "Intentional failure from c3.Fail()", data={"Code": 42, "Reason": "requested"}
        )

    def Crash(self, call: HubCall) -> None:
        """Raise a plain exception (generic error unless ``detailed_errors``)."""
        raise RuntimeError("Intentional non-hub exception from c3.Crash()")

    async def Slow(self, call: HubCall, ms: int) -> str:
        """Sleep ``ms`` milliseconds reporting progress 20, 40, 60, 80, 100."""
        for percent in (20, 40, 60, 80, 100):
            await self.server.sleep(float(ms) / 5000.0)
            call.report_progress(percent)
        return f"slept {ms} ms"


class ChatHub(Hub):
    """A chat hub (``chat``): broadcast, groups, caller state."""

    name = "chat"

    def Send(self, call: HubCall, name: Any, message: Any) -> None:
        """``addMessage(name, message)`` to everybody."""
        self.send_to_all("addMessage", name, message)

    def JoinGroup(self, call: HubCall, group: str) -> None:
        """Join a group."""
        call.groups.add(group)

    def LeaveGroup(self, call: HubCall, group: str) -> None:
        """Leave a group."""
        call.groups.remove(group)

    def SendToGroup(self, call: HubCall, group: str, message: Any) -> None:
        """``groupMessage(group, message)`` to the group's members."""
        self.send_to_group(group, "groupMessage", group, message)

    def IncrementCounter(self, call: HubCall) -> int:
        """Increment caller state ``counter``, set ``lastCalled``; returns the counter."""
        counter = int(call.state.get("counter") or 0) + 1
        call.state["counter"] = counter
        call.state["lastCalled"] = "IncrementCounter"
        return counter

    def GetName(self, call: HubCall) -> Any:
        """Caller state ``name``."""
        return call.state.get("name")

    def Whoami(self, call: HubCall) -> str:
        """The caller's connection id."""
        return call.connection_id


class EchoHub(Hub):
    """
    The hub of the ASP.NET Core transcripts (``echo``): ``Echo(x)``, ``Add(a, b)``,
    ``Fail()`` (HubException "Intentional failure"), ``Broadcast(msg)`` →
    ``receive(msg)`` to all, ``JoinGroup(g)`` / ``LeaveGroup(g)`` /
    ``SendToGroup(g, msg)`` → ``groupMessage(g, msg)``, ``GetConnectionId()``, the
    server-to-client stream ``Counter(count, delayMs)``, the client-to-server stream
    ``Sum(stream)``, and ``AskClient(question)``, which returns the caller's
    ``getMessage(question)`` client result (ASP.NET Core only).

    :param tick_interval: seconds between ``tick(n)`` calls to every client, or
        ``None`` (the default) for no ticker.
    """

    name = "echo"

    def __init__(self, tick_interval: float | None = None) -> None:
        self.tick_interval = tick_interval
        self.ticks = 0
        self._timer: IDelayedCall | None = None

    def on_start(self) -> None:
        if self.tick_interval is not None:
            self._timer = self.server.call_later(self.tick_interval, self._tick)

    def on_stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        assert self.tick_interval is not None
        self._timer = self.server.call_later(self.tick_interval, self._tick)
        self.ticks += 1
        self.send_to_all("tick", self.ticks)

    def Echo(self, call: HubCall, x: Any) -> Any:
        """Return the argument."""
        return x

    def Add(self, call: HubCall, a: Any, b: Any) -> Any:
        """``a + b``."""
        return a + b

    def Fail(self, call: HubCall) -> None:
        """Raise ``HubException("Intentional failure")``."""
        raise HubException("Intentional failure")

    def Broadcast(self, call: HubCall, msg: Any) -> None:
        """``receive(msg)`` to every connection of the hub."""
        self.send_to_all("receive", msg)

    def JoinGroup(self, call: HubCall, group: str) -> None:
        """Join a group."""
        call.groups.add(group)

    def LeaveGroup(self, call: HubCall, group: str) -> None:
        """Leave a group."""
        call.groups.remove(group)

    def SendToGroup(self, call: HubCall, group: str, msg: Any) -> None:
        """``groupMessage(group, msg)`` to the group's members."""
        self.send_to_group(group, "groupMessage", group, msg)

    def GetConnectionId(self, call: HubCall) -> str:
        """The caller's connection id."""
        return call.connection_id

    async def Counter(self, call: HubCall, count: int, delayMs: int) -> AsyncIterator[int]:
        """Stream ``0 .. count-1``, one every ``delayMs`` milliseconds."""
        for i in range(int(count)):
            if delayMs:
                await self.server.sleep(float(delayMs) / 1000.0)
            yield i

    async def Sum(self, call: HubCall, numbers: AsyncIterator[Any]) -> Any:
        """The sum of an uploaded stream."""
        total = 0
        async for n in numbers:
            total += n
        return total

    async def AskClient(self, call: HubCall, question: Any) -> Any:
        """The caller's result for ``getMessage(question)``."""
        return await call.caller.invoke_with_result("getMessage", question)
