"""
Intersphinx inventories for Twisted, treq and autobahn, written at build time from the
installed packages.

The CI machine reaches PyPI but not docs.twisted.org or readthedocs.io, so intersphinx
cannot download those projects' ``objects.inv``, and a copy committed here would drift
from the installed versions.  Instead, on ``builder-inited`` this extension imports the
modules txsignalr itself imports from those projects (found by reading txsignalr's
``from X import Y`` lines), lists their public classes, functions and methods, and
writes one ``objects.inv`` per project under ``docs/_build/inventories/`` with the URL
scheme of that project's published documentation:

* Twisted (pydoctor): ``api/<module>.html``, ``api/<module>.<Class>.html``, members as
  ``#<name>`` anchors of the page that defines them;
* treq and autobahn (Sphinx autodoc): one page per package with ``#<full.name>``
  anchors.

``conf.py`` points ``intersphinx_mapping`` at those files, so a reference such as
:class:`twisted.internet.defer.Deferred` links to the real page with no network.
"""

from __future__ import annotations

import importlib
import inspect
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

#: project -> (base URL, package prefixes)
PROJECTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "twisted": ("https://docs.twisted.org/en/stable/", ("twisted",)),
    "treq": ("https://treq.readthedocs.io/en/stable/", ("treq",)),
    "autobahn": ("https://autobahn.readthedocs.io/en/latest/", ("autobahn",)),
}

_IMPORT = re.compile(r"^\s*from\s+((?:twisted|treq|autobahn)(?:\.\w+)*)\s+import", re.M)


def imported_modules(source: Path) -> set[str]:
    """Every twisted/treq/autobahn module a ``from X import`` line of ``source`` names."""
    found: set[str] = set()
    for path in source.rglob("*.py"):
        found.update(_IMPORT.findall(path.read_text(encoding="utf-8")))
    found.discard("twisted.plugins")
    return found


#: modules documented in txsignalr's docstrings that txsignalr does not import from
EXTRA_MODULES = (
    "twisted.application.internet",
    "twisted.application.service",
    "twisted.internet.defer",
    "twisted.internet.interfaces",
    "twisted.internet.ssl",
    "twisted.internet.task",
    "twisted.internet.threads",
    "twisted.python.usage",
    "twisted.web.iweb",
    "treq",
    "treq.client",
    "treq.testing",
)


def _is_interface(value: Any) -> bool:
    from zope.interface.interface import InterfaceClass

    return isinstance(value, InterfaceClass)


def _members(module: ModuleType) -> Iterator[tuple[str, str, Any]]:
    """
    (role, qualified name, object) for the public names of ``module``: those it
    defines, and those its ``__all__`` re-exports (``twisted.internet.ssl`` re-exports
    ``Certificate``, and the published pages document it there).
    """
    exported = set(getattr(module, "__all__", ()))
    for name, value in vars(module).items():
        if name.startswith("_"):
            continue
        if getattr(value, "__module__", None) != module.__name__ and name not in exported:
            continue
        full = f"{module.__name__}.{name}"
        if _is_interface(value):
            yield "class", full, value
            for attr in value.names():
                yield "method", f"{full}.{attr}", None
        elif inspect.isclass(value):
            yield "class", full, value
            for attr, member in vars(value).items():
                if attr.startswith("_"):
                    continue
                if callable(member) or isinstance(member, (staticmethod, classmethod)):
                    yield "method", f"{full}.{attr}", member
                else:
                    yield "attribute", f"{full}.{attr}", member
        elif inspect.isfunction(value):
            yield "function", full, value


def _uri(project: str, role: str, name: str, module: str) -> str:
    if project == "twisted":
        if role == "module":
            return f"api/{name}.html"
        if role in ("class", "exception"):
            return f"api/{name}.html"
        if role in ("method", "attribute"):
            owner, _, attr = name.rpartition(".")
            return f"api/{owner}.html#{attr}"
        return f"api/{module}.html#{name.rpartition('.')[2]}"
    page = ".".join(module.split(".")[:2]) if project == "autobahn" else "api"
    if project == "autobahn":
        return f"reference/{page}.html#{name}"
    return f"api.html#{name}"


def inventory(project: str, modules: set[str]) -> bytes:
    """The bytes of an ``objects.inv`` (version 2) for ``modules`` of ``project``."""
    lines: list[str] = []
    for module_name in sorted(modules):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        uri = _uri(project, "module", module_name, module_name)
        lines.append(f"{module_name} py:module 0 {uri} -")
        for role, full, value in _members(module):
            if role == "class" and isinstance(value, type) and issubclass(value, BaseException):
                role = "exception"
            lines.append(f"{full} py:{role} 1 {_uri(project, role, full, module_name)} -")
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        "# Version: installed\n"
        "# The remainder of this file is compressed using zlib.\n"
    ).encode()
    return header + zlib.compress("\n".join(lines).encode() + b"\n")


def write_inventories(source: Path, out: Path) -> dict[str, Path]:
    """Write one inventory per project under ``out``; returns project -> file."""
    modules = imported_modules(source) | set(EXTRA_MODULES)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for project, (_, prefixes) in PROJECTS.items():
        mine = {m for m in modules if m.split(".")[0] in prefixes}
        path = out / f"{project}.inv"
        path.write_bytes(inventory(project, mine))
        written[project] = path
    return written
