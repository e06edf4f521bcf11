"""ComparePanel: run :func:`nbft.compare` on a button and show the side-by-side table and the Δ heatmap.

The comparison runs in a worker thread, like training, so the notebook stays responsive; the worker only sets
widget values. The table is :func:`nbft.report.side_by_side` (a pandas Styler) rendered to HTML. The heatmap is
shown at its natural size (sharp, never stretched); until there is one, the panel shows a line of text instead of
an empty image. Library progress bars and repeated warnings are silenced during the comparison and each distinct
warning appears once in the panel's log area. When the comparison ends, the table and heatmap also go into an
ordinary output below the panel, so the saved notebook shows them without a kernel.

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

from nbft.widgets._common import (
    LogArea,
    StaticResult,
    close_tree,
    display_with_static,
    image_html,
    natural_image,
    placeholder_html,
    set_image,
    set_tooltip,
    status_html,
    tidy,
)

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
    """A Compare button over :func:`nbft.compare`, with task selection, ``n`` and in-context shots.

    Args:
        models: ``{name: model}`` as ``compare()`` takes it (first = the base), or a zero-argument function that
            returns it when Compare is clicked, e.g. ``lambda: {"base": base, "tuned": train_panel.model}``.
        tasks: task names or :class:`~nbft.evaluate.Task` objects offered (all selected at first).
        target: the task the tuned model was trained for.
        n, icl_shots, tokenizer: the initial values of ``compare()``'s arguments.
        **compare_kwargs: passed on to ``compare()`` (``batch_size=``, ``chat_template=``, ``scoring=``...).

    Attributes:
        table: the last :class:`~nbft.report.ComparisonTable` (``None`` before the first run).
        error: the exception of the last run, if it failed.
        log_area: the distinct warnings of the last run, each once.

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
        from nbft.evaluate import get_task

        if not callable(models) and not isinstance(models, Mapping):
            raise TypeError(
                "models must be a dict {column name: model} (first = the base), or a function returning one, e.g. "
                f"{{'base': (model, tok), 'tuned': run}}; got {type(models).__name__}"
            )
        if isinstance(models, Mapping) and not models:
            raise ValueError("models is empty: give at least the base model, e.g. {'base': (model, tok)}")
        if isinstance(tasks, str):
            tasks = [tasks]
        if not tasks:
            raise ValueError("no tasks given; e.g. ComparePanel(models, ['sentiment', 'qa'])")
        for t in tasks:
            if isinstance(t, str):
                get_task(t)  # an unknown name fails here, with "did you mean", not at the first click
        if target is not None and target not in {_task_name(t) for t in tasks}:
            raise ValueError(f"target {target!r} is not among the tasks {[_task_name(t) for t in tasks]}")
        self.models = models
        self.tasks = {_task_name(t): t for t in tasks}
        self.target = target
        self.tokenizer = tokenizer
        self.compare_kwargs = {"progress": False, **compare_kwargs}  # tqdm from a worker would land in any cell
        self.table: Any = None
        self.error: BaseException | None = None
        self.log_area = LogArea()
        self.static = StaticResult()
        self._thread: threading.Thread | None = None
        self._started = 0.0
        self._what = ""
        self._where = ""  # the latest progress report: "task 2/5 · tuned · 40/100"
        self._last_status = 0.0
        self._finished = threading.Event()
        self._status_lock = threading.Lock()

        names = list(self.tasks)
        self.task_select = widgets.SelectMultiple(
            options=names, value=tuple(names), rows=min(6, max(2, len(names))), description="tasks"
        )
        self.n = widgets.IntText(value=n, description="examples/task")
        self.shots = widgets.Text(value=", ".join(str(k) for k in icl_shots), description="in-context k")
        for w in (self.task_select, self.n, self.shots):
            w.style = _WIDE
        self.compare_button = widgets.Button(description="Compare", icon="balance-scale", button_style="primary")
        for w, tip in (
            (self.task_select, "The tasks to score every model on (Ctrl/Shift+click for several)"),
            (self.n, "Test examples per task (0: all); more examples, narrower intervals, longer wait"),
            (self.shots, "In-context examples for the base model, e.g. '0, 3': the columns it gets"),
            (self.compare_button, "Score every model on the selected tasks (runs in the background)"),
        ):
            set_tooltip(w, tip)
        self.status_label = widgets.HTML(status_html("ready", "click Compare"))
        self.result = widgets.HTML(
            placeholder_html("The comparison table and the Δ heatmap appear here after Compare."),
            layout=widgets.Layout(overflow="auto", max_width="100%"),
        )
        self.heatmap = natural_image()  # natural size: scaling a PNG up only blurs it
        # label diagnostics (classification tasks): predicted-label shares beside the references', confusion matrices
        self.labels = widgets.HTML("", layout=widgets.Layout(overflow="auto", max_width="100%"))
        self.compare_button.on_click(lambda _: self._safely(self.compare))
        super().__init__(
            [
                widgets.HBox([self.task_select, widgets.VBox([self.n, self.shots])]),
                widgets.HBox([self.compare_button, self.status_label]),
                self.result,
                self.heatmap,
                self.labels,
                self.log_area.widget,
                self.static.style_widget,
            ]
        )
        self.add_class("nbft-compare-panel")
        self.add_class("nbft-panel")
        tidy(self)

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
        self.log_area.clear()
        self.compare_button.disabled = True
        self._started = time.monotonic()
        self._finished.clear()
        self._what = f"{len(selected)} task(s), n={kwargs['n']}, in-context k={kwargs['icl_shots']}"
        self._where = ""
        self._set_status("running", self._what)
        self._thread = threading.Thread(target=self._work, args=(selected, target, kwargs), daemon=True)
        self._thread.name = "nbft-compare"
        self._thread.start()
        threading.Thread(target=self._tick, name="nbft-compare-clock", daemon=True).start()
        return self._thread

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the comparison ends; return the table (re-raise the error if it failed)."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.table

    def close(self) -> None:
        """Close the panel and let go of the models it compares (and the last table)."""
        close_tree(self)
        self.models = {}
        self.table = None
        super().close()

    def static_html(self) -> str:
        """The HTML that the saved notebook keeps for this panel (table, notes, heatmap)."""
        return self.static.html

    def _tick(self) -> None:
        # between progress reports (a long batch), the clock still shows that time passes
        while not self._finished.wait(1.0):
            self._show_progress()

    def _on_progress(self, event: Mapping[str, Any]) -> None:
        """compare()'s progress report (worker thread): which task, which model, how many examples done."""
        self._where = (
            f"task {event['task_index']}/{event['n_tasks']} · {event['model']} · {event['done']}/{event['total']}"
        )
        if time.monotonic() - self._last_status >= 0.25:  # a browser needs far fewer updates than batches
            self._show_progress()

    def _show_progress(self) -> None:
        with self._status_lock:
            if self._finished.is_set():
                return
            self._last_status = time.monotonic()
            elapsed = self._last_status - self._started
            where = self._where or f"preparing: {self._what}"
            self._set_status("running", f"{where} · {elapsed:.0f} s")

    def _work(self, tasks: list[Any], target: str | None, kwargs: dict[str, Any]) -> None:
        from nbft._quiet import quiet
        from nbft.report import compare, delta_heatmap, diagnostics_html, side_by_side
        from nbft.widgets._figures import png

        t0 = time.perf_counter()
        try:
            with quiet(sink=self.log_area.add):
                models = self.models() if callable(self.models) else self.models
                table = compare(
                    models, tasks, target=target, tokenizer=self.tokenizer, on_progress=self._on_progress, **kwargs
                )
                notes = "".join(f"<li>{html.escape(n)}</li>" for n in table.notes)
                notes_html = f"<ul class='nbft-notes'>{notes}</ul>" if notes else ""
                table_html = f"<div class='nbft-table' style='overflow-x:auto'>{side_by_side(table).to_html()}</div>"
                self.result.value = table_html + notes_html
                figure = png(delta_heatmap(table)) if len(table.columns) > 1 else None
                labels_html = diagnostics_html(table)
                self.labels.value = labels_html
            if figure is not None:
                set_image(self.heatmap, figure)
            self.table = table
            self._end("done", f"in {time.perf_counter() - t0:.1f} s")
            body = table_html + notes_html + (image_html(figure, "Δ heatmap") if figure is not None else "")
            body += labels_html
            self.static.update(body + self.log_area.html(), str(table), png=figure)
            self.static.finish("Comparison done. Run this cell again for the panel's controls.")
        except Exception as exc:
            self.error = exc
            self.result.value = ""  # no stale table under a failure
            self.labels.value = ""
            self.heatmap.layout.display = "none"
            self._end("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self._finished.set()
            self.compare_button.disabled = False

    def _end(self, status: str, detail: str) -> None:
        with self._status_lock:
            self._finished.set()
            self._set_status(status, detail)

    def _safely(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:
            self._set_status("error", f"{type(exc).__name__}: {exc}")

    def _set_status(self, status: str, detail: str) -> None:
        self.status_label.value = status_html(status, detail)

    def _ipython_display_(self, **kwargs: Any) -> None:
        display_with_static(self, self.static)
