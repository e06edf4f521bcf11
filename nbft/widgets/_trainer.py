"""Drive a ``transformers.Trainer`` (or a TRL trainer) from :class:`~nbft.widgets.TrainPanel`.

Events come from :class:`nbft.TrainerObserverCallback` (the same observers as nbft's own loop: live plot, progress,
history). Stop asks the Trainer to save a checkpoint and end after the current step; Resume calls
``trainer.train(resume_from_checkpoint=True)``. The Trainer's own progress bar and log printer are removed while
the panel drives it: the panel shows progress, and output from a worker thread would land in a random cell.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["TrainerDriver", "TrainerRun"]


def _save_on_stop_callback() -> Any:
    from transformers import TrainerCallback

    class SaveOnStop(TrainerCallback):
        """After the step in which Stop was clicked: save a checkpoint, then end training."""

        def __init__(self) -> None:
            self.requested = False

        def _apply(self, control: Any) -> Any:
            if self.requested:
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            return self._apply(control)

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            # Stop is often clicked from a plot/progress event, which arrives with the log, before the save check.
            return self._apply(control)

    return SaveOnStop()


class TrainerRun:
    """A ``Run``-like handle for one ``trainer.train()`` call in a worker thread."""

    def __init__(self, trainer: Any, observers: Sequence[Any], resume: bool) -> None:
        from nbft.train import TrainerObserverCallback

        self.trainer = trainer
        self.run_dir = Path(trainer.args.output_dir)
        self.status = "pending"
        self.error: BaseException | None = None
        self.summary: dict[str, Any] = {}
        self._save = _save_on_stop_callback()
        self._ended = False
        # this handle first: its status must be final when the panel's observers see the end
        self.callback = TrainerObserverCallback([self, *observers])
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(resume,), name="nbft-trainer", daemon=True)

    # the observer half: the callback's events tell this handle how the run ended
    def on_train_end(self, summary: dict[str, Any]) -> None:
        self._ended = True
        self.summary = dict(summary)
        if self.error is None:
            self.status = str(summary.get("status", "completed"))

    def start(self) -> TrainerRun:
        self.status = "running"
        self._thread.start()
        return self

    def _work(self, resume: bool) -> None:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer = self.trainer
        removed = []
        for cls in (ProgressCallback, PrinterCallback, _notebook_callback()):
            if cls is not None and trainer.pop_callback(cls) is not None:
                removed.append(cls)
        trainer.add_callback(self.callback)
        trainer.add_callback(self._save)  # after the observers: a Stop clicked in their events is seen at once
        try:
            trainer.train(resume_from_checkpoint=True if resume else None)
        except BaseException as exc:
            self.error, self.status = exc, "failed"
            if not self._ended:  # the Trainer emits no end event when it raises: the panel must still settle
                self.callback.events.emit("on_train_end", {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
        finally:
            trainer.remove_callback(self.callback)
            trainer.remove_callback(self._save)
            for cls in removed:
                trainer.add_callback(cls)
            self._done.set()

    def stop(self) -> None:
        self._save.requested = True
        self.callback.stop()

    def wait(self, timeout: float | None = None) -> TrainerRun:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def model(self) -> Any:
        return self.trainer.model

    @property
    def checkpoints(self) -> list[Path]:
        return trainer_checkpoints(self.run_dir)

    def __repr__(self) -> str:
        return f"TrainerRun({str(self.run_dir)!r}, status={self.status!r})"


def trainer_checkpoints(output_dir: str | Path) -> list[Path]:
    """The Trainer's ``checkpoint-N`` folders in ``output_dir``, oldest first."""
    root, found = Path(output_dir), []
    if root.is_dir():
        for p in root.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _notebook_callback() -> Any:
    try:
        from transformers.utils.notebook import NotebookProgressCallback
    except Exception:  # pragma: no cover - an older or newer transformers without it
        return None
    return NotebookProgressCallback


class TrainerDriver:
    """Starts :class:`TrainerRun` s for one trainer (what Train and Resume do in a ``for_trainer`` panel)."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def start(self, observers: Sequence[Any], *, resume: bool) -> TrainerRun:
        if resume and not trainer_checkpoints(self.trainer.args.output_dir):
            raise RuntimeError(
                f"no checkpoint in {self.trainer.args.output_dir} to resume from: Stop saves one, as does "
                "TrainingArguments(save_steps=...)"
            )
        return TrainerRun(self.trainer, observers, resume).start()
