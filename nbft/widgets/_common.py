"""Pieces every panel shares: images at natural size, placeholders, a log area, and the static result output.

**Static results.** Widget views need the kernel (or saved widget state) to render; a reopened notebook, GitHub and
nbviewer show "Error displaying widget: model not found" instead. So when a panel is displayed it also displays
an empty companion output with a ``display_id``; when its work ends, the panel fills that output with plain HTML
(the final figure as an embedded PNG, the tables) through ``update_display``. That output is an ordinary part of
the notebook file. Front-ends route ``update_display_data`` by display id, so this works from a worker thread
(JupyterLab, Colab, VS Code, nbclient). While the live panel is on screen it hides the static copy with a CSS rule
that only exists inside the rendered widget, so nothing is shown twice; without a kernel the rule is gone and the
static copy shows.
"""

from __future__ import annotations

import base64
import contextlib
import html
import threading
import uuid
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from nbft.widgets._figures import Png

__all__ = [
    "LogArea",
    "StaticResult",
    "image_html",
    "placeholder_html",
    "set_image",
    "show_figure",
    "status_html",
    "tidy",
]

COLOURS = {
    "completed": "#1a7f37",
    "done": "#1a7f37",
    "built": "#1a7f37",
    "stopped": "#9a6700",
    "interrupted": "#9a6700",
    "failed": "#cf222e",
    "error": "#cf222e",
}


PANEL_CSS = """<style>
.nbft-panel :focus-visible, .nbft-panel :focus {
  outline: 3px solid #0b5cad !important; outline-offset: 2px; box-shadow: 0 0 0 5px #ffffff !important;
}
.nbft-panel .widget-hbox, .nbft-panel .jupyter-widget-hbox { flex-wrap: wrap; row-gap: 4px; }
.nbft-panel .widget-hslider, .nbft-panel .jupyter-widget-hslider { min-width: 240px; }
</style>"""
"""Inside every panel's view: a clearly visible focus ring (3 px dark blue with a white halo, on any background;
the default is a 1 px light-blue line on blue), rows that wrap in a narrow window, sliders that keep a track."""

SLIDER_MIN_WIDTH = "240px"
PLOT_MIN_WIDTH = "480px"
"""Below this a plot's labels are unreadable: a narrower window scrolls the plot sideways instead."""

_INTERACTIVE = (
    widgets.Button,
    widgets.ToggleButtons,
    widgets.Dropdown,
    widgets.SelectMultiple,
    widgets.Select,
    widgets.Text,
    widgets.IntText,
    widgets.FloatText,
    widgets.Checkbox,
    widgets.IntSlider,
    widgets.FloatSlider,
    widgets.Textarea,
)


def _v7() -> bool:
    return widgets.__version__.startswith("7.")


def set_tooltip(widget: widgets.Widget, text: str) -> None:
    """The hover text (and accessible description) of a control, in ipywidgets 7 and 8.

    ipywidgets 8 calls it ``tooltip`` on every control; 7 calls it ``description_tooltip`` (``tooltip`` on buttons).
    """
    if _v7() and widget.has_trait("description_tooltip"):
        widget.description_tooltip = text
    elif widget.has_trait("tooltip"):
        widget.tooltip = text


def tooltip_of(widget: widgets.Widget) -> str | None:
    """The hover text of a control (``None`` when it has none: some front-ends then show "null")."""
    if _v7() and widget.has_trait("description_tooltip"):
        return widget.description_tooltip
    return getattr(widget, "tooltip", None) if widget.has_trait("tooltip") else None


def walk(root: widgets.Widget) -> list[widgets.Widget]:
    """Every widget inside ``root`` (``root`` too), depth first."""
    out, stack, seen = [], [root], set()
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        out.append(w)
        stack.extend(reversed(list(getattr(w, "children", ()) or ())))
    return out


def tidy(root: widgets.Widget) -> None:
    """Make a panel usable narrow and with a keyboard or screen reader: rows wrap, sliders keep a minimum width, and
    every control has a tooltip (its description when no better one was set), never "null".

    Call it at the end of a panel's constructor and after replacing children.
    """
    for w in walk(root):
        if isinstance(w, widgets.HBox):
            w.layout.flex_flow = "row wrap"
        if isinstance(w, widgets.IntSlider | widgets.FloatSlider) and not w.layout.min_width:
            w.layout.min_width = SLIDER_MIN_WIDTH
        if isinstance(w, _INTERACTIVE) and not tooltip_of(w):
            text = (getattr(w, "description", "") or getattr(w, "placeholder", "") or "").strip()
            if text:
                set_tooltip(w, text)


def status_html(status: str, detail: str = "") -> str:
    """``<span class="nbft-status" data-status=...>`` + detail: the same markup in every panel (tests read it)."""
    colour = COLOURS.get(status, "#57606a")
    return (
        f'<span class="nbft-status" data-status="{html.escape(status)}" style="color:{colour}">'
        f"<b>{html.escape(status)}</b></span> <span class='nbft-detail'>{html.escape(detail)}</span>"
    )


def placeholder_html(text: str) -> str:
    style = "color:#57606a;font-style:italic;padding:6px 0"
    return f'<div class="nbft-placeholder" style="{style}">{html.escape(text)}</div>'


def natural_image() -> widgets.Image:
    """An ``Image`` widget that is hidden until it has a picture and then shows it at its natural size."""
    layout = widgets.Layout(
        display="none", align_self="flex-start", max_width="100%", min_width=PLOT_MIN_WIDTH, height="auto"
    )  # shrinks with a narrow window, but not below a readable minimum (the panel scrolls sideways instead)
    return widgets.Image(format="png", layout=layout)


def set_image(image: widgets.Image, data: bytes, placeholder: widgets.HTML | None = None) -> None:
    """Show ``data`` (a :class:`Png`) at its natural CSS width: sharp on HiDPI screens, never stretched."""
    if isinstance(data, Png):
        image.width = str(data.css_width)  # the <img width> attribute; max-width: 100% still lets it shrink
    image.value = data
    image.layout.display = None
    if placeholder is not None:
        placeholder.layout.display = "none"


def show_figure(fig: Any) -> Any:
    """A matplotlib ``Figure`` as a sharp static output: a HiDPI PNG (twice the pixels) shown at its natural width,
    the same path the panels use. Make it a cell's last line; it stays in the saved notebook.

    Example::

        from nbft import report
        from nbft.widgets import show_figure
        show_figure(report.delta_heatmap(table))
    """
    from IPython.display import Image

    from nbft.widgets._figures import png

    data = png(fig)
    return Image(data=bytes(data), format="png", width=data.css_width)


def image_html(data: bytes, alt: str) -> str:
    """An ``<img>`` with the PNG embedded, at its natural width (for static outputs and exports)."""
    width = f' width="{data.css_width}"' if isinstance(data, Png) else ""
    encoded = base64.b64encode(bytes(data)).decode("ascii")
    return (
        f'<img class="nbft-figure" alt="{html.escape(alt)}"{width} style="max-width:100%;height:auto" '
        f'src="data:image/png;base64,{encoded}"/>'
    )


class LogArea:
    """Distinct warnings and errors of a panel's calls, each once (the sink of :func:`nbft._quiet.quiet`).

    Hidden while empty. Thread-safe: library warnings arrive from worker threads.
    """

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.widget = widgets.HTML("", layout=widgets.Layout(display="none"))
        self.widget.add_class("nbft-log")

    def add(self, level: str, text: str) -> None:
        key = " ".join(text.split())
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            self.lines.append((level, text))
            value = self.html()
        self.widget.value = value
        self.widget.layout.display = None

    def clear(self) -> None:
        with self._lock:
            self.lines.clear()
            self._seen.clear()
        self.widget.value = ""
        self.widget.layout.display = "none"

    def html(self) -> str:
        if not self.lines:
            return ""
        items = "".join(
            f'<li class="nbft-log-{level}" style="color:{"#cf222e" if level == "error" else "#9a6700"}">'
            f"{html.escape(text)}</li>"
            for level, text in self.lines
        )
        n = len(self.lines)
        return (
            f'<details class="nbft-log-area" style="font-size:12px"><summary>{n} message{"s" if n != 1 else ""} '
            f'from the libraries (each shown once)</summary><ul style="margin:2px 0 2px 18px;padding:0">{items}</ul>'
            "</details>"
        )


class StaticResult:
    """The companion output that keeps a panel's result in the saved notebook (see the module docstring).

    It also owns the display of the panel's live view (``view_id``): when the panel's work is over,
    :meth:`finish` replaces that view with the static copy, so a reopened notebook shows the result where the
    panel was instead of "Error displaying widget: model not found".
    """

    def __init__(self) -> None:
        self.display_id = f"nbft-{uuid.uuid4().hex}"
        self.view_id = f"{self.display_id}-view"
        self.css_class = f"nbft-static-{self.display_id[5:17]}"
        self.displayed = False
        self.view_displayed = False
        self.finished = False
        self.html: str = ""
        self.text: str = ""
        self.png: bytes | None = None
        # Lives inside the widget view: while the panel renders, its static copy in the same cell is hidden.
        self.style_widget = widgets.HTML(
            f"<style>.{self.css_class} {{ display: none; }}</style>{PANEL_CSS}", layout=widgets.Layout(height="0px")
        )

    def bundle(self, *, hidden_by_view: bool = True, note: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
        """``(data, metadata)`` of the static copy: HTML (figures embedded), the main figure as ``image/png`` too
        (headless runs and converters that keep only images), and plain text."""
        classes = f"nbft-static {self.css_class}" if hidden_by_view else "nbft-static nbft-static-final"
        note_html = f"<div class='nbft-note' style='color:#57606a;font-size:12px'>{html.escape(note)}</div>"
        body = f'<div class="{classes}">{self.html}{note_html if note else ""}</div>' if self.html else ""
        data: dict[str, Any] = {"text/html": body, "text/plain": self.text}
        metadata: dict[str, Any] = {}
        if self.png is not None and self.html:
            data["image/png"] = base64.b64encode(bytes(self.png)).decode("ascii")
            if isinstance(self.png, Png):
                metadata["image/png"] = {"width": self.png.css_width}
        return data, metadata

    def show(self) -> None:
        """Display the (so far empty) companion output right after the panel."""
        from IPython.display import display

        data, metadata = self.bundle()
        display(data, raw=True, metadata=metadata, display_id=self.display_id)
        self.displayed = True

    def show_view(self, widget: widgets.Widget) -> None:
        """Display the panel's live view under :attr:`view_id` (ipywidgets 7 and 8 alike)."""
        from IPython.display import display

        display(widget_bundle(widget), raw=True, display_id=self.view_id)
        self.view_displayed = True
        self.finished = False

    def update(self, body_html: str, text: str, png: bytes | None = None) -> None:
        """Replace the static copy (may be called from a worker thread)."""
        self.html, self.text, self.png = body_html, text, png
        if not self.displayed or self.finished:
            return
        data, metadata = self.bundle()
        self._publish(data, metadata, self.display_id)

    def finish(self, note: str = "") -> None:
        """The work is over: the live view's output becomes the static copy and the companion empties.

        The panel object keeps working: display it again (run its cell) for the controls.
        """
        if not self.view_displayed or not self.html:
            return
        data, metadata = self.bundle(hidden_by_view=False, note=note)
        self._publish(data, metadata, self.view_id)
        if self.displayed:
            self._publish({"text/html": "", "text/plain": ""}, {}, self.display_id)
        self.finished = True

    @staticmethod
    def _publish(data: dict[str, Any], metadata: dict[str, Any], display_id: str) -> None:
        from IPython.display import update_display

        # No kernel any more (e.g. shutting down): the live panel still shows the result.
        with contextlib.suppress(Exception):
            update_display(data, raw=True, metadata=metadata, display_id=display_id)


def widget_bundle(widget: widgets.Widget) -> dict[str, Any]:
    """The mime bundle that shows a widget's view (what ``display(widget)`` sends, in ipywidgets 7 and 8)."""
    plain = repr(widget)
    return {
        "text/plain": plain[:110] + ("…" if len(plain) > 110 else ""),
        "application/vnd.jupyter.widget-view+json": {
            "version_major": 2,
            "version_minor": 0,
            "model_id": widget.model_id,
        },
    }


def close_tree(widget: Any) -> None:
    """Close a widget and every widget inside it.

    ipywidgets keeps every open widget in a registry, and a button keeps its click handler, which keeps the panel,
    which keeps the model: without closing them all, ``del panel`` frees no memory.
    """
    seen: set[int] = set()
    stack = [widget]
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen.add(id(w))
        stack.extend(getattr(w, "children", ()) or ())
        if w is not widget:
            w.close()


def display_with_static(
    widget: widgets.DOMWidget, static: StaticResult, parent_display: Callable[..., Any] | None = None
) -> None:
    """``_ipython_display_`` of a panel: the widget view (under the static copy's ``view_id``, so the end of the
    work can replace it), then its static companion output."""
    static.show_view(widget)
    handle = getattr(widget, "_handle_displayed", None)
    if handle is not None:  # ipywidgets 7 calls a widget's on_displayed callbacks when it is displayed
        handle()
    static.show()


def check_models(models: Any, *, first: str = "", least: str = "one model") -> None:
    """A panel's ``models``: a dict {column name: model} or a function returning one (checked when called);
    ``first`` says what the first entry means (e.g. " (first = the base)")."""
    from collections.abc import Mapping

    if not callable(models) and not isinstance(models, Mapping):
        raise TypeError(
            f"models must be a dict {{column name: model}}{first}, or a function returning one, e.g. "
            f"{{'base': (model, tok), 'tuned': run}}; got {type(models).__name__}"
        )
    if isinstance(models, Mapping) and not models:
        raise ValueError(f"models is empty: give at least {least}, e.g. {{'base': (model, tok)}}")
