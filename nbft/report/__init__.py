"""Pure rendering of a comparison's results dict: styled tables, figures, per-example diffs, HTML/markdown/CSV export,
model card; and :class:`ComparisonTable`, the results dict with its tidy views, which :func:`nbft.compare` returns.

:func:`nbft.evaluate.compare_models` computes the comparison and returns a plain dict; this package only reads it.
Nothing here imports widgets or IPython, and nothing draws with pyplot's global state: figures are
``matplotlib.figure.Figure`` objects (safe in threads and in scripts), tables are pandas Stylers or DataFrames.

One job per module: :mod:`~nbft.report.table` (the table and its text and label views), :mod:`~nbft.report.style`
(colours, number formats, escaping), :mod:`~nbft.report.figures`, :mod:`~nbft.report.examples` (per-example
diffs) and :mod:`~nbft.report.export` (HTML, markdown, CSV, model card). Two names are re-exported from the layers
that compute them: ``weight_change`` (:mod:`nbft.weights`) and ``compare`` (:mod:`nbft.evaluate.compare`; resolved
on first use, so importing the report never imports the evaluation engine).

Example::

    import nbft
    from nbft import report
    table = nbft.compare({"base": base, "tuned": run}, ["sentiment", "qa"], target="sentiment")
    report.side_by_side(table)                     # pandas Styler: tasks x (base, k-shot, tuned), Δ coloured
    report.delta_heatmap(table)                    # seaborn heatmap of Δ (task x model)
    report.loss_curve(run.history)                 # train/validation loss
    report.weight_change_heatmap(report.weight_change(base_model, tuned_model))
    report.export_html(table, "report.html", history=run.history)

Every function that takes a ``table`` also takes the plain results dict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbft.report.examples import example_view, word_diff_html
from nbft.report.export import export_csv, export_html, export_markdown, model_card_section
from nbft.report.figures import delta_heatmap, figure_to_png, loss_curve, weight_change_heatmap

# also kept importable from here: the colours and label name (tests and callers read them) and _md
from nbft.report.style import GREEN as GREEN
from nbft.report.style import GREY as GREY
from nbft.report.style import NO_LABEL as NO_LABEL
from nbft.report.style import RED as RED
from nbft.report.style import _md as _md
from nbft.report.table import (
    ComparisonTable,
    confusion_frame,
    diagnostics_html,
    forgetting_summary,
    label_frame,
    prompt_tokens_frame,
    side_by_side,
    table_frame,
    to_text,
)
from nbft.weights import weight_change

if TYPE_CHECKING:
    from nbft.evaluate.compare import compare

__all__ = [
    "ComparisonTable",
    "compare",
    "confusion_frame",
    "delta_heatmap",
    "diagnostics_html",
    "example_view",
    "export_csv",
    "export_html",
    "export_markdown",
    "figure_to_png",
    "forgetting_summary",
    "label_frame",
    "loss_curve",
    "model_card_section",
    "prompt_tokens_frame",
    "side_by_side",
    "table_frame",
    "to_text",
    "weight_change",
    "weight_change_heatmap",
    "word_diff_html",
]


def __getattr__(name: str) -> Any:
    # ``compare`` (kept here for old code) runs the evaluation: imported on first use, so ``import nbft.report``
    # stays light (no torch) and the report never imports the evaluation engine at import time.
    if name == "compare":
        from nbft.evaluate.compare import compare

        globals()["compare"] = compare  # cache: the next lookup is a plain attribute
        return compare
    raise AttributeError(f"module 'nbft.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "compare"])
