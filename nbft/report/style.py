"""How nbft's renderings look: the colours of gains and regressions, number and CI formats, markdown escaping.

Shared by every module of :mod:`nbft.report`; no other nbft module is imported here.

Example::

    from nbft.report.style import _fmt
    _fmt(3.14159, sign=True)     # '+3.1'
"""

from __future__ import annotations

import html
import math
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

__all__ = ["GREEN", "GREY", "NO_LABEL", "RED"]


GREEN, RED, GREY = "#1a7f37", "#cf222e", "#6e7781"
NO_LABEL = "no label (%)"
"""How the share of generated answers with no recognisable label is named in tables (metric ``unparseable_rate``)."""


def _fmt(x: Any, digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(lo: float, hi: float, sign: bool = False) -> str:
    return f"[{_fmt(lo, sign=sign)}, {_fmt(hi, sign=sign)}]"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _md(text: str) -> str:
    """``text`` as literal markdown: HTML escaped (markdown renders it) and the characters that would format it
    (``|`` ends a table cell, ``*``/``_`` emphasise, backticks open code, brackets make links) backslash-escaped.

    Example:
        >>> print(_md("tuned|*v2*_<b>"))
        tuned\\|\\*v2\\*\\_&lt;b&gt;
    """
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).replace("\n", " ")
