"""The ``twistd signalr`` plugin: only a ServiceMaker; the work is in :mod:`txsignalr.tap`."""

from twisted.application.service import ServiceMaker

txsignalr = ServiceMaker(
    "txsignalr",
    "txsignalr.tap",
    "Keep SignalR hub subscriptions alive and write client calls as JSON lines",
    "signalr",
)
