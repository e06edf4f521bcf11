"""The handle of one training run (:class:`Run`): status, history and model while it trains; stop, wait, save.

The handle does not know the loop: ``finetune``/``resume`` (:mod:`nbft.train.api`) give :meth:`Run.start` the work
to do (:func:`nbft.train.loop.train_loop`), so the loop is two hops from ``finetune()`` and neither module imports
the other.

Example:
    >>> run = nbft.finetune(model, tok, data, background=True)  # doctest: +SKIP
    >>> run.stop(); run.wait().status  # doctest: +SKIP
    'stopped'
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nbft._utils import atomic_path
from nbft.config import TrainConfig
from nbft.train.batching import Examples
from nbft.train.card import render_model_card
from nbft.train.checkpoint import list_checkpoints
from nbft.train.events import PROCESS_OBSERVERS, Events, HistoryWriter, Observer
from nbft.train.guard import release_model
from nbft.train.lock import RunLock
from nbft.train.selection import best_checkpoint
from nbft.train.sync import is_main_process

logger = logging.getLogger("nbft.train")


class Run:
    """Handle of one training run: ``status``, ``history``, ``model``; ``stop()``, ``wait()``, ``save()``.

    ``status`` is ``"pending"``, ``"running"``, ``"completed"``, ``"stopped"`` or ``"failed"`` (then ``error``
    holds the exception, which ``wait()`` raises). ``history`` is a list of plain dicts (``kind`` ``"train"``,
    ``"eval"`` or ``"monitor"``), e.g. ``pandas.DataFrame(run.history)``. ``stop_reason`` says why a stopped run
    stopped, when something said (a monitor's ``StopTraining("...")``, an interrupt).

    Example:
        >>> run = finetune(model, tok, data, background=True)  # doctest: +SKIP
        >>> run.stop(); run.wait().status  # doctest: +SKIP
        'stopped'
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        train: Examples,
        val: Examples | None,
        config: TrainConfig,
        observers: Sequence[Observer],
        run_dir: Path,
        base_model: str | None,
        resume_from: Path | None = None,
        restore_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.train = train
        self.val = val
        self.config = config
        self.run_dir = run_dir
        self.base_model = base_model
        self.status = "pending"
        self.error: BaseException | None = None
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.train_hashes: Any = None
        """Content hashes of the training examples (``nbft.hashes``), written to the run directory for compare()."""
        self.data_settings: dict[str, Any] | None = None
        """How the training text was tokenized (``nbft.dataset_settings``; ``run.json``'s ``"data"``)."""
        self.card_sections: dict[str, str] = {}
        """Extra model-card sections (title -> markdown) that :meth:`save` writes, e.g. an evaluation table."""
        self.resume_from = resume_from
        self.restore_dtype = restore_dtype
        """The dtype the model is given back in when training ends (default: its dtype when training starts)."""
        self.skipped_checkpoints: list[tuple[Path, str]] = []
        """Checkpoints ``resume`` skipped because they failed their check, with the reason (renamed ``*.damaged``)."""
        # The history line first: an observer that hangs or fails cannot leave a step unrecorded on disk.
        self.events = Events(
            [HistoryWriter(run_dir / "history.jsonl"), *observers, *PROCESS_OBSERVERS], request_stop=self.stop
        )
        """The run's observers (on the main process; other processes get none when training starts)."""
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock: RunLock | None = None
        self._quiet: Any = None
        self._own_quiet = False

    def start(self, work: Callable[[Run], None], background: bool) -> Run:
        """Run ``work(self)`` (the training loop) here, or in a worker thread when ``background`` (then return at
        once)."""
        from nbft.run_dirs import register_run

        register_run(self)
        if background:
            self._thread = threading.Thread(target=self._work, args=(work,), name="nbft-train", daemon=True)
            self._thread.start()
            if self._quiet is not None and self._own_quiet:
                self._quiet.release_thread()  # the notebook's own cells keep their warnings while this trains
            return self
        self._work(work)
        if self.error is not None:
            raise self.error
        return self

    def _work(self, work: Callable[[Run], None]) -> None:
        if self._quiet is not None:
            self._quiet.claim_thread()  # library bars and repeated warnings of the training work stay quiet
        try:
            work(self)
        finally:
            self.release()
            if self._quiet is not None and self._own_quiet:
                self._quiet.stop()
            self._done.set()

    def release(self) -> None:
        """Let go of the run directory's lock and of the model object (when the run ends, or fails to start)."""
        release_model(self.model, self)
        if self._lock is not None:
            self._lock.release()

    def stop(self, reason: str | None = None) -> None:
        """Ask the loop to finish the current step, write a checkpoint and end with status ``"stopped"``."""
        if reason and self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (or ``timeout`` seconds pass); re-raise the worker's exception if it failed.

        Interrupting the wait (Ctrl-C, "interrupt kernel") stops the run: the step finishes, a checkpoint is
        written, and the wait goes on until that is done.
        """
        if self._thread is not None:
            try:
                self._thread.join(timeout)
            except KeyboardInterrupt:
                logger.warning("interrupted: stopping after the current step (with a checkpoint)")
                self.stop("interrupted")
                self._thread.join()
        if self.error is not None:
            raise self.error
        return self

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def final_loss(self) -> float | None:
        losses = [h["loss"] for h in self.history if h["kind"] == "train"]
        return losses[-1] if losses else None

    @property
    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.run_dir)

    def best_checkpoint(self, max_drop: float | None = None) -> Path:
        """With a :class:`~nbft.evaluate.monitor.ForgettingMonitor`: the checkpoint with the best target score whose
        worst drop on the other tasks stays within ``max_drop`` (a fraction of each task's base score; default the
        monitor's). See :func:`nbft.train.selection.best_checkpoint`.

        Example:
            >>> path = run.best_checkpoint(max_drop=0.2)  # doctest: +SKIP
            >>> model, tok = nbft.load_model(path)  # doctest: +SKIP
        """
        total = self.summary.get("total_steps") if self.status == "completed" else None
        return best_checkpoint(self.run_dir, self.history, max_drop, total_steps=total)

    def save(
        self,
        path: str | Path | None = None,
        *,
        state_dict: dict[str, torch.Tensor] | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write the model (safetensors), tokenizer and a model card (``README.md``) to ``path``, atomically.

        Defaults to ``<run_dir>/model``; a completed run saves there by itself. With several processes only the
        main process writes (the others return the path). ``state_dict`` replaces the model's own (FSDP). A folder
        nbft did not write (a run directory, your own folder) is never replaced, unless ``overwrite=True``.
        """
        if self.status == "running" and threading.current_thread() is not self._thread:
            raise RuntimeError("the run is still training: call run.stop() and run.wait() before run.save()")
        path = Path(path) if path is not None else self.run_dir / "model"
        if not is_main_process():
            return path
        own = path.resolve() == (self.run_dir / "model").resolve()  # the run's own model folder, whoever wrote it
        if not own and (path / "run.json").exists():
            raise FileExistsError(
                f"{path} is a run directory: save the model into a folder of its own, e.g. {path / 'model'} "
                "(the default, run.save())"
            )
        with atomic_path(path, kind="dir", overwrite=overwrite or own) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            (tmp / "README.md").write_text(render_model_card(self.card_info(), self.card_sections))
        return path

    def push_to_hub(self, repo_id: str, *, private: bool = True, **kwargs: Any) -> Any:
        """Upload this run's final model, its model card (with its last comparison as ``model-index`` metadata) and
        ``report.html`` to the Hub repository ``repo_id``, private by default; see :func:`nbft.hub.push_to_hub`
        (``token=``, ``commit_message=``, ``dry_run=True`` lists the files without the network).

        Example:
            >>> run.push_to_hub("me/smollm2-sentiment")  # doctest: +SKIP
        """
        from nbft.hub import push_to_hub  # lazy: the application layer, loaded only when pushing

        return push_to_hub(self, repo_id, private=private, **kwargs)

    def card_info(self) -> dict[str, Any]:
        """What the model card reports: base model, data summaries, config and final losses."""
        final: dict[str, Any] = {"steps": self.summary.get("steps"), "train_loss": self.final_loss}
        evals = [h for h in self.history if h["kind"] == "eval"]
        if evals:
            final["val_loss"] = evals[-1]["val_loss"]
        return {
            "base_model": self.base_model,
            "data": self.train.summary,
            "val_data": self.val.summary if self.val is not None else None,
            "config": dataclasses.asdict(self.config),
            "final": final,
        }

    def __repr__(self) -> str:
        last = f", loss={self.final_loss:.4f}" if self.final_loss is not None else ""
        err = f", error={self.error!r}" if self.error is not None else ""
        steps = sum(h["kind"] == "train" for h in self.history)
        return f"Run({str(self.run_dir)!r}, status={self.status!r}, steps={steps}{last}{err})"
