"""Feed nbft observers (live plot, progress, history, Stop button) from a ``transformers.Trainer`` or TRL run.

Example:
    >>> from transformers import Trainer  # doctest: +SKIP
    >>> cb = TrainerObserverCallback([ProgressObserver()])  # doctest: +SKIP
    >>> Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()  # doctest: +SKIP
    >>> cb.stop()  # from a button: the Trainer stops after the current step  # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from nbft.train.events import Events, Observer, StepState


class TrainerObserverCallback(TrainerCallback):
    """A ``TrainerCallback`` that turns Trainer logs into nbft events.

    ``on_step`` fires when the Trainer logs a training loss (every ``logging_steps``); ``on_eval`` when it
    evaluates. An observer raising :class:`~nbft.train.events.StopTraining`, or a call to :meth:`stop`, sets
    ``control.should_training_stop`` so the Trainer ends after the current step.
    """

    def __init__(self, observers: list[Observer] | tuple[Observer, ...] = ()) -> None:
        self._stop_requested = False
        self.events = Events(list(observers), request_stop=self.stop)
        self._t0 = time.perf_counter()
        self._last: StepState | None = None
        self._last_tokens = (0.0, 0)

    def stop(self, reason: str | None = None) -> None:
        """Ask the Trainer to stop after the current step."""
        self._stop_requested = True

    def _sync(self, control: Any) -> Any:
        if self._stop_requested:
            control.should_training_stop = True
        return control

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._stop_requested = False
        self._t0 = time.perf_counter()
        self._last_tokens = (self._t0, 0)
        info = {
            "total_steps": state.max_steps,
            "start_step": state.global_step,
            "run_dir": args.output_dir,
            "source": "transformers.Trainer",
        }
        self.events.emit("on_train_begin", info)
        return self._sync(control)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self._sync(control)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        logs = logs or {}
        now = time.perf_counter()
        if "loss" in logs:
            elapsed = now - self._t0
            seen = int(getattr(state, "num_input_tokens_seen", 0) or 0)
            t_prev, seen_prev = self._last_tokens
            rate = (seen - seen_prev) / (now - t_prev) if seen and now > t_prev else 0.0
            self._last_tokens = (now, seen)
            done = max(state.global_step, 1)
            self._last = StepState(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=float(state.epoch or 0.0),
                loss=float(logs["loss"]),
                learning_rate=float(logs.get("learning_rate", 0.0)),
                grad_norm=float(logs.get("grad_norm", float("nan"))),
                tokens=0,
                label_tokens=0,
                tokens_per_second=rate,
                elapsed_s=elapsed,
                eta_s=elapsed / done * max(state.max_steps - state.global_step, 0),
                peak_memory_mb=_peak_memory_mb(),
            )
            self.events.emit("on_step", self._last)
        metrics = {k.removeprefix("eval_"): v for k, v in logs.items() if k.startswith("eval_")}
        if "loss" in metrics:
            metrics["val_loss"] = metrics.pop("loss")
            self.events.emit("on_eval", self._last or _empty_state(state), metrics)
        return self._sync(control)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.events.emit("on_save", Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return self._sync(control)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        stopped = self._stop_requested and state.global_step < state.max_steps
        summary = {
            "status": "stopped" if stopped else "completed",
            "steps": state.global_step,
            "total_steps": state.max_steps,
            "train_loss": self._last.loss if self._last else None,
            "source": "transformers.Trainer",
        }
        self.events.emit("on_train_end", summary)
        return control


def _peak_memory_mb() -> float:
    import torch

    from nbft.train.memory import peak_memory_mb

    return peak_memory_mb(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _empty_state(state: Any) -> StepState:
    return StepState(
        state.global_step, state.max_steps, float(state.epoch or 0.0), *([float("nan")] * 3), 0, 0, 0.0, 0.0, 0.0, 0.0
    )
