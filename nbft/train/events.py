"""Events the training loop emits, the Observer protocol, and the two built-in observers.

The loop calls ``on_train_begin(info)``, ``on_step(state)``, ``on_eval(state, metrics)``, ``on_save(path)`` and
``on_train_end(summary)``. Observers get read-only data (a frozen dataclass or plain dicts) and cannot change the
loop; they can ask it to stop by raising :class:`StopTraining` (or through ``Run.stop()``).

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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
            except StopTraining:
                self._request_stop()
            except Exception:
                logger.exception("observer %r failed in %s; it is switched off for this run", observer, name)
                self.observers.remove(observer)


class HistoryWriter:
    """Appends one JSON line per step and per evaluation to ``path`` (the run directory's ``history.jsonl``).

    On a resumed run it first drops the lines written after the checkpoint, so the file equals the run's history.

    Example:
        >>> writer = HistoryWriter("runs/demo/history.jsonl")  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def on_train_begin(self, info: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start = info.get("start_step", 0)
        kept: list[str] = []
        if start and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def _append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def on_step(self, state: StepState) -> None:
        self._append({"kind": "train", **state.to_dict()})

    def on_eval(self, state: StepState, metrics: dict[str, float]) -> None:
        self._append({"kind": "eval", "step": state.step, "epoch": state.epoch, **metrics})


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
            self.bar.update(1)

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
