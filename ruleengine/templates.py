"""Message templates: ``{data.examples:,.0f}`` style placeholders filled from facts and thresholds."""

from __future__ import annotations

import string
from typing import Any


def render_message(template: str, values: dict[str, Any]) -> str:
    """Return ``template`` with each ``{name[:spec]}`` replaced by ``format(values[name], spec)``.

    Dotted names are looked up whole (``{serving.requests_per_day}``), not as attributes. An
    unknown name or a value that does not fit the spec is left as the raw placeholder text.
    """
    out: list[str] = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            out.append("{" + name + (":" + spec if spec else "") + "}")
            continue
        value = values[name]
        if conversion == "r":
            value = repr(value)
        try:
            out.append(format(value, spec or ""))
        except (ValueError, TypeError):
            out.append(str(value))
    return "".join(out)
