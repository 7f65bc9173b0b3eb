"""
Sphinx configuration for txsignalr's documentation.

Build it with ``.venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html``
(after ``pip install -e '.[docs]'``); ``.ci/run`` does exactly that, so a warning (a bad
docstring, a broken ``:ref:`` or ``:doc:``, an unknown txsignalr name) fails CI.

Intersphinx: the inventories of Twisted, treq and autobahn are generated here from the
installed packages (``_ext/localinv.py``), because the build machines cannot download
them and a committed copy would drift; the links point at each project's published
pages.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))

import localinv  # noqa: E402

from txsignalr import __version__  # noqa: E402

project = "txsignalr"
author = "txsignalr developers"
copyright = "2026, txsignalr developers"
release = __version__
version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "aliases",
    "twistdhelp",
]

exclude_patterns = ["_build"]
templates_path: list[str] = []
html_theme = "furo"
html_title = f"txsignalr {release}"

autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autoclass_content = "both"

_inventories = localinv.write_inventories(ROOT / "txsignalr", HERE / "_build" / "inventories")
intersphinx_mapping = {
    name: (localinv.PROJECTS[name][0], str(path)) for name, path in _inventories.items()
}

# Every reference to a txsignalr name must resolve (nitpicky), while names from the
# standard library and typing, which have no local inventory, are let through.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(typing|collections|collections\.abc|types|enum|datetime|pathlib)\..*"),
    (r"py:.*", r"(Any|Callable|Awaitable|AsyncIterator|Iterator|Iterable|Mapping|Sequence)"),
    (r"py:.*", r"(str|bytes|int|float|bool|dict|list|tuple|set|frozenset|object|None|type)"),
    (r"py:.*", r"(Exception|BaseException|ValueError|TypeError|KeyError|OSError)"),
    (r"py:.*", r"(optional|callable|iterable)"),
    (r"py:.*", r"http\.cookiejar\..*|CookieJar"),
    # private txsignalr names that public signatures mention (type aliases, private
    # bases): documented where they matter in prose, not as API
    (r"py:.*", r"txsignalr\.(\w+\.)*_\w+.*"),
    (r"py:class", r"(TransportFactory|TokenCheck|RetryPolicy|HTTPClientLike|ConnectionFactory)"),
]
