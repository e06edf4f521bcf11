"""ComparePanel: run :func:`nbft.evaluate.compare` on a button and show the side-by-side table and the Δ heatmap.

The comparison runs in a worker thread, like training, so the notebook stays responsive; the worker only sets
widget values. The table is :func:`nbft.report.side_by_side` (a pandas Styler) rendered to HTML.

Example::

    from nbft.widgets import ComparePanel
    panel = ComparePanel(lambda: {"base": base_model, "tuned": train_panel.model},
                         ["sentiment", "qa", "reply"], target="sentiment", tokenizer=tok, n=50, icl_shots=(0, 3))
    panel                     # click Compare; then panel.table is the ComparisonTable
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

__all__ = ["ComparePanel"]

_WIDE = {"description_width": "110px"}


def _task_name(task: Any) -> str:
    return task if isinstance(task, str) else task.name


def _parse_shots(text: str) -> tuple[int, ...]:
    try:
        shots = tuple(sorted({int(part) for part in text.replace(";", ",").split(",") if part.strip()}))
    except ValueError:
        msg = f"in-context shots must be whole numbers separated by commas, e.g. '0, 3'; got {text!r}"
        raise ValueError(msg) from None
    return shots or (0,)


class ComparePanel(widgets.VBox):
    """A Compare button over :func:`nbft.evaluate.compare`, with task selection, ``n`` and in-context shots.

    Args:
        models: ``{name: model}`` as ``compare()`` takes it (first = the base), or a zero-argument function that
            returns it when Compare is clicked, e.g. ``lambda: {"base": base, "tuned": train_panel.model}``.
        tasks: task names or :class:`~nbft.evaluate.Task` objects offered (all selected at first).
        target: the task the tuned model was trained for.
        n, icl_shots, tokenizer: the initial values of ``compare()``'s arguments.
        **compare_kwargs: passed on to ``compare()`` (``batch_size=``, ``chat_template=``, ``scoring=``...).

    Attributes:
        table: the last :class:`~nbft.evaluate.ComparisonTable` (``None`` before the first run).
        error: the exception of the last run, if it failed.

    Example::

        panel = ComparePanel({"base": (base, tok), "tuned": "runs/sentiment-1/model"}, ["sentiment", "qa"],
                             target="sentiment")
        panel.compare(); panel.wait().summary       # the same as clicking Compare
    """

    def __init__(
        self,
        models: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        tasks: Sequence[Any],
        *,
        target: str | None = None,
        n: int = 50,
        icl_shots: Sequence[int] = (0,),
        tokenizer: Any = None,
        **compare_kwargs: Any,
    ) -> None:
        self.models = models
        self.tasks = {_task_name(t): t for t in tasks}
        self.target = target
        self.tokenizer = tokenizer
        self.compare_kwargs = {"progress": False, **compare_kwargs}  # tqdm from a worker would land in any cell
        self.table: Any = None
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

        names = list(self.tasks)
        self.task_select = widgets.SelectMultiple(
            options=names, value=tuple(names), rows=min(6, max(2, len(names))), description="tasks"
        )
        self.n = widgets.IntText(value=n, description="examples/task")
        self.shots = widgets.Text(value=", ".join(str(k) for k in icl_shots), description="in-context k")
        for w in (self.task_select, self.n, self.shots):
            w.style = _WIDE
        self.compare_button = widgets.Button(description="Compare", icon="balance-scale", button_style="primary")
        self.status_label = widgets.HTML("")
        self.result = widgets.HTML("")
        self.heatmap = widgets.Image(format="png")  # natural size: scaling a PNG up only blurs it
        self.compare_button.on_click(lambda _: self._safely(self.compare))
        super().__init__(
            [
                widgets.HBox([self.task_select, widgets.VBox([self.n, self.shots])]),
                widgets.HBox([self.compare_button, self.status_label]),
                self.result,
                self.heatmap,
            ]
        )
        self.add_class("nbft-compare-panel")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def compare(self) -> threading.Thread:
        """Start ``compare()`` in a worker thread with the panel's settings (what Compare does)."""
        if self.running:
            raise RuntimeError("a comparison is already running")
        selected = [self.tasks[name] for name in self.task_select.value]
        if not selected:
            raise ValueError("select at least one task")
        kwargs = dict(self.compare_kwargs, n=self.n.value or None, icl_shots=_parse_shots(self.shots.value))
        target = self.target if self.target in self.task_select.value else None
        self.error = None
        self.compare_button.disabled = True
        self._set_status("running", f"{len(selected)} task(s), n={kwargs['n']}, in-context k={kwargs['icl_shots']}")
        self._thread = threading.Thread(target=self._work, args=(selected, target, kwargs), daemon=True)
        self._thread.name = "nbft-compare"
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the comparison ends; return the table (re-raise the error if it failed)."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.table

    def _work(self, tasks: list[Any], target: str | None, kwargs: dict[str, Any]) -> None:
        from nbft.evaluate import compare
        from nbft.report import delta_heatmap, figure_to_png, side_by_side

        t0 = time.perf_counter()
        try:
            models = self.models() if callable(self.models) else self.models
            table = compare(models, tasks, target=target, tokenizer=self.tokenizer, **kwargs)
            notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
            notes_html = f"<ul class='nbft-notes'>{notes}</ul>" if notes else ""
            self.result.value = side_by_side(table).to_html() + notes_html
            if len(table.columns) > 1:
                self.heatmap.value = figure_to_png(delta_heatmap(table))
            self.table = table
            self._set_status("done", f"in {time.perf_counter() - t0:.1f} s")
        except Exception as exc:
            self.error = exc
            self._set_status("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.compare_button.disabled = False

    def _safely(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:
            self._set_status("error", f"{type(exc).__name__}: {exc}")

    def _set_status(self, status: str, detail: str) -> None:
        colour = {"done": "#1a7f37", "failed": "#cf222e", "error": "#cf222e"}.get(status, "#57606a")
        self.status_label.value = (
            f'<span class="nbft-status" data-status="{status}" style="color:{colour}"><b>{status}</b></span> '
            f"<span>{html.escape(detail)}</span>"
        )
