"""TrainPanel: Train / Stop / Resume buttons, a status line, a progress bar and a :class:`LivePlot`.

Train calls :func:`nbft.train.finetune` with ``background=True``, the same function a script calls. The run goes to
a worker thread because a notebook processes button clicks only while no cell is busy: a blocking call could never
be stopped. Stop calls ``Run.stop()`` (the current step finishes and a checkpoint is written); Resume calls
:func:`nbft.train.resume` on the run directory, which continues the same loss curve.

Example::

    from nbft.widgets import TrainPanel
    panel = TrainPanel(model, tok, data["train"], val=data["validation"],
                       config=TrainConfig(max_steps=200, eval_every=20), run_dir="runs/sentiment-1")
    panel                      # click Train (or call panel.train()); later: panel.wait(); panel.plot.snapshot()
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbft.widgets.liveplot import LivePlot, Throttle

__all__ = ["TrainPanel"]

logger = logging.getLogger(__name__)

_COLOURS = {"completed": "#1a7f37", "stopped": "#9a6700", "failed": "#cf222e"}


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}"


def _new_run_dir() -> Path:
    base = Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    path, k = base, 1
    while path.exists():
        path, k = base.with_name(f"{base.name}-{k}"), k + 1
    return path


class _ProgressView:
    """Observer that mirrors training events into the panel's progress bar and status line (worker thread)."""

    def __init__(self, panel: TrainPanel, min_interval: float = 0.25) -> None:
        self.panel = panel
        self.throttle = Throttle(min_interval)  # tiny models do many steps a second; the browser needs far fewer
        self.val_loss: float | None = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        bar = self.panel.progress
        bar.max = max(1, int(info.get("total_steps", 1)))
        bar.value = int(info.get("start_step", 0))
        self.val_loss = None
        start = f" from step {info['start_step']}" if info.get("start_step") else ""
        self.panel._set_status("running", f"{info.get('device', '')}, {info.get('precision', '')}{start}")

    def on_step(self, state: Any) -> None:
        if state.step >= state.total_steps or self.throttle.ready():
            self.panel.progress.value = int(state.step)
            val = f" · val {self.val_loss:.4f}" if self.val_loss is not None else ""
            self.panel._set_status(
                "running",
                f"step {state.step}/{state.total_steps} · loss {state.loss:.4f}{val} · "
                f"{state.tokens_per_second:,.0f} tok/s · ETA {_duration(state.eta_s)}",
            )

    def on_eval(self, state: Any, metrics: dict[str, float]) -> None:
        self.val_loss = metrics.get("val_loss")

    def on_save(self, path: Any) -> None:
        self.panel.last_saved = Path(path)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        status = str(summary.get("status", "?"))
        steps = summary.get("steps")
        if steps is not None:
            self.panel.progress.value = int(steps)
        detail = f"{steps}/{summary.get('total_steps')} steps"
        if summary.get("train_loss") is not None:
            detail += f" · loss {summary['train_loss']:.4f}"
        if summary.get("val_loss") is not None:
            detail += f" · val {summary['val_loss']:.4f}"
        if status == "stopped":
            detail += " · checkpoint kept: Resume continues it"
        if summary.get("error"):
            detail = str(summary["error"])
        self.panel._set_status(status, detail)
        self.panel._set_buttons(running=False)


class TrainPanel(widgets.VBox):
    """Buttons to start, stop and resume a full fine-tune in the background, with live progress and loss plot.

    Args:
        model, tokenizer, train, val, config: passed to :func:`nbft.train.finetune` unchanged (``config`` is a
            :class:`~nbft.config.TrainConfig`). The model is trained in place: keep a copy if you want to compare it
            with the base model later.
        run_dir: where checkpoints and the final model go; default ``runs/run-<time>``, chosen when Train is
            clicked. Resume continues the run in this folder.
        observers: more observers for every run (e.g. ``ProgressObserver()``).
        plot: the :class:`LivePlot` to use (default: a new one, redrawn at most once a second).

    Attributes:
        run: the current :class:`nbft.train.Run` (``None`` before the first click).
        plot: the :class:`LivePlot`.

    Example::

        panel = TrainPanel(model, tok, data["train"], val=data["validation"], config=TrainConfig(max_steps=100))
        panel                         # Train / Stop / Resume
        panel.train(); panel.stop(); panel.wait().status   # the same, from code: 'stopped'
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        train: Any,
        val: Any = None,
        config: Any = None,
        run_dir: str | Path | None = None,
        *,
        observers: Sequence[Any] = (),
        plot: LivePlot | None = None,
    ) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self.train_data = train
        self.val_data = val
        self.config = config
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        self._fresh_dirs = run_dir is None  # no folder given: every Train click gets a new runs/run-<time>
        self.observers = list(observers)
        self.run: Any = None
        self.last_saved: Path | None = None
        self.plot = plot if plot is not None else LivePlot()

        self.train_button = widgets.Button(description="Train", icon="play", button_style="success")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.resume_button = widgets.Button(description="Resume", icon="repeat", disabled=True)
        for button, tip in (
            (self.train_button, "Start a full fine-tune in the background"),
            (self.stop_button, "Finish the current step, write a checkpoint, stop"),
            (self.resume_button, "Continue the stopped run from its checkpoint"),
        ):
            button.tooltip = tip
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="240px"))
        self.status_label = widgets.HTML(self._status_html("ready", "click Train to start"))
        self.train_button.on_click(lambda _: self._safely(self.train))
        self.stop_button.on_click(lambda _: self._safely(self.stop))
        self.resume_button.on_click(lambda _: self._safely(self.resume))
        buttons = widgets.HBox([self.train_button, self.stop_button, self.resume_button])
        super().__init__([buttons, widgets.HBox([self.progress, self.status_label]), self.plot.image])
        self.add_class("nbft-train-panel")

    # ------------------------------------------------------------------------------------------- actions
    @property
    def model(self) -> Any:
        """The model being trained: the resumed run's model after Resume (it is loaded from the checkpoint)."""
        return self.run.model if self.run is not None else self._model

    @property
    def status(self) -> str:
        """``"ready"`` before the first run, then the run's status (``running``, ``stopped``, ``completed``...)."""
        return self.run.status if self.run is not None else "ready"

    @property
    def running(self) -> bool:
        return self.run is not None and not self.run.done

    def train(self) -> Any:
        """Start a new run in the background (what the Train button does) and return its ``Run``."""
        from nbft.train import finetune

        if self.running:
            raise RuntimeError("a run is already in progress: Stop it first")
        if self._fresh_dirs:
            self.run_dir = _new_run_dir()
        self._set_buttons(running=True)
        self._set_status("starting", "tokenizing the data")
        try:
            self.run = finetune(
                self.model,
                self.tokenizer,
                self.train_data,
                val=self.val_data,
                config=self.config,
                observers=self._observers(),
                run_dir=self.run_dir,
                background=True,
            )
        except BaseException:
            self._set_buttons(running=False)
            raise
        self._settle()
        return self.run

    def stop(self) -> None:
        """Ask the run to stop after the current step; a checkpoint is written (what Stop does)."""
        if not self.running:
            return
        self.run.stop()
        self.stop_button.disabled = True
        self._set_status("stopping", "finishing the current step and writing a checkpoint")

    def resume(self) -> Any:
        """Continue the stopped run from its newest checkpoint with :func:`nbft.train.resume` (what Resume does)."""
        from nbft.train import resume

        if self.running:
            raise RuntimeError("the run is still in progress; Resume continues a stopped run")
        if self.run_dir is None:
            raise RuntimeError("nothing to resume: no run has been started in this panel")
        self._set_buttons(running=True)
        self._set_status("starting", f"loading the checkpoint from {self.run_dir}")
        try:
            self.run = resume(self.run_dir, observers=self._observers(), background=True)
        except BaseException:
            self._set_buttons(running=False)
            raise
        self._settle()
        return self.run

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the current run ends and return it (re-raises the run's error, like ``Run.wait``)."""
        if self.run is None:
            raise RuntimeError("no run yet: click Train or call panel.train() first")
        return self.run.wait(timeout)

    # ------------------------------------------------------------------------------------------- helpers
    def _observers(self) -> list[Any]:
        return [self.plot, _ProgressView(self), *self.observers]

    def _settle(self) -> None:
        # A run can end before finetune() returns (e.g. it fails at once): its end event saw no self.run yet.
        if self.run.done:
            self._set_buttons(running=False)

    def _safely(self, action: Any) -> None:
        # An exception in a click handler only reaches the browser's log console; show it in the panel instead.
        try:
            action()
        except Exception as exc:
            logger.warning("TrainPanel: %s", exc)
            self._set_status("error", f"{type(exc).__name__}: {exc}")

    def _set_buttons(self, running: bool) -> None:
        self.train_button.disabled = running
        self.stop_button.disabled = not running
        resumable = self.run is not None and self.run.status in ("stopped", "failed") and bool(self.run.checkpoints)
        self.resume_button.disabled = running or not resumable

    @staticmethod
    def _status_html(status: str, detail: str) -> str:
        colour = _COLOURS.get(status, "#57606a")
        return (
            f'<span class="nbft-status" data-status="{html.escape(status)}" style="color:{colour}">'
            f"<b>{html.escape(status)}</b></span> <span>{html.escape(detail)}</span>"
        )

    def _set_status(self, status: str, detail: str = "") -> None:
        self.status_label.value = self._status_html(status, detail)
