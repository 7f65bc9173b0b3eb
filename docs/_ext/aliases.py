"""
Resolve the references autodoc writes for names it prints in a form no inventory has.

* ``<InterfaceClass twisted.internet.interfaces.IReactorTime>``: the ``repr`` of a
  zope.interface in an annotation; it is looked up as the interface's dotted name.
* Short names from string annotations (``from __future__ import annotations``), such
  as ``IReactorTime``: looked up by the full name in :data:`SHORT`.

Anything still unresolved is left to Sphinx, so nitpicky mode warns about it.
"""

from __future__ import annotations

import re
from typing import Any

from sphinx.ext import intersphinx

_INTERFACE = re.compile(r"^<InterfaceClass ([\w.]+)>( \| None)?$")

#: short name -> full name, for names autodoc prints unqualified
SHORT: dict[str, str] = {
    "IReactorTime": "twisted.internet.interfaces.IReactorTime",
    "IDelayedCall": "twisted.internet.interfaces.IDelayedCall",
    "IPolicyForHTTPS": "twisted.web.iweb.IPolicyForHTTPS",
    "Deferred": "twisted.internet.defer.Deferred",
    "Failure": "twisted.python.failure.Failure",
    "IService": "twisted.application.service.IService",
}

#: private module -> the public one Twisted's documentation lists its names under
PRIVATE: dict[str, str] = {"twisted.internet._sslverify.": "twisted.internet.ssl."}


def _missing(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    match = _INTERFACE.match(target)
    full = match.group(1) if match else SHORT.get(target)
    for private, public in PRIVATE.items():
        if target.startswith(private):
            full = public + target[len(private) :]
    if full is None:
        return None
    node["reftarget"] = full
    domain = env.get_domain("py")
    found = domain.resolve_xref(
        env, node["refdoc"], app.builder, node["reftype"], full, node, contnode
    )
    if found is not None:
        return found
    return intersphinx.missing_reference(app, env, node, contnode)


def setup(app: Any) -> dict[str, Any]:
    app.connect("missing-reference", _missing, priority=400)
    return {"parallel_read_safe": True}
