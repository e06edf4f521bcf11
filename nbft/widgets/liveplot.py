"""LivePlot: a training observer that keeps the metric history as plain data and draws it as a PNG image widget.

Why a PNG in a core ``widgets.Image`` rather than an interactive plot: it needs no extra JavaScript, so it works the
same in JupyterLab, Colab, VS Code and Binder. The history is plain data and the picture is a function of it
(small multiples: loss with a debiased moving average, one line per task in a mixture, validation points, learning
rate, tokens/s, memory), so the same figure can be drawn again at any time. When a monitor records task scores
(:class:`~nbft.evaluate.monitor.ForgettingMonitor`), a second figure shows the score per task against the step with
its base value dashed and the best checkpoint starred, and a table shows the live samples beside the base model's
answers, word-diffed.

Drawing never holds up training and never falls behind the data: the training thread only records the point and
wakes a drawing thread, which always draws the *latest* history (points that arrived during a render are drawn by
the next one; intermediate frames are dropped). Renders are rationed: at most one per ``min_interval`` seconds, and
when rendering is slow, at most a ``budget`` share of the wall time, but never rarer than one per ``max_interval``
seconds (a 0.3 s render on a busy CPU gives a frame every 3 s that shows the step of its moment, not a frame every
15 s).

Example::

    from nbft.widgets import LivePlot
    plot = LivePlot()
    plot                                   # shows the image widget; it updates while training runs
    run = nbft.finetune(model, tok, data["train"], observers=[plot], background=True)
    run.wait(); plot.snapshot()            # the final figure as a normal output, kept in the saved notebook
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from nbft.widgets._common import (
    StaticResult,
    image_html,
    natural_image,
    placeholder_html,
    set_image,
    set_tooltip,
    tidy,
)
from nbft.widgets._figures import Png, monitor_figure, png, training_figure
from nbft.widgets._samples import samples_html

__all__ = ["LivePlot", "Throttle"]

DrawFn = Callable[[list[dict[str, Any]], str], Any]


class Throttle:
    """Says yes at most once per ``min_interval`` seconds of ``clock`` (injectable, so tests need no sleeping).

    Example:
        >>> now = [0.0]
        >>> t = Throttle(1.0, clock=lambda: now[0])
        >>> t.ready(), t.ready()
        (True, False)
        >>> now[0] = 1.0
        >>> t.ready()
        True
    """

    def __init__(self, min_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = float(min_interval)
        self.clock = clock
        self._last: float | None = None

    def ready(self, min_interval: float | None = None) -> bool:
        interval = self.min_interval if min_interval is None else max(self.min_interval, min_interval)
        now = self.clock()
        if self._last is None or now - self._last >= interval:
            self._last = now
            return True
        return False

    def remaining(self, min_interval: float | None = None) -> float:
        """Seconds until :meth:`ready` says yes (0 when it would now), without using the slot."""
        interval = self.min_interval if min_interval is None else max(self.min_interval, min_interval)
        if self._last is None:
            return 0.0
        return max(0.0, self._last + interval - self.clock())

    def reset(self) -> None:
        self._last = None


def _row(state: Any) -> dict[str, Any]:
    if hasattr(state, "to_dict"):
        return dict(state.to_dict())
    if isinstance(state, Mapping):
        return dict(state)
    return {k: v for k, v in vars(state).items() if not k.startswith("_")}


class LivePlot:
    """Observer that plots a run live, redrawing at most once per ``min_interval`` seconds.

    It follows the engine's observer protocol (``on_train_begin``, ``on_step``, ``on_eval``, ``on_monitor``,
    ``on_phase``, ``on_save``, ``on_train_end``). Its events run in the training thread and its drawing in a
    drawing thread; both only set widget values: they never print or display. The last points are always drawn at
    ``on_train_end``. Displayed on its own (``display(plot)``), its view is replaced by the final figure as a
    plain output when the run ends, so the saved notebook shows the curve, not a widget error.

    Args:
        min_interval: the shortest time between two redraws, in seconds.
        budget: the share of wall time drawing may take when renders are slow (the interval grows up to
            ``max_interval``).
        max_interval: the longest time between two redraws while points arrive, in seconds.
        threaded: draw in a drawing thread (default); ``False`` draws inside the event, in the caller's thread.
        clock: the time source (tests pass a fake clock).
        draw: ``draw(history, title) -> matplotlib Figure``; default: small multiples (loss, learning rate,
            tokens/s, memory, monitor scores).
        width: CSS width of the image; default its natural size.
        smoothing: weight of the loss's debiased moving average (0 = raw only); ``smoothing_slider`` changes it.
        yscale: ``"auto"`` (the warm-up spike may leave the top of the loss axis), ``"log"`` or ``"linear"``.
        keep_previous: how many earlier runs stay on the loss plot, faintly, for comparison.

    Attributes:
        history: plain dicts like ``Run.history`` (``kind`` ``"train"``, ``"eval"``, ``"monitor"``).
        markers: ``(step, label)`` where the run stopped and resumed.
        image: the ``ipywidgets.Image`` that shows the PNG; ``view`` is what is displayed (with a placeholder).
        redraws: how many times the PNG was drawn. drawn_step: the last training step the image shows.
        monitor_image, samples: the task-score figure and the live-samples table (shown once a monitor reports).
    """

    def __init__(
        self,
        *,
        min_interval: float = 1.0,
        budget: float = 0.02,
        max_interval: float = 3.0,
        threaded: bool = True,
        clock: Callable[[], float] = time.monotonic,
        draw: DrawFn | None = None,
        width: str | None = None,
        smoothing: float = 0.6,
        yscale: str = "auto",
        keep_previous: int = 3,
    ) -> None:
        self.history: list[dict[str, Any]] = []
        self.markers: list[tuple[float, str]] = []
        self.previous: list[tuple[str, list[dict[str, Any]]]] = []
        self.info: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.phase: str | None = None
        self.redraws = 0
        self.last_png: Png | None = None
        self.last_monitor_png: Png | None = None
        self.throttle = Throttle(min_interval, clock)
        self.budget = budget
        self.max_interval = max(float(max_interval), float(min_interval))
        self.threaded = threaded
        self.drawn_step: Any = None
        self.clock = clock
        self.keep_previous = keep_previous
        self._draw_cost = 0.0
        self._draw = draw
        self._width = width
        self.image = natural_image()
        self.image.add_class("nbft-liveplot")
        self.placeholder = widgets.HTML(placeholder_html("The loss curve appears here after the first training step."))
        self.smoothing_slider = widgets.FloatSlider(
            value=smoothing, min=0.0, max=0.98, step=0.02, description="smoothing", readout_format=".2f",
            continuous_update=False, style={"description_width": "70px"}, layout=widgets.Layout(width="260px"),
        )  # fmt: skip
        self.yscale_toggle = widgets.ToggleButtons(
            options=[("auto y", "auto"), ("log y", "log"), ("full y", "linear")], value=yscale,
            tooltips=["ignore the warm-up spike", "logarithmic loss axis", "show every point"],
            description="loss axis", style={"button_width": "64px", "description_width": "60px"},
        )  # fmt: skip
        set_tooltip(self.smoothing_slider, "Weight of the loss's moving average (0: raw values only)")
        set_tooltip(self.yscale_toggle, "How the loss axis is scaled")
        self.smoothing_slider.observe(lambda _: self._redraw_if_any(), names="value")
        self.yscale_toggle.observe(lambda _: self._redraw_if_any(), names="value")
        self.controls = widgets.HBox([self.smoothing_slider, self.yscale_toggle])
        self.monitor_image = natural_image()
        self.monitor_image.add_class("nbft-monitor-plot")
        self.monitor_image.layout.display = "none"
        self.samples = widgets.HTML("", layout=widgets.Layout(display="none", max_width="100%"))
        self.samples.add_class("nbft-samples")
        self.static = StaticResult()  # the final figure replaces the view when the plot is displayed on its own
        self.view = widgets.VBox(
            [self.placeholder, self.image, self.controls, self.monitor_image, self.samples, self.static.style_widget]
        )
        self.view.add_class("nbft-panel")
        tidy(self.view)
        # The worker adds points; the drawing thread, a notebook cell (snapshot()) or a slider draw meanwhile.
        self._lock = threading.RLock()  # the history: held only to copy or change it, never while rendering
        self._render_lock = threading.Lock()  # one render at a time, so frames go out in order
        self._wake = threading.Condition()
        self._pending = False
        self._drawer: threading.Thread | None = None

    @property
    def smoothing(self) -> float:
        return float(self.smoothing_slider.value)

    @property
    def yscale(self) -> str:
        return str(self.yscale_toggle.value)

    # -------------------------------------------------------------------------------------------- events
    def on_train_begin(self, info: dict[str, Any]) -> None:
        start = int(info.get("start_step", 0) or 0)
        with self._lock:
            if start:
                # A resumed run continues the curve: keep what happened up to its checkpoint, drop what came after.
                self.history = [h for h in self.history if h.get("step", 0) <= start]
                kept = [(s, label) for s, label in self.markers if s < start]
                here = [label for s, label in self.markers if s == start]
                self.markers = [*kept, (start, " · ".join([*here, "resumed"]))]
            else:
                if any(h.get("kind") == "train" for h in self.history):
                    label = str(self.info.get("run_dir") or f"run {len(self.previous) + 1}").rsplit("/", 1)[-1]
                    self.previous = [*self.previous, (label, self.history)][-self.keep_previous :]
                self.history, self.markers = [], []
            self.info = {**self.info, **info} if start else dict(info)  # a resume is the same run
            self.summary = None
            self.phase = None
        self.throttle.reset()

    def on_step(self, state: Any) -> None:
        with self._lock:
            self.history.append({"kind": "train", **_row(state)})
        self._maybe_redraw()

    def on_eval(self, state: Any, metrics: Mapping[str, float]) -> None:
        row = _row(state)
        with self._lock:
            self.history.append({"kind": "eval", "step": row.get("step"), "epoch": row.get("epoch"), **metrics})
        self._maybe_redraw()

    def on_monitor(self, state: Any, record: Mapping[str, Any]) -> None:
        """A monitor point (``{"kind": "monitor", ...}``: task scores during training) joins the history."""
        row = dict(record)
        row.setdefault("kind", "monitor")
        if row.get("step") is None:
            row["step"] = _row(state).get("step") if state is not None else None
        with self._lock:
            self.history.append(row)
        self.redraw_monitor()  # a point every N steps: rare enough to draw each one
        self._maybe_redraw()

    def on_phase(self, event: Mapping[str, Any]) -> None:
        self.phase = str(event.get("phase"))

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self._stop_drawer()
        with self._lock:
            self.summary = dict(summary)
            steps = summary.get("steps")
            if summary.get("status") == "stopped" and steps:
                self.markers = [*[m for m in self.markers if m[0] != steps], (float(steps), "stopped")]
        self.redraw()  # always: the last points may have fallen inside the throttle window
        self.redraw_monitor()  # its title gives the monitor's share of the whole run
        if self.last_png is not None:
            body = image_html(self.last_png, "training curve")
            if self.last_monitor_png is not None:
                body += image_html(self.last_monitor_png, "task scores during training") + self.samples_html()
            self.static.update(body, self.title(), png=self.last_png)
            self.static.finish()

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add history rows (e.g. a finished ``run.history``) and redraw now."""
        with self._lock:
            self.history.extend(dict(r) for r in rows)
        self.redraw()
        self.redraw_monitor()

    def load(
        self, history: Iterable[Mapping[str, Any]], *, markers: Sequence[tuple[float, str]] = (), info=None
    ) -> None:
        """Replace the history (e.g. from a run directory's ``history.jsonl``) and redraw."""
        with self._lock:
            self.history = [dict(r) for r in history]
            self.markers = list(markers)
            self.info = dict(info or {})
            self.summary = None
        if self.history:
            self.redraw()
        self.redraw_monitor()

    # -------------------------------------------------------------------------------------------- drawing
    def _interval(self) -> float:
        # Budget: a redraw that took c seconds waits c / budget seconds for the next one, up to max_interval.
        backoff = self._draw_cost / self.budget if self.budget > 0 else 0.0
        return min(max(self.throttle.min_interval, backoff), self.max_interval)

    def _maybe_redraw(self) -> None:
        if not self.threaded:
            if self.throttle.ready(self._interval()):
                self.redraw()
            return
        with self._wake:
            self._pending = True
            if self._drawer is None or not self._drawer.is_alive():
                self._drawer = threading.Thread(target=self._draw_loop, name="nbft-liveplot", daemon=True)
                self._drawer.start()
            self._wake.notify()

    def _draw_loop(self) -> None:
        """The drawing thread: when there are new points and the interval has passed, draw the latest history."""
        while True:
            with self._wake:
                while not self._pending:
                    if self._drawer is not threading.current_thread():
                        return  # stopped (the run ended) or replaced
                    self._wake.wait(1.0)
                if self._drawer is not threading.current_thread():
                    return
                wait = self.throttle.remaining(self._interval())
                if wait > 0:
                    self._wake.wait(min(wait, 0.5))  # a new point or the time passing: look again
                    continue
                self.throttle.ready(self._interval())
                self._pending = False
            try:
                self.redraw()
            except Exception:  # a failed frame must not end the live plot; the next point tries again
                continue

    def _stop_drawer(self) -> None:
        with self._wake:
            drawer, self._drawer = self._drawer, None
            self._pending = False
            self._wake.notify_all()
        if drawer is not None and drawer is not threading.current_thread():
            drawer.join(timeout=30)

    def _redraw_if_any(self) -> None:
        if self.history:
            self.redraw()

    def title(self) -> str:
        """``Loss · step 12/40 · 830 tok/s · completed``: what the figure's title says now."""
        parts = ["Loss"]
        train = [h for h in self.history if h.get("kind") == "train"]
        total = self.info.get("total_steps")
        if train:
            last = train[-1]
            total = total or last.get("total_steps")
            parts.append(f"step {last.get('step')}" + (f"/{total}" if total else ""))
            tps = last.get("tokens_per_second")
            if tps:
                parts.append(f"{tps:,.0f} tok/s")
        if self.summary is not None:
            parts.append(str(self.summary.get("status", "")))
        return " · ".join(p for p in parts if p)

    def figure(self) -> Any:
        """A new matplotlib ``Figure`` of the history as it is now (for ``savefig`` or a static output)."""
        return self._figure()[0]

    def _figure(self) -> tuple[Any, Any]:
        # copy under the lock, draw without it: the training thread never waits for a render
        with self._lock:
            history = list(self.history)
            markers = list(self.markers)
            previous = list(self.previous)
            title = self.title()
        train = [h for h in history if h.get("kind") == "train"]
        step = train[-1].get("step") if train else None
        if self._draw is not None:
            return self._draw(history, title), step
        fig = training_figure(
            history, title=title, smoothing=self.smoothing, yscale=self.yscale, markers=markers, previous=previous
        )
        return fig, step

    def png(self) -> Png:
        """HiDPI PNG bytes of :meth:`figure` (twice the CSS size; ``.css_width`` is the natural width)."""
        return png(self.figure(), tight=self._draw is not None)

    def redraw(self) -> None:
        """Draw the latest history now and put the PNG into :attr:`image`."""
        with self._render_lock:
            t0 = self.clock()
            fig, step = self._figure()
            data = png(fig, tight=self._draw is not None)
            self._draw_cost = max(0.0, self.clock() - t0)
            self.last_png = data
            self.drawn_step = step
            set_image(self.image, data, self.placeholder)
            if self._width:
                self.image.width = self._width
            self.redraws += 1

    @property
    def has_monitor(self) -> bool:
        return any(h.get("kind") == "monitor" for h in self.history)

    def monitor_figure(self) -> Any:
        """A new ``Figure`` of the monitor's task scores (``None`` when no monitor has reported)."""
        with self._lock:
            history = list(self.history)
            markers = list(self.markers)
            summary = dict(self.summary) if self.summary is not None else None
        if not any(h.get("kind") == "monitor" for h in history):
            return None
        return monitor_figure(history, summary=summary, markers=markers)

    def samples_html(self) -> str:
        """The live-samples table (HTML; ``""`` without samples)."""
        with self._lock:
            return samples_html(list(self.history))

    def redraw_monitor(self) -> None:
        """Draw the task-score figure and the live samples now (hidden while no monitor has reported)."""
        fig = self.monitor_figure()
        if fig is None:
            self.monitor_image.layout.display = "none"
            self.samples.layout.display = "none"
            self.last_monitor_png = None
            return
        data = png(fig)
        self.last_monitor_png = data
        set_image(self.monitor_image, data)
        table = self.samples_html()
        self.samples.value = table
        self.samples.layout.display = None if table else "none"

    def snapshot(self) -> Any:
        """The current figure as an ``IPython.display.Image`` at its natural size: make it a cell's last line so
        the final curve is a normal output, saved with the notebook."""
        from IPython.display import Image

        data = self.png()
        return Image(data=bytes(data), format="png", width=data.css_width)

    def _ipython_display_(self) -> None:
        # Delegating keeps LivePlot a plain observer, not a widget; the display id lets the run's end replace the
        # view with the final figure.
        self.static.show_view(self.view)

    def __repr__(self) -> str:
        return f"LivePlot(points={len(self.history)}, redraws={self.redraws})"
