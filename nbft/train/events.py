"""Events the training loop emits, the Observer protocol, and the two built-in observers.

The loop calls ``on_train_begin(info)``, ``on_phase(phase)``, ``on_step(state)``, ``on_eval(state, metrics)``,
``on_monitor(state, record)``, ``on_save(path)`` and ``on_train_end(summary)``. Observers get read-only data (a
frozen dataclass or plain dicts) and cannot change the loop; they can ask it to stop by raising
:class:`StopTraining` (or through ``Run.stop()``). With several processes, observers run on the main process only
(rank 0); a stop they ask for is broadcast, so every process stops after the same step.

**Measuring observers (monitors).** An observer with a ``measure(model, tokenizer, step) -> dict | None`` method
and an int attribute ``every`` is called by the loop on the main process (the others wait at a barrier), with the
model in eval mode under ``torch.no_grad()`` (train mode again afterwards). The model is the one being trained, in
its compute dtype (bf16 in a bf16 run, holding the fp32 master weights rounded); a monitor must not change it.
It is called:

* once before the first step of a fresh run (``step=0``: the base model; not on a resumed run),
* after every ``every``-th optimizer step (``every`` missing or 0: only at the start and the end),
* after the final step of a run that completes (a stopped run does not pay for one more measurement).

A returned dict ``record`` becomes the history row ``{"kind": "monitor", "step": step, **record, "measure_s": t}``
(in ``run.history`` and ``history.jsonl``) and is emitted as ``on_monitor(state, row)`` to every observer
(``state`` is the :class:`StepState` of that step, ``None`` at step 0). ``"save_checkpoint": True`` in the record
writes a checkpoint at that step (once; ignored at step 0, where the base model needs none);
``"keep_checkpoints": [steps]`` in the latest record that has it protects those checkpoints from
``TrainConfig.keep_last`` retention, and ``"target_score"``/``"worst_drop"`` let ``run.best_checkpoint(max_drop)``
choose among the points (:mod:`nbft.train.selection`; :class:`nbft.evaluate.monitor.ForgettingMonitor` writes
them). Raising
``StopTraining("reason")`` from ``measure`` stops the run after this step, with a checkpoint and status
``"stopped"``; the reason is kept in ``run.stop_reason`` and the summary's ``stop_reason``. Other exceptions are
logged and switch that observer off. Time spent measuring is accounted apart: ``measure_s`` per row,
``monitor_s`` in the summary (next to ``train_time_s`` and ``wall_s``); it never counts in tokens/s.

**Refusing a bad setup.** ``on_train_begin`` may raise ``ValueError`` (or ``LookupError``, e.g. an unknown task
name): the run then fails before any step, with status ``"failed"``, the error raised from ``finetune()`` /
``run.wait()``, and no run files written.

**Phases.** ``on_phase({"phase": name, "step": step})`` announces long work that is not a training step:
``"setup"``, ``"monitor"``, ``"eval"`` (validation), ``"final_eval"``, ``"checkpoint"``, ``"saving"`` (the final
model) and ``"done"``, so a progress display can say what is happening instead of "ETA 0:00".

Example:
    >>> class PrintLoss:
    ...     def on_step(self, state):
    ...         print(state.step, round(state.loss, 3))
    >>> # nbft.finetune(model, tok, data, observers=[PrintLoss()])  # methods an observer lacks are skipped
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger("nbft.train")


class StopTraining(Exception):
    """Raise from any observer method to ask the loop to stop after the current step (a checkpoint is written)."""


@dataclasses.dataclass(frozen=True)
class StepState:
    """What ``on_step`` and ``on_eval`` receive: one optimizer step, after the update."""

    step: int
    """Optimizer steps done (1 after the first update)."""
    total_steps: int
    epoch: float
    """Progress in epochs (e.g. 1.5 = half way through the second pass)."""
    loss: float
    """Mean cross-entropy per labelled (completion) token over this step."""
    learning_rate: float
    grad_norm: float
    """Global gradient norm before clipping."""
    tokens: int
    """Real (non-pad) input tokens in this step."""
    label_tokens: int
    tokens_per_second: float
    """Real tokens per second over this step."""
    elapsed_s: float
    eta_s: float
    peak_memory_mb: float
    """Peak CUDA memory allocated, or the process's peak resident memory on CPU."""
    task_losses: dict[str, float] | None = None
    """When the training data mixes several tasks (its ``task`` column): mean CE per labelled token of each task's
    examples in this step (tasks absent from the step are left out); ``None`` for single-task data."""
    loss_scale: float | None = None
    """fp16 runs: the dynamic loss scale this step's backward used; ``None`` in bf16 and fp32 runs."""
    skipped: bool = False
    """fp16 runs: True when this attempt at step ``step`` overflowed, so the weights were not updated (and the loss
    scale was halved); the step is then taken again, and only the applied update counts (schedule, ``max_steps``)."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["task_losses"] is None:  # single-task runs keep the history rows they always had
            del out["task_losses"]
        if out["loss_scale"] is None:  # so do bf16 and fp32 runs
            del out["loss_scale"], out["skipped"]
        return out


@runtime_checkable
class Observer(Protocol):
    """Receives training events. Every method is optional: the loop skips the ones an observer lacks.

    Raise :class:`StopTraining` from any method to ask for a stop. Other exceptions are logged and that observer
    is switched off, so a plotting glitch never ends a long run.
    """

    def on_train_begin(self, info: dict[str, Any]) -> None: ...

    def on_step(self, state: StepState) -> None: ...

    def on_eval(self, state: StepState, metrics: dict[str, float]) -> None: ...

    def on_save(self, path: Path) -> None: ...

    def on_train_end(self, summary: dict[str, Any]) -> None: ...

    def on_monitor(self, state: StepState | None, record: dict[str, Any]) -> None: ...

    def on_phase(self, phase: dict[str, Any]) -> None: ...


@runtime_checkable
class Monitor(Protocol):
    """A measuring observer (see the module docstring): ``measure`` every ``every`` optimizer steps.

    Example:
        >>> class WeightNorm:
        ...     every = 10
        ...     def measure(self, model, tokenizer, step):
        ...         return {"weight_norm": float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5)}
    """

    every: int

    def measure(self, model: Any, tokenizer: Any, step: int) -> dict[str, Any] | None: ...


PROCESS_OBSERVERS: list[Any] = []
"""Observers added to every run started in this process (``nbft.launch`` uses it to feed a notebook's live plot
from the main worker process). Not for everyday use: pass ``observers=`` to ``finetune``."""


class Events:
    """Calls observers in order; turns StopTraining into a stop request and isolates observer bugs."""

    def __init__(self, observers: list[Any], request_stop: Any) -> None:
        self.observers = list(observers)
        self._request_stop = request_stop

    def emit(self, name: str, *args: Any) -> None:
        for observer in list(self.observers):
            method = getattr(observer, name, None)
            if method is None:
                continue
            try:
                method(*args)
            except StopTraining as stop:
                self._request_stop(str(stop) or None)
            except Exception as exc:
                if name == "on_train_begin" and isinstance(exc, ValueError | LookupError):
                    raise  # an observer refuses this setup (e.g. a misspelt task name): the run must fail
                logger.exception("observer %r failed in %s; it is switched off for this run", observer, name)
                self.observers.remove(observer)

    def monitors(self) -> list[Any]:
        """The observers that measure (have ``measure``), in order."""
        return [o for o in self.observers if callable(getattr(o, "measure", None))]

    def drop(self, observer: Any) -> None:
        if observer in self.observers:
            self.observers.remove(observer)


class HistoryWriter:
    """Appends one JSON line per step and per evaluation to ``path`` (the run directory's ``history.jsonl``).

    On a resumed run it first drops the lines written after the checkpoint, so the file equals the run's history.

    Example:
        >>> writer = HistoryWriter("runs/demo/history.jsonl")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._pending: list[str] | None = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        # The file is (re)written with the first record, not now: an observer may still refuse the setup, and a
        # refused run leaves no files behind.
        start = info.get("start_step", 0)
        kept: list[str] = []
        if (start or info.get("resumed")) and self.path.exists():  # a resume from step 0 keeps the base point
            kept = [ln for ln in self.path.read_text(errors="replace").splitlines() if _step_of(ln) <= start]
        self._pending = kept

    def _flush_pending(self) -> None:
        if self._pending is None:
            return
        kept, self._pending = self._pending, None
        from nbft._utils import atomic_path

        with atomic_path(self.path) as tmp:  # a kill while rewriting must not lose the lines kept
            tmp.write_text("".join(ln + "\n" for ln in kept))

    def _append(self, record: dict[str, Any]) -> None:
        self._flush_pending()
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_train_end(self, summary: dict[str, Any]) -> None:
        if self._pending:  # a resumed run that recorded nothing new: the file still drops the lines after its step
            self._flush_pending()
        self._pending = None

    def on_step(self, state: StepState) -> None:
        self._append({"kind": "train", **state.to_dict()})

    def on_eval(self, state: StepState, metrics: dict[str, float]) -> None:
        self._append({"kind": "eval", "step": state.step, "epoch": state.epoch, **metrics})

    def on_monitor(self, state: StepState | None, record: dict[str, Any]) -> None:
        self._append(record)


def _step_of(line: str) -> float:
    """The step of a history line; a torn line (a crash mid-write) counts as after every checkpoint."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class ProgressObserver:
    """A text progress bar (tqdm, on stderr) with loss, learning rate and tokens/s: for scripts and the CLI.

    Example:
        >>> # nbft.finetune(model, tok, data, observers=[ProgressObserver()])
    """

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self.tqdm_kwargs = tqdm_kwargs
        self.bar: Any = None
        self.val_loss: float | None = None

    def on_train_begin(self, info: dict[str, Any]) -> None:
        from tqdm import tqdm  # plain tqdm: tqdm.auto would import IPython, which the core never does

        kwargs = {"desc": "nbft train", "unit": "step", "dynamic_ncols": True, **self.tqdm_kwargs}
        self.bar = tqdm(total=info["total_steps"], initial=info.get("start_step", 0), **kwargs)

    def _postfix(self, state: StepState) -> None:
        post = {
            "loss": f"{state.loss:.4f}",
            "lr": f"{state.learning_rate:.2e}",
            "tok/s": f"{state.tokens_per_second:.0f}",
        }
        if self.val_loss is not None:
            post["val"] = f"{self.val_loss:.4f}"
        self.bar.set_postfix(post, refresh=False)

    def on_step(self, state: StepState) -> None:
        if self.bar is not None:
            self._postfix(state)
            self.bar.update(0 if state.skipped else 1)  # a skipped fp16 attempt is taken again: not a step

    def on_eval(self, state: StepState, metrics: dict[str, float]) -> None:
        self.val_loss = metrics.get("val_loss")
        if self.bar is not None:
            self._postfix(state)
            self.bar.refresh()

    def on_train_end(self, summary: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_description(f"nbft train ({summary.get('status')})")
            self.bar.close()
            self.bar = None
