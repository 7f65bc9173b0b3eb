"""
What a connection sets up once instead of for every connection, or only when needed,
gives what the per-connection way gave.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from txsignalr import HubConnection
from txsignalr.errors import InvalidURL


def test_engines_are_built_for_the_family_only() -> None:
    clock = Clock()
    classic = HubConnection(clock, "http://127.0.0.1:1/signalr", protocol="classic", hub="h")
    assert "_core" not in vars(classic) and "_classic" not in vars(classic)
    core = HubConnection(clock, "http://127.0.0.1:1/hub", protocol="core")
    assert "_core" in vars(core) and "_classic" not in vars(core)
    auto = HubConnection(clock, "http://127.0.0.1:1/hub")
    assert auto._core is auto._core  # built once, then an attribute
    assert "_core" in vars(auto)


@pytest.mark.parametrize("protocol", ["auto", "classic", "core"])
def test_a_reserved_query_fails_at_construction_whatever_the_family(protocol: str) -> None:
    with pytest.raises(InvalidURL):
        HubConnection(Clock(), "http://127.0.0.1:1/hub?id=1", protocol=protocol)
