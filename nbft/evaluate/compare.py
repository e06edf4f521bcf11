"""``compare``: evaluate base and tuned models on several tasks and return the table for display.

It runs :func:`nbft.evaluate.compare_models` (the computation, a plain results dict), wraps the dict in a
:class:`nbft.report.ComparisonTable`, and records the result in each compared run's model card. The report and the
card are imported when it is called, not when this module is imported: the rest of :mod:`nbft.evaluate` never
imports :mod:`nbft.report`, and ``nbft.report.compare`` (an alias kept for old code) resolves to this function
lazily, so no import circle forms.

Example::

    from nbft.evaluate.compare import compare      # also nbft.compare and nbft.report.compare
    table = compare({"base": base, "tuned": run}, ["sentiment", "qa"], target="sentiment")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbft.report.table import ComparisonTable

__all__ = ["compare"]


def compare(models: Mapping[str, Any], tasks: Any, **kwargs: Any) -> ComparisonTable:
    """Base vs tuned (and in-context baselines) on several tasks: :func:`nbft.evaluate.compare_models` wrapped in a
    :class:`ComparisonTable` for display. Takes the same arguments.

    Example::

        table = nbft.compare({"base": (base, tok), "tuned": run}, ["sentiment", "qa", "reply"], target="sentiment",
                             n=200, icl_shots=(0, 3), chat_template=True)
        table                       # the side-by-side table in a notebook
        print(table.to_text())      # in a terminal

    A compared run (a ``Run``, a run directory or its ``model/`` folder) gets the result in its model card: the
    table as prose and the numbers as ``model-index`` metadata (:func:`nbft.train.card.record_comparison`).

    Without ``chat_template=`` (or ``config=``) the prompts take the format the compared runs were trained with
    (their ``run.json``); a run evaluated in another format gets a warning and a note in the table.
    """
    from nbft.dataset_settings import follow_trained_format_kwargs
    from nbft.evaluate.runner import compare_models
    from nbft.report.export import model_card_section
    from nbft.report.table import ComparisonTable
    from nbft.train.card import record_comparison

    kwargs, format_notes = follow_trained_format_kwargs(models, kwargs)
    table = ComparisonTable(compare_models(models, tasks, **kwargs))
    table.results.setdefault("notes", []).extend(format_notes)
    record_comparison(models, table.results, model_card_section(table))  # each compared run's card keeps it
    return table
