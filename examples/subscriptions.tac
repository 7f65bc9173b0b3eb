"""
Keep SignalR subscriptions alive inside your own Twisted application.

Run it against the embedded demo server (no network needed)::

    twistd -ny examples/subscriptions.tac

or against a real endpoint::

    SIGNALR_URL=https://example.com/signalr twistd -ny examples/subscriptions.tac

The service connects, subscribes, and from then on re-connects with back-off and
re-subscribes whenever the connection is lost for good or the market feed falls silent
for 10 seconds.  The handlers below are where application code goes.
"""

import os

from twisted.application.service import Application
from twisted.internet import reactor
from twisted.logger import Logger

from txsignalr import decode_deflate_base64
from txsignalr.service import (
    ClientCall,
    ConnectionSettings,
    Handler,
    Subscription,
    SubscriptionService,
)
from txsignalr.tap import DemoService

log = Logger(namespace="example")


class MarketBook:
    """Keeps the latest market summaries and notices gaps in the sequence."""

    def __init__(self) -> None:
        self.sequence: int | None = None
        self.latest: dict[str, dict[str, str]] = {}

    def on_summaries(self, call: ClientCall) -> None:
        summary = decode_deflate_base64(call.args[0])
        sequence = summary["sequence"]
        if self.sequence is not None and sequence != self.sequence + 1:
            log.warn("gap in market summaries: {last} -> {now}", last=self.sequence, now=sequence)
        self.sequence = sequence
        for delta in summary["deltas"]:
            self.latest[delta["symbol"]] = delta
        log.info(
            "market summaries #{sequence}: {symbols}",
            sequence=sequence,
            symbols=", ".join(f"{s} vol {d['volume']}" for s, d in sorted(self.latest.items())),
        )


book = MarketBook()


def subscription_service(url: str) -> SubscriptionService:
    """The application's subscriptions and handlers, for the endpoint at ``url``."""
    return SubscriptionService(
        reactor,
        ConnectionSettings(
            url,
            headers={"Authorization": os.environ["SIGNALR_AUTH"]}
            if "SIGNALR_AUTH" in os.environ
            else {},
        ),
        subscriptions=[
            Subscription(
                "c3",
                "Subscribe",
                (["market_summaries"],),
                stale_after=10.0,  # no marketSummaries for 10 s: reconnect afresh
                watch=("marketSummaries",),
            ),
        ],
        handlers=[Handler("c3", "marketSummaries", book.on_summaries)],
    )


application = Application("txsignalr-example")
if "SIGNALR_URL" in os.environ:
    subscription_service(os.environ["SIGNALR_URL"]).setServiceParent(application)
else:
    DemoService(reactor, 0, subscription_service).setServiceParent(application)
