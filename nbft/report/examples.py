"""Per-example views of a comparison: outputs side by side, worst regression first, with word-level diffs.

Example::

    from nbft.report import example_view
    example_view(table, task="qa", n=10)
"""

from __future__ import annotations

import difflib
import html
from collections.abc import Mapping
from typing import Any

import pandas as pd

from nbft.report.style import GREEN, RED, _fmt
from nbft.report.table import ComparisonTable, _table

__all__ = ["example_view", "word_diff_html"]


def word_diff_html(before: str, after: str) -> str:
    """Word-level diff as HTML: removed words struck through in red, added words in green (difflib).

    Example::

        word_diff_html("the cat sat", "the dog sat")
    """
    a, b = str(before).split(), str(after).split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            out.append(f'<del style="color:{RED}">{html.escape(" ".join(a[i1:i2]))}</del>')
        if op in ("insert", "replace"):
            out.append(f'<ins style="color:{GREEN};text-decoration:none">{html.escape(" ".join(b[j1:j2]))}</ins>')
    return " ".join(out)


def example_view(
    table: ComparisonTable | Mapping[str, Any],
    *,
    task: str | None = None,
    model: str | None = None,
    n: int = 20,
    as_html: bool = False,
) -> pd.DataFrame | str:
    """Per-example view sorted by the worst regression first: prompt text and hash, reference, outputs and scores,
    and a word-level diff of base vs ``model`` outputs.

    ``model`` defaults to the last (tuned) model. ``as_html=True`` returns an HTML table with the diffs rendered.

    Example::

        example_view(table, task="qa", n=10)
    """
    table = _table(table)
    ex = table.examples
    if task is not None:
        ex = ex[ex["task"] == task]
    others = [c for c in table.columns[1:] if f"output:{c}" in ex.columns and not c.endswith("-shot")]
    model = model or (others[-1] if others else None)
    base = table.reference
    cols = ["task", "example", "prompt", "prompt_hash", "reference", f"output:{base}", f"score:{base}"]
    if model:
        ex = ex.sort_values(f"delta:{model}", na_position="last", kind="stable")
        cols += [f"output:{model}", f"score:{model}", f"delta:{model}"]
        if "status" in ex.columns:
            cols.append("status")
    view = ex[[c for c in cols if c in ex.columns]].head(n).copy()
    if model:
        view["diff"] = [
            word_diff_html(b, t) for b, t in zip(view[f"output:{base}"], view[f"output:{model}"], strict=True)
        ]
    if not as_html:
        return view.reset_index(drop=True)

    # every cell but the diff (built from escaped words) is text from data or models: escape it
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return _fmt(v)
        return "–" if v is None else html.escape(str(v))

    view.columns = [html.escape(str(c)) for c in view.columns]
    formatters = {c: cell for c in view.columns if c != "diff"}
    return view.to_html(escape=False, index=False, na_rep="–", formatters=formatters)
