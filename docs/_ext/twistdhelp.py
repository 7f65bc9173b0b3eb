"""
``.. twistd-options::`` renders every option of ``twistd signalr`` from the real
:class:`txsignalr.tap.Options`, so the reference page cannot drift from the code: a
definition list of each long option, its short form, its argument and its help text
(the same text ``twistd signalr --help`` prints).
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def options_table() -> list[tuple[str, str, str]]:
    """(the option as typed, its default or "", its help) for every option, in order."""
    from txsignalr.tap import Options

    opts = Options()
    rows: list[tuple[str, str, str]] = []
    # usage.Options keeps what getUsage() prints in these attributes
    docs = opts.docs
    seen: set[str] = set()
    for long_name in opts.longOpt:
        name = long_name.rstrip("=")
        if name in seen or name in ("help", "version"):
            continue
        seen.add(name)
        takes = long_name.endswith("=")
        shorts = [s for s, target in opts.synonyms.items() if target == name and len(s) == 1]
        short = shorts[0] if shorts else ""
        typed = f"--{name}" + (" VALUE" if takes else "")
        if short:
            typed = f"-{short}, " + typed
        rows.append((typed, name, " ".join(str(docs.get(name, "")).split())))
    return rows


class TwistdOptions(SphinxDirective):
    has_content = False

    def run(self) -> list[Any]:
        items = nodes.definition_list()
        for typed, _name, help_text in options_table():
            term = nodes.term("", "")
            term += nodes.literal(typed, typed)
            definition = nodes.definition()
            definition += nodes.paragraph(help_text, help_text)
            item = nodes.definition_list_item()
            item += term
            item += definition
            items += item
        return [items]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("twistd-options", TwistdOptions)
    return {"parallel_read_safe": True}
