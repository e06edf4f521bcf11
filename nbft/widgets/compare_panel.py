"""ComparePanel: run :func:`nbft.compare` on a button and show the side-by-side table and the Δ heatmap.

The comparison runs in a worker thread, like training, so the notebook stays responsive; the worker only sets
widget values. The table is :func:`nbft.report.side_by_side` (a pandas Styler) rendered to HTML. The heatmap is
shown at its natural size (sharp, never stretched); until there is one, the panel shows a line of text instead of
an empty image. Library progress bars and repeated warnings are silenced during the comparison and each distinct
warning appears once in the panel's log area. When the comparison ends, the table and heatmap also go into an
ordinary output below the panel, so the saved notebook shows them without a kernel.

Below the table: what each column's prompt costs in context (mean prompt tokens; a k-shot column shows what its
examples add), and the per-example view (:func:`nbft.report.example_view`): prompt text, reference, outputs and
scores of the base and a chosen model, worst regressions first (or biggest gains, or test order), with a word diff.

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
    check_models,
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
        probes: the initial value of the "out-of-domain probes" checkbox (``compare(..., probes=)``: each selected
            task's probes, e.g. sentiment on movie reviews, as rows of their own); default on when the target has
            probes (without a target: when a task has), else that of ``config=`` if one is given.
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
        probes: bool | None = None,
        **compare_kwargs: Any,
    ) -> None:
        from nbft.evaluate import get_task

        check_models(models, first=" (first = the base)", least="the base model")
        if isinstance(tasks, str):
            tasks = [tasks]
        if not tasks:
            raise ValueError("no tasks given; e.g. ComparePanel(models, ['sentiment', 'qa'])")
        with_probes = []  # the tasks that name out-of-domain probes
        for t in tasks:
            task = get_task(t) if isinstance(t, str) else t  # an unknown name fails here, not at the first click
            if getattr(task, "probes", ()):
                with_probes.append(_task_name(t))
        if target is not None and target not in {_task_name(t) for t in tasks}:
            raise ValueError(f"target {target!r} is not among the tasks {[_task_name(t) for t in tasks]}")
        self.models = models
        self.tasks = {_task_name(t): t for t in tasks}
        self.target = target
        self.tokenizer = tokenizer
        self.compare_kwargs = {"progress": False, **compare_kwargs}  # tqdm from a worker would land in any cell
        if probes is None and compare_kwargs.get("config") is not None:
            probes = compare_kwargs["config"].probes
        if probes is None:  # on when the target's skill has other sources to check it on
            probes = target in with_probes if target is not None else bool(with_probes)
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
        self.probes = widgets.Checkbox(value=bool(probes), description="out-of-domain probes", indent=False,
                                       disabled=not with_probes and not probes)  # fmt: skip
        probe_tip = (
            "Also score each selected task's out-of-domain probes (other data, the same skill: "
            f"{', '.join(with_probes)}) as rows of their own, left out of G and AF"
            if with_probes
            else "None of these tasks has out-of-domain probes (Task.with_probes adds some)"
        )
        self.compare_button = widgets.Button(description="Compare", icon="balance-scale", button_style="primary")
        for w, tip in (
            (self.task_select, "The tasks to score every model on (Ctrl/Shift+click for several)"),
            (self.n, "Test examples per task (0: all); more examples, narrower intervals, longer wait"),
            (self.shots, "In-context examples for the base model, e.g. '0, 3': the columns it gets"),
            (self.probes, probe_tip),
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
        self.examples = _ExampleView()
        self.compare_button.on_click(lambda _: self._safely(self.compare))
        super().__init__(
            [
                widgets.HBox([self.task_select, widgets.VBox([self.n, self.shots, self.probes])]),
                widgets.HBox([self.compare_button, self.status_label]),
                self.result,
                self.heatmap,
                self.labels,
                self.examples.widget,
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
        kwargs = dict(self.compare_kwargs, n=self.n.value or None, icl_shots=_parse_shots(self.shots.value),
                      probes=self.probes.value)  # fmt: skip
        target = self.target if self.target in self.task_select.value else None
        self.error = None
        self.log_area.clear()
        self.compare_button.disabled = True
        self._started = time.monotonic()
        self._finished.clear()
        self._what = f"{len(selected)} task(s), n={kwargs['n']}, in-context k={kwargs['icl_shots']}"
        self._what += ", with their probes" if kwargs["probes"] else ""
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
            self.examples.show(table)
            self._end("done", f"in {time.perf_counter() - t0:.1f} s")
            body = table_html + notes_html + (image_html(figure, "Δ heatmap") if figure is not None else "")
            body += labels_html + self.examples.static_html()
            self.static.update(body + self.log_area.html(), str(table), png=figure)
            self.static.finish("Comparison done. Run this cell again for the panel's controls.")
        except Exception as exc:
            self.error = exc
            self.result.value = ""  # no stale table under a failure
            self.labels.value = ""
            self.examples.clear()
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


_ORDERS = {
    "worst regressions first": None,  # example_view's own order
    "biggest gains first": False,
    "test order": "example",
}


def _prompt_cell(text: str) -> str:
    first = html.escape(" ".join(str(text).split())[:80])
    body = html.escape(str(text))
    return (
        f"<details><summary style='cursor:pointer'>{first}…</summary>"
        f"<pre style='white-space:pre-wrap;margin:2px 0;font-size:11px'>{body}</pre></details>"
    )


def tokens_html(table: Any) -> str:
    """Mean prompt tokens per task and column; a k-shot column also shows what its examples add to the base's
    prompt (the in-context cost), e.g. ``187 (+125)``."""
    from nbft.report import prompt_tokens_frame

    frame = prompt_tokens_frame(table)
    if frame.empty:
        return ""
    ref = table.reference
    shown = frame.copy()
    for col in frame.columns:
        if col.startswith(f"{ref} ") and col.endswith("-shot") and ref in frame.columns:
            shown[col] = [
                f"{v} (+{v - b})" if isinstance(v, int) and isinstance(b, int) else v
                for v, b in zip(frame[col], frame[ref], strict=True)
            ]
    caption = (
        "<caption style='caption-side:bottom;text-align:left;font-size:12px'>Mean prompt tokens per example: the "
        "context each column's prompt costs; a k-shot column shows (+ what its in-context examples add).</caption>"
    )
    table_html = shown.to_html(classes="nbft-tokens", escape=True).replace(">\n  <thead>", ">" + caption + "<thead>", 1)
    return f"<div class='nbft-tokens' style='overflow-x:auto'>{table_html}</div>"


class _ExampleView:
    """The per-example view of a finished comparison: choose the task, the model set against the base, the order
    and how many; the tokens table sits above it."""

    def __init__(self) -> None:
        self.table: Any = None
        self.task = widgets.Dropdown(description="task", style=_WIDE)
        self.model = widgets.Dropdown(description="vs base", style=_WIDE)
        self.order = widgets.Dropdown(options=list(_ORDERS), value="worst regressions first", description="order",
                                      style=_WIDE)  # fmt: skip
        self.n = widgets.IntText(value=10, description="examples", style=_WIDE)
        for w, tip in ((self.task, "The task whose test examples are listed"),
                       (self.model, "The model whose outputs are set against the base's (word diff)"),
                       (self.order, "Worst regressions first, biggest gains first, or the test order"),
                       (self.n, "How many examples to list")):  # fmt: skip
            if w.has_trait("tooltip"):
                w.tooltip = tip
            else:  # ipywidgets 7
                w.description_tooltip = tip
        self.tokens = widgets.HTML("")
        self.rows = widgets.HTML("", layout=widgets.Layout(overflow="auto", max_width="100%"))
        controls = widgets.HBox([self.task, self.model, self.order, self.n],
                                layout=widgets.Layout(flex_flow="row wrap"))  # fmt: skip
        self.widget = widgets.VBox([self.tokens, controls, self.rows], layout=widgets.Layout(display="none"))
        self.widget.add_class("nbft-examples")
        for w in (self.task, self.model, self.order, self.n):
            w.observe(lambda _: self.render(), names="value")
        self._updating = False

    def show(self, table: Any) -> None:
        self.table = table
        others = [c for c in table.columns[1:] if not c.startswith(f"{table.reference} ")]
        others += [c for c in table.columns[1:] if c not in others]  # k-shot columns last
        self._updating = True
        try:
            self.task.options = table.tasks
            self.task.value = table.target if table.target in table.tasks else table.tasks[0]
            self.model.options = others
            self.model.value = others[0] if others else None
            self.model.disabled = not others
        finally:
            self._updating = False
        self.tokens.value = tokens_html(table)
        self.render()
        self.widget.layout.display = None

    def clear(self) -> None:
        self.table = None
        self.tokens.value = self.rows.value = ""
        self.widget.layout.display = "none"

    def frame(self) -> Any:
        """The rows shown: :func:`nbft.report.example_view` of the chosen task and model, in the chosen order."""
        from nbft.report import example_view

        view = example_view(self.table, task=self.task.value, model=self.model.value, n=1_000_000)
        order = _ORDERS[self.order.value]
        delta = f"delta:{self.model.value}"
        if order is False and delta in view.columns:
            view = view.sort_values(delta, ascending=False, na_position="last", kind="stable")
        elif order == "example":
            view = view.sort_values("example", kind="stable")
        return view.head(max(0, self.n.value)).reset_index(drop=True)

    def render(self) -> None:
        if self._updating or self.table is None or self.task.value is None:
            return
        view = self.frame()
        base, model = self.table.reference, self.model.value
        heads = ["#", "prompt", "reference", f"{base}", f"{model}" if model else None, "Δ", "diff"]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in heads if h is not None)
        body = []
        for _, r in view.iterrows():

            def out(col: str, r: Any = r) -> str:
                text, score = r.get(f"output:{col}"), r.get(f"score:{col}")
                shown = "–" if text is None else html.escape(str(text))
                return f"<td>{shown}<br><small style='color:#57606a'>score {_num(score)}</small></td>"

            cells = [f"<td>{r['example']}</td>", f"<td>{_prompt_cell(r['prompt'])}</td>",
                     f"<td>{html.escape(str(r['reference']))}</td>", out(base)]  # fmt: skip
            if model:
                cells += [out(model), f"<td>{_num(r.get(f'delta:{model}'), sign=True)}</td>",
                          f"<td>{r.get('diff', '')}</td>"]  # fmt: skip
            body.append("<tr>" + "".join(cells) + "</tr>")
        style = "border-collapse:collapse;font-size:12px"
        self.rows.value = (
            f"<table class='nbft-examples-table' style='{style}'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
            if body
            else placeholder_html("no scored examples for this task")
        )

    def static_html(self) -> str:
        if self.table is None:
            return ""
        title = html.escape(f"{self.task.value}: {self.model.value or self.table.reference} vs {self.table.reference}")
        return f"{self.tokens.value}<h4>Examples, {title} ({html.escape(self.order.value)})</h4>{self.rows.value}"


def _num(value: Any, sign: bool = False) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    if v != v:  # NaN: not scored in this column
        return "–"
    return f"{v:+.1f}" if sign else f"{v:.1f}"
