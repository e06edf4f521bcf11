"""TrainPanel: Train / Stop / Resume, a status line, a progress bar, a :class:`LivePlot` and runs on disk.

Train calls :func:`nbft.train.finetune` with ``background=True``, the same function a script calls. The run goes to
a worker thread because a notebook processes button clicks only while no cell is busy: a blocking call could never
be stopped. Stop calls ``Run.stop()`` (the current step finishes and a checkpoint is written); Resume calls
:func:`nbft.train.resume` on the run directory, which continues the same loss curve.

After a kernel restart (or a Colab disconnect) the run is still on disk: :meth:`TrainPanel.from_run_dir` (or the
panel's *Resume from disk* control) restores its whole curve from ``history.jsonl`` and resumes it from its newest
checkpoint. With a :class:`~nbft.evaluate.monitor.ForgettingMonitor` among the observers, the panel also shows the
score per task against the step (base values dashed, the best checkpoint starred, the monitor's share of the time
in the title) and the live samples beside the base model's answers. :meth:`TrainPanel.for_trainer` drives a
``transformers.Trainer`` (or TRL) run the same way.

Library progress bars and repeated warnings are silenced while the panel's calls run (:mod:`nbft._quiet`); each
distinct warning appears once in the panel's log area. When a run ends, the final figure and a summary also go into
an ordinary output below the panel, so the saved notebook shows them without a kernel.

Example::

    from nbft.widgets import TrainPanel
    panel = TrainPanel(model, tok, data["train"], val=data["validation"],
                       config=TrainConfig(max_steps=200, eval_every=20, save_every=50), run_dir="runs/sentiment-1")
    panel                      # click Train (or call panel.train()); later: panel.wait()
    TrainPanel.from_run_dir("runs/sentiment-1")    # in a new kernel: the curve so far, and Resume
"""

from __future__ import annotations

import html
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbft.run_dirs import _clock
from nbft.widgets._common import (
    LogArea,
    StaticResult,
    close_tree,
    display_with_static,
    image_html,
    set_tooltip,
    status_html,
    tidy,
)
from nbft.widgets.liveplot import LivePlot, Throttle

__all__ = ["TrainPanel"]

logger = logging.getLogger(__name__)

PHASES = {
    "setup": "setting up",
    "monitor": "scoring the tasks (monitor)",
    "eval": "evaluating on the validation set",
    "final_eval": "final evaluation",
    "checkpoint": "writing a checkpoint",
    "saving": "saving the model",
}
"""What the status line says during each phase the training loop reports with ``on_phase``."""


def _duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    if seconds < 1:
        return "<0:01"
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds // 60 % 60:02d}"


def _checkpoint_name(info: Any) -> str:
    """``the checkpoint at step 90 (checkpoints/step-90)``: which checkpoint a resume continues from."""
    if info.checkpoint is None:
        return "its newest checkpoint"
    return f"the checkpoint at step {info.checkpoint_step} (checkpoints/{Path(info.checkpoint).name})"


def _new_run_dir(folder: Path) -> Path:
    base = folder / time.strftime("run-%Y%m%d-%H%M%S")
    path, k = base, 1
    while path.exists():
        path, k = base.with_name(f"{base.name}-{k}"), k + 1
    return path


def _data_note(train: Any, chat_template: bool | None, overflow: str | None) -> str:
    """`` · data: chat template, max_length=68, overflow=truncate (the dataset's settings)`` for the ready line."""
    from nbft.dataset_settings import settings_of

    settings = settings_of(train) if train is not None else None
    if settings is None:
        return ""
    given = (("chat_template", chat_template), ("overflow", overflow))
    told = [f"{k}={v!r} as given" for k, v in given if v is not None]
    return f" · data: {settings.describe()} (the dataset's settings{'; ' + ', '.join(told) if told else ''})"


class _ProgressView:
    """Observer that mirrors training events into the panel's progress bar and status line (worker thread)."""

    def __init__(self, panel: TrainPanel, min_interval: float = 0.25, static_interval: float = 10.0) -> None:
        self.panel = panel
        self.throttle = Throttle(min_interval)  # tiny models do many steps a second; the browser needs far fewer
        self.static_throttle = Throttle(static_interval)  # the saved copy only needs to be roughly current
        self.val_loss: float | None = None
        self.total = 1
        self.elapsed_s: float | None = None  # the run's own training clock (what nbft.runs() shows)
        self.checkpoint_step: int | None = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        if self.panel._scope is not None:
            self.panel._scope.claim_thread()  # library warnings from the worker go to this panel's log
        bar = self.panel.progress
        self.total = max(1, int(info.get("total_steps", 1) or 1))
        bar.max = self.total
        bar.value = int(info.get("start_step", 0) or 0)
        self.val_loss = None
        self.elapsed_s = None
        self.checkpoint_step = int(info["start_step"]) if info.get("start_step") else None
        self.static_throttle.reset()
        start = f" · from step {info['start_step']}" if info.get("start_step") else ""
        where = ", ".join(str(info[k]) for k in ("device", "precision") if info.get(k))
        self.panel._set_status("running", f"{where}{start}")

    def on_phase(self, event: dict[str, Any]) -> None:
        phase = str(event.get("phase", ""))
        if phase in PHASES:
            step = event.get("step")
            at = f" · step {step}/{self.total}" if step is not None else ""
            self.panel._set_status("running", f"{PHASES[phase]}{at}")

    def on_step(self, state: Any) -> None:
        last = state.step >= state.total_steps
        if getattr(state, "elapsed_s", None) is not None:
            self.elapsed_s = float(state.elapsed_s)
        if self.static_throttle.ready():
            self.panel._show_progress_static(state, self.checkpoint_step)
        if last or self.throttle.ready():
            self.panel.progress.value = int(state.step)
            val = f" · val {self.val_loss:.4f}" if self.val_loss is not None else ""
            # The last step is followed by the final evaluation and the save: say so instead of "ETA 0:00".
            tail = "finishing: final evaluation and saving" if last else f"ETA {_duration(state.eta_s)}"
            self.panel._set_status(
                "running",
                f"step {state.step}/{state.total_steps} · loss {state.loss:.4f}{val} · "
                f"{state.tokens_per_second:,.0f} tok/s · {tail}",
            )

    def on_eval(self, state: Any, metrics: dict[str, float]) -> None:
        self.val_loss = metrics.get("val_loss")

    def on_save(self, path: Any) -> None:
        self.panel.last_saved = Path(path)
        step = Path(path).name.rsplit("-", 1)[-1]
        if Path(path).parent.name == "checkpoints" and step.isdigit():
            self.checkpoint_step = int(step)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        panel = self.panel
        status = str(summary.get("status", "?"))
        steps = summary.get("steps")
        if steps is not None:
            panel.progress.value = int(steps)
        detail = f"{steps}/{summary.get('total_steps')} steps"
        if summary.get("train_loss") is not None:
            detail += f" · loss {summary['train_loss']:.4f}"
        if summary.get("val_loss") is not None:
            detail += f" · val {summary['val_loss']:.4f}"
        if self.elapsed_s is not None:  # the same clock as nbft.runs() (training time, across resumes)
            detail += f" · {_clock(self.elapsed_s)} training"
        if summary.get("monitor_s") and summary.get("wall_s"):
            detail += f" · monitor {summary['monitor_s'] / summary['wall_s']:.0%} of the time"
        if status == "stopped":
            detail += " · checkpoint kept: Resume continues it"
            if summary.get("stop_reason"):
                detail += f" · {summary['stop_reason']}"
        if summary.get("error"):
            detail = str(summary["error"])
        panel._set_status(status, detail)
        panel._finish(status, detail)


class TrainPanel(widgets.VBox):
    """Buttons to start, stop and resume a full fine-tune in the background, with live progress and plot.

    Args:
        model, tokenizer, train, val, config: passed to :func:`nbft.train.finetune` unchanged (``config`` is a
            :class:`~nbft.config.TrainConfig`). ``train`` may be a ``DatasetDict`` (e.g. ``DatasetBuilder.dataset``):
            its train split trains, its validation split validates (unless ``val`` is given). Text is tokenized with
            the settings the data carries (a DatasetBuilder's chat format, ``max_length``, overflow), unless
            ``chat_template=``/``overflow=`` or the config's ``max_length`` say otherwise; the status line names them.
            The model is trained in place: keep a copy if you want to compare it
            with the base model later. Leave them out to only resume runs from disk.
        run_dir: where checkpoints and the final model go; default ``<runs_folder>/run-<time>``, chosen when Train
            is clicked. Resume continues the run in this folder.
        observers: more observers for every run (e.g. ``ProgressObserver()``).
        plot: the :class:`LivePlot` to use (default: a new one).
        runs_folder: where the *Resume from disk* control looks for runs (default: the folder of ``run_dir``, else
            ``runs``).

    Attributes:
        run: the current :class:`nbft.train.Run` (``None`` before the first click).
        plot: the :class:`LivePlot`; log_area: the warnings of the panel's calls (each once).

    Example::

        panel = TrainPanel(model, tok, data["train"], val=data["validation"], config=TrainConfig(max_steps=100))
        panel                         # Train / Stop / Resume
        panel.train(); panel.stop(); panel.wait().status   # the same, from code: 'stopped'
    """

    def __init__(
        self,
        model: Any = None,
        tokenizer: Any = None,
        train: Any = None,
        val: Any = None,
        config: Any = None,
        run_dir: str | Path | None = None,
        *,
        observers: Sequence[Any] = (),
        plot: LivePlot | None = None,
        runs_folder: str | Path | None = None,
        chat_template: bool | None = None,
        overflow: str | None = None,
    ) -> None:
        from nbft.config import TrainConfig

        if isinstance(model, tuple):
            raise TypeError("model is a (model, tokenizer) pair: unpack it, TrainPanel(model, tok, train_data)")
        if isinstance(config, dict):
            raise TypeError(f"config must be a TrainConfig, not a dict: use TrainConfig(**{config!r})")
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be an nbft.TrainConfig, not {type(config).__name__}")
        if run_dir is not None and not isinstance(run_dir, str | Path):
            raise TypeError(f"run_dir must be a folder path, not {run_dir!r}")
        if type(train).__name__ == "DatasetDict":  # a builder's dataset: train on its train split
            if "train" not in train:
                raise ValueError(f"the DatasetDict has no 'train' split (it has {list(train)}); pass one split")
            if val is None and len(train.get("validation") or ()):  # an empty validation split: no val loss
                val = train["validation"]
            train = train["train"]
        self._model = model
        self.tokenizer = tokenizer
        self.tokenization = {"chat_template": chat_template, "overflow": overflow}
        """finetune()'s ``chat_template=``/``overflow=`` (``None``: the data's own settings)."""
        self.train_data = train
        self.val_data = val
        self.config = config
        self.run_dir: Path | None = Path(run_dir) if run_dir is not None else None
        if runs_folder is None:  # where this panel's runs go is where earlier ones are
            runs_folder = Path(run_dir).parent if run_dir is not None else Path("runs")
        self.runs_folder = Path(runs_folder)
        self._fresh_dirs = run_dir is None  # no folder given: every Train click gets a new runs/run-<time>
        self.observers = list(observers)
        self.run: Any = None
        self.last_saved: Path | None = None
        self.plot = plot if plot is not None else LivePlot()
        self.log_area = LogArea()
        self.static = StaticResult()
        self._scope: Any = None
        self._driver: Any = None  # a Trainer driver (for_trainer), else None: nbft's own loop

        self.train_button = widgets.Button(description="Train", icon="play", button_style="success")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.resume_button = widgets.Button(description="Resume", icon="repeat", disabled=True)
        for button, tip in (
            (self.train_button, "Start a full fine-tune in the background"),
            (self.stop_button, "Finish the current step, write a checkpoint, stop"),
            (self.resume_button, "Continue the stopped run from its checkpoint"),
        ):
            set_tooltip(button, tip)
        self.train_button.disabled = model is None or train is None
        self.progress = widgets.IntProgress(value=0, min=0, max=1, layout=widgets.Layout(width="200px"))
        ready = "click Train to start" if not self.train_button.disabled else "pick a run on disk to resume"
        ready += _data_note(train, chat_template, overflow)
        self.status_label = widgets.HTML(status_html("ready", ready))
        self.status_label.add_class("nbft-train-status")
        self.train_button.on_click(lambda _: self._safely(self.train))
        self.stop_button.on_click(lambda _: self._safely(self.stop))
        self.resume_button.on_click(lambda _: self._safely(self.resume))

        self.disk_runs = widgets.Dropdown(
            options=[], description="on disk", style={"description_width": "56px"}, layout=widgets.Layout(width="420px")
        )
        self.disk_button = widgets.Button(
            description="Resume from disk", icon="folder-open", layout=widgets.Layout(width="170px")
        )
        set_tooltip(self.disk_button, "Continue a stopped or interrupted run of this folder, with its whole curve")
        set_tooltip(self.disk_runs, f"Runs in {self.runs_folder}/ that can continue from a checkpoint")
        self.refresh_button = widgets.Button(icon="refresh", layout=widgets.Layout(width="36px"))
        set_tooltip(self.refresh_button, f"Look for runs in {self.runs_folder}/ again")
        self.refresh_button.description = ""  # an icon button: its tooltip is its accessible name
        self.disk_button.on_click(lambda _: self._safely(self.resume_from_disk))
        self.refresh_button.on_click(lambda _: self._safely(self.refresh_runs))
        self.disk_note = widgets.HTML("")
        self.disk_note.add_class("nbft-disk-note")
        self.disk_box = widgets.HBox([self.disk_runs, self.disk_button, self.refresh_button, self.disk_note])
        self.refresh_runs()

        buttons = widgets.HBox([self.train_button, self.stop_button, self.resume_button])
        super().__init__(
            [
                buttons,
                widgets.HBox([self.progress, self.status_label]),
                self.plot.view,
                self.log_area.widget,
                self.disk_box,
                self.static.style_widget,
            ]
        )
        self.add_class("nbft-train-panel")
        self.add_class("nbft-panel")
        tidy(self)

    # ------------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_run_dir(cls, run_dir: str | Path, *, observers: Sequence[Any] = (), plot: LivePlot | None = None):
        """A panel for a run on disk (e.g. after a kernel restart): its whole curve so far, and Resume.

        Example::

            nbft.runs("runs")                              # find it
            panel = TrainPanel.from_run_dir("runs/sentiment-1")
            panel                                          # click Resume (or panel.resume())
        """
        from nbft.run_dirs import main_run_dir, read_run

        run_dir = main_run_dir(run_dir)  # a demo's or sweep's folder: its main run
        info = read_run(run_dir)  # a clear error when the folder is not a run
        panel = cls(run_dir=run_dir, observers=observers, plot=plot, runs_folder=Path(run_dir).parent)
        panel._show_disk_run(info)
        return panel

    @classmethod
    def for_trainer(cls, trainer: Any, *, observers: Sequence[Any] = (), plot: LivePlot | None = None):
        """A panel that drives a ``transformers.Trainer`` (or TRL trainer) through ``TrainerObserverCallback``.

        Train runs ``trainer.train()`` in a worker thread; Stop ends it after the current step and saves a
        checkpoint; Resume runs ``trainer.train(resume_from_checkpoint=True)``. Set ``logging_steps=1`` in the
        ``TrainingArguments`` for a point per step.

        Example::

            trainer = Trainer(model=model, args=TrainingArguments("runs/hf", logging_steps=1), train_dataset=ds)
            TrainPanel.for_trainer(trainer)
        """
        from nbft.widgets._trainer import TrainerDriver

        panel = cls(observers=observers, plot=plot, run_dir=trainer.args.output_dir)
        panel._driver = TrainerDriver(trainer)
        panel._model = trainer.model
        panel.train_button.disabled = False
        panel._set_status("ready", "click Train to run trainer.train() in the background")
        return panel

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
        run = getattr(self, "run", None)  # None too when the constructor refused its arguments (then __del__ closes)
        return run is not None and not run.done

    def train(self) -> Any:
        """Start a new run in the background (what the Train button does) and return its ``Run``."""
        if self.running:
            raise RuntimeError("a run is already in progress: Stop it first")
        if self._driver is None and (self._model is None or self.train_data is None):
            raise RuntimeError(
                "this panel has no model or training data (it was made from a run directory): use Resume, or "
                "TrainPanel(model, tokenizer, train_data) to train a new run"
            )
        if self._fresh_dirs:
            self.run_dir = _new_run_dir(self.runs_folder)
        self._begin("starting", "tokenizing the data" if self._driver is None else "starting trainer.train()")
        try:
            if self._driver is not None:
                self.run = self._driver.start(self._observers(), resume=False)
            else:
                from nbft.train import finetune

                self.run = finetune(
                    self.model,
                    self.tokenizer,
                    self.train_data,
                    val=self.val_data,
                    config=self.config,
                    observers=self._observers(),
                    run_dir=self.run_dir,
                    background=True,
                    **self.tokenization,
                )
        except BaseException:
            self._abort()
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
        if self.running:
            raise RuntimeError("the run is still in progress; Resume continues a stopped run")
        if self._driver is not None:
            self._begin("starting", "trainer.train(resume_from_checkpoint=True)")
            try:
                self.run = self._driver.start(self._observers(), resume=True)
            except BaseException:
                self._abort()
                raise
            self._settle()
            return self.run
        if self.run_dir is None:
            raise RuntimeError("nothing to resume: no run has been started in this panel (or pick one on disk)")
        from nbft.run_dirs import read_run
        from nbft.train import resume

        info = read_run(self.run_dir)
        if info.status == "running":
            raise RuntimeError(f"{self.run_dir} is still training (here or in another process): stop it there first")
        if info.status == "completed":
            raise RuntimeError(
                f"{self.run_dir} has completed: its model is in {self.run_dir}/model. To train it further, use "
                f"nbft.resume({str(self.run_dir)!r}, more_steps=N)"
            )
        if not any(h.get("kind") == "train" for h in self.plot.history):
            self._show_disk_run(info)  # a new kernel: the curve so far comes from the disk
        self._begin("starting", f"resuming {self.run_dir} from {_checkpoint_name(info)}")
        try:
            self.run = resume(self.run_dir, observers=self._observers(), background=True)
        except BaseException:
            self._abort()
            raise
        self._settle()
        return self.run

    def resume_from_disk(self, run_dir: str | Path | None = None) -> Any:
        """Resume a run directory (default: the one chosen in the *on disk* list) with its whole curve."""
        from nbft.run_dirs import read_run

        if self.running:
            raise RuntimeError("a run is in progress: Stop it before resuming another one")
        chosen = run_dir if run_dir is not None else self.disk_runs.value
        if not chosen:
            raise RuntimeError(f"no resumable run in {self.runs_folder}/: {self._why_no_runs()}")
        # at once: reading the run and drawing its curve take seconds, and a second click must not start twice
        self._set_buttons(running=True)
        self._set_status("starting", f"reading {chosen}")
        try:
            info = read_run(chosen)
            if not info.resumable:
                raise RuntimeError(
                    f"{info.path} is {info.status}: only stopped or interrupted runs with a checkpoint can resume"
                )
            self._driver = None
            self.run_dir = info.path
            self.run = None
            self._set_status("starting", f"resuming {info.path} from {_checkpoint_name(info)}")
            self._show_disk_run(info, status=False)
            return self.resume()
        except BaseException:
            self._set_buttons(running=self.running)
            raise

    def refresh_runs(self) -> None:
        """Fill the *on disk* list with the resumable runs of ``runs_folder``."""
        from nbft.run_dirs import runs

        options: list[tuple[str, str]] = []
        if self.runs_folder.is_dir():
            table = runs(self.runs_folder)
            for row in table[table.resumable].itertuples():
                loss = f", loss {row.loss:.3f}" if isinstance(row.loss, float) and row.loss == row.loss else ""
                label = f"{row.run} · {row.status} at step {row.step}{loss} · resumes from step {row.checkpoint}"
                options.append((label, row.path))
        previous = self.disk_runs.value
        self.disk_runs.options = options
        values = [v for _, v in options]
        # ipywidgets 8 leaves the value empty when options change; 7 picks the first: the same everywhere
        self.disk_runs.value = previous if previous in values else (values[0] if values else None)
        self.disk_button.disabled = not options or self.running
        self.disk_runs.disabled = not options
        self.disk_note.value = "" if options else f"<i style='color:#57606a'>{html.escape(self._why_no_runs())}</i>"

    def _why_no_runs(self) -> str:
        """Why the *on disk* list is empty, in words (no runs / still running / completed)."""
        from nbft.run_dirs import runs

        if not self.runs_folder.is_dir():
            return f"nothing to resume: {self.runs_folder}/ does not exist yet (runs are written there)"
        table = runs(self.runs_folder)
        if not len(table):
            return f"nothing to resume: no runs in {self.runs_folder}/"
        counts = table.status.value_counts().to_dict()
        parts = []
        if counts.get("running"):
            parts.append(f"{counts['running']} still running (locked by a live process: stop it there first)")
        if counts.get("completed"):
            parts.append(f"{counts['completed']} completed (train further with nbft.resume(path, more_steps=N))")
        rest = sum(n for status, n in counts.items() if status not in ("running", "completed"))
        if rest:
            parts.append(f"{rest} without a complete checkpoint")
        return f"nothing to resume in {self.runs_folder}/: " + "; ".join(parts)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the current run ends and return it (re-raises the run's error, like ``Run.wait``)."""
        if self.run is None:
            raise RuntimeError("no run yet: click Train or call panel.train() first")
        return self.run.wait(timeout)

    def static_html(self) -> str:
        """The HTML that the saved notebook keeps for this panel (final figure, summary, messages)."""
        return self.static.html

    def close(self) -> None:
        """Close the panel and let go of the model, the run and the data, so their memory can be freed.

        A running run is asked to stop first (it writes a checkpoint). Then ``del`` your own names for the model and
        ``%nbft gpu`` shows what is left.
        """
        if self.running:
            self.run.stop()
        close_tree(self)
        self.run = self._model = self.train_data = self.val_data = self._driver = None
        self.observers = []
        super().close()

    # ------------------------------------------------------------------------------------------- helpers
    def _observers(self) -> list[Any]:
        return [self.plot, _ProgressView(self), *self.observers]

    def _begin(self, status: str, detail: str) -> None:
        from nbft._quiet import quiet

        self.log_area.clear()
        self._scope = quiet(sink=self.log_area.add).start()
        self._set_buttons(running=True)
        self._set_status(status, detail)

    def _abort(self) -> None:
        if self._scope is not None:
            self._scope.stop()
            self._scope = None
        self._set_buttons(running=False)

    def _settle(self) -> None:
        from nbft.run_dirs import register_run

        if self._scope is not None:
            self._scope.release_thread()  # the work goes on in the worker; the notebook's cells are theirs again
        register_run(self.run)
        # A run can end before finetune() returns (e.g. it fails at once): its end event saw no self.run yet.
        if self.run.done:
            self._set_buttons(running=False)

    def _finish(self, status: str, detail: str) -> None:
        """End of a run (worker thread): buttons, the static copy for the saved notebook, the list on disk."""
        self._set_buttons(running=False)
        if self._scope is not None:
            self._scope.stop()
            self._scope = None
        figure = self.plot.last_png
        where = f" · {self.run_dir}" if self.run_dir is not None else ""
        body = f"<div class='nbft-summary'><b>{html.escape(status)}</b> {html.escape(detail)}{html.escape(where)}</div>"
        if figure is not None:
            body = image_html(figure, "training curve") + body
        if self.plot.last_monitor_png is not None:  # a ForgettingMonitor ran: its scores and live samples stay too
            body += image_html(self.plot.last_monitor_png, "task scores during training") + self.plot.samples_html()
        self.static.update(body + self.log_area.html(), f"{status}: {detail}{where}", png=figure)
        if status == "completed":  # nothing left to resume: the saved notebook keeps the result, not a widget
            self.static.finish("Training completed. Run this cell again for the panel's controls.")
        try:
            self.refresh_runs()
        except Exception as exc:  # a damaged folder elsewhere must not hide this run's result
            logger.debug("could not list %s: %s", self.runs_folder, exc)

    def _show_progress_static(self, state: Any, checkpoint_step: int | None) -> None:
        """While a run trains, the saved copy says where it was and what to do if the kernel is gone (a restarted
        kernel removes the live panel, and this copy shows instead of a panel frozen at "running")."""
        where = str(self.run_dir) if self.run_dir is not None else "its run folder"
        since = time.strftime("%H:%M:%S")
        ck = f"its last checkpoint (step {checkpoint_step})" if checkpoint_step else "its last checkpoint"
        detail = (
            f"This run was at step {state.step}/{state.total_steps} at {since}, when this copy was last updated. "
            f"If the kernel stopped since, the run stopped with it: TrainPanel.from_run_dir({where!r}) shows it "
            f"and resumes from {ck}."
        )
        text = f"interrupted? {detail}"
        body = f"<div class='nbft-summary nbft-in-progress'>{status_html('interrupted?', detail)}</div>"
        if self.plot.last_png is not None:
            body = image_html(self.plot.last_png, "training curve") + body
        self.static.update(body, text)

    def _show_disk_run(self, info: Any, status: bool = True) -> None:
        markers = []
        if info.status in ("stopped", "interrupted") and info.checkpoint_step is not None:
            label = "stopped" if info.status == "stopped" else "last checkpoint"
            markers.append((float(info.checkpoint_step), label))
        self.plot.load(info.history, markers=markers, info={"run_dir": str(info.path), "total_steps": info.total_steps})
        self.progress.max = max(1, int(info.total_steps or 1))
        self.progress.value = int(info.step or 0)
        if info.status == "interrupted":
            detail = (
                f"interrupted after step {info.step}; Resume continues from the checkpoint at step "
                f"{info.checkpoint_step} (steps after it are repeated)"
            )
        elif info.status == "stopped":
            detail = f"stopped at step {info.step} of {info.total_steps}; Resume continues it"
        else:
            detail = f"{info.status} at step {info.step}"
        if status:
            self._set_status(info.status, detail)
            self.resume_button.disabled = not info.resumable

    def _safely(self, action: Any) -> None:
        # An exception in a click handler only reaches the browser's log console; show it in the panel instead.
        try:
            action()
        except Exception as exc:
            logger.debug("TrainPanel: %s", exc)
            self._set_status("error", f"{type(exc).__name__}: {exc}")

    def _set_buttons(self, running: bool) -> None:
        can_train = self._driver is not None or (self._model is not None and self.train_data is not None)
        self.train_button.disabled = running or not can_train
        self.stop_button.disabled = not running
        resumable = self.run is not None and self.run.status in ("stopped", "failed") and bool(self.run.checkpoints)
        self.resume_button.disabled = running or not resumable
        self.disk_button.disabled = running or not self.disk_runs.options

    def _set_status(self, status: str, detail: str = "") -> None:
        self.status_label.value = status_html(status, detail)

    def _ipython_display_(self, **kwargs: Any) -> None:
        display_with_static(self, self.static)
