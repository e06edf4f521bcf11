"""LivePlot: a training observer that keeps the metric history as plain data and draws it as a PNG image widget.

Why a PNG in a core ``widgets.Image`` rather than an interactive plot: it needs no extra JavaScript, so it works the
same in JupyterLab, Colab, VS Code and Binder. The history is plain data and the picture is a function of it
(:func:`nbft.report.loss_curve`), so the same figure can be drawn again at any time, e.g. for the saved notebook.

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
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import ipywidgets as widgets

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

    def ready(self) -> bool:
        now = self.clock()
        if self._last is None or now - self._last >= self.min_interval:
            self._last = now
            return True
        return False

    def reset(self) -> None:
        self._last = None


def _loss_figure(history: list[dict[str, Any]], title: str) -> Any:
    from nbft.report import loss_curve

    return loss_curve(history, title=title)


def _row(state: Any) -> dict[str, Any]:
    if hasattr(state, "to_dict"):
        return dict(state.to_dict())
    if isinstance(state, Mapping):
        return dict(state)
    return {k: v for k, v in vars(state).items() if not k.startswith("_")}


class LivePlot:
    """Observer that plots train and validation loss live, redrawing at most once per ``min_interval`` seconds.

    It follows the engine's observer protocol (``on_train_begin``, ``on_step``, ``on_eval``, ``on_save``,
    ``on_train_end``). It runs in the training thread, so it only sets the image widget's value: it never prints
    or displays. The last points are always drawn at ``on_train_end``.

    Args:
        min_interval: the shortest time between two redraws, in seconds (drawing costs ~50 ms on a CPU).
        clock: the time source for the throttle (tests pass a fake clock).
        draw: ``draw(history, title) -> matplotlib Figure``; default :func:`nbft.report.loss_curve`.
        width: CSS width of the image (default: the PNG's own size, 600 px).

    Attributes:
        history: plain dicts like ``Run.history`` (``kind`` ``"train"`` or ``"eval"``), e.g.
            ``pandas.DataFrame(plot.history)``.
        image: the ``ipywidgets.Image`` that shows the PNG.
        redraws: how many times the PNG was drawn.

    Example::

        plot = LivePlot(min_interval=2.0)
        nbft.finetune(model, tok, data["train"], observers=[plot], background=True)
        plot                                   # display it; plot.snapshot() later for a static copy
    """

    def __init__(
        self,
        *,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        draw: DrawFn | None = None,
        width: str | None = None,
    ) -> None:
        self.history: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.summary: dict[str, Any] | None = None
        self.redraws = 0
        self.throttle = Throttle(min_interval, clock)
        self.image = widgets.Image(format="png", layout=widgets.Layout(width=width) if width else widgets.Layout())
        self._draw = draw or _loss_figure
        # The worker draws; a notebook cell may call snapshot() at the same moment: one drawing at a time.
        self._lock = threading.Lock()

    # -------------------------------------------------------------------------------------------- events
    def on_train_begin(self, info: dict[str, Any]) -> None:
        start = int(info.get("start_step", 0) or 0)
        # A resumed run continues the curve: keep what happened up to its checkpoint, drop what came after it.
        self.history = [h for h in self.history if start and h.get("step", 0) <= start]
        self.info = dict(info)
        self.summary = None
        self.throttle.reset()

    def on_step(self, state: Any) -> None:
        self.history.append({"kind": "train", **_row(state)})
        self._maybe_redraw()

    def on_eval(self, state: Any, metrics: Mapping[str, float]) -> None:
        row = _row(state)
        self.history.append({"kind": "eval", "step": row.get("step"), "epoch": row.get("epoch"), **metrics})
        self._maybe_redraw()

    def on_train_end(self, summary: Mapping[str, Any]) -> None:
        self.summary = dict(summary)
        self.redraw()  # always: the last points may have fallen inside the throttle window

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add history rows (e.g. a finished ``run.history``) and redraw now."""
        self.history.extend(dict(r) for r in rows)
        self.redraw()

    # -------------------------------------------------------------------------------------------- drawing
    def _maybe_redraw(self) -> None:
        if self.throttle.ready():
            self.redraw()

    def title(self) -> str:
        """``Loss · step 12/40 · 830 tok/s · completed``: what the figure's title says now."""
        parts = ["Loss"]
        train = [h for h in self.history if h.get("kind") == "train"]
        total = self.info.get("total_steps")
        if train:
            last = train[-1]
            parts.append(f"step {last.get('step')}" + (f"/{total}" if total else ""))
            tps = last.get("tokens_per_second")
            if tps:
                parts.append(f"{tps:,.0f} tok/s")
        if self.summary is not None:
            parts.append(str(self.summary.get("status", "")))
        return " · ".join(p for p in parts if p)

    def figure(self) -> Any:
        """A new matplotlib ``Figure`` of the history as it is now (for ``savefig`` or a static output)."""
        return self._draw(list(self.history), self.title())

    def png(self) -> bytes:
        """PNG bytes of :meth:`figure`."""
        from nbft.report import figure_to_png

        with self._lock:
            return figure_to_png(self.figure())

    def redraw(self) -> None:
        """Draw now and put the PNG into :attr:`image` (the only thing the training thread changes)."""
        data = self.png()
        self.image.value = data
        self.redraws += 1

    def snapshot(self) -> Any:
        """The current figure as an ``IPython.display.Image``: make it a cell's last line so the final curve is
        a normal output, saved with the notebook (widget state often is not)."""
        from IPython.display import Image

        return Image(data=self.png(), format="png")

    def _ipython_display_(self) -> None:
        # ipywidgets 7 and 8 both honour display(widget); delegating keeps LivePlot a plain observer, not a widget.
        from IPython.display import display

        display(self.image)

    def __repr__(self) -> str:
        return f"LivePlot(points={len(self.history)}, redraws={self.redraws})"
