"""``nbft.launch``: train with several processes from a notebook, on top of ``accelerate.notebook_launcher``.

``launch(train_fn_or_config, num_processes=N, observers=[plot])`` starts N worker processes (forked, as
``notebook_launcher`` does, so a function defined in the notebook works). Each runs the training function (or the
config file, as ``nbft train`` does); they train together (DDP: gloo on CPU, NCCL on GPUs). The main worker's events
(steps, evaluations, monitors, phases, the end) travel back over a queue to the notebook, where ``observers`` (a
``LivePlot``, a ``TrainPanel``'s views, a ``ProgressObserver``) receive them as if the run were local. ``stop()``
(or an observer raising ``StopTraining``, or interrupting the cell) reaches the main worker, and every worker stops
after the same step with a checkpoint.

Example::

    plot = LivePlot(); plot
    def train():
        model, tok = nbft.load_model()
        nbft.finetune(model, tok, data["train"], config=TrainConfig(max_steps=100), run_dir="runs/ddp")
    job = nbft.launch(train, num_processes=2, observers=[plot])   # or nbft.launch("train.yaml", num_processes=2)
    job.status, job.history[-1]

On GPUs, nothing may touch CUDA in the notebook before ``launch`` (accelerate's rule for forked workers). On CPU,
each worker computes with one thread: OpenMP cannot start threads again in a process forked after it ran.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue as queue_module
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nbft.job import JobConfig, check_output_dir, job_from_dict, load_job

logger = logging.getLogger("nbft.launcher")

_EVENTS = ("on_train_begin", "on_phase", "on_step", "on_eval", "on_monitor", "on_save", "on_train_end")


class Launch:
    """Handle of a multi-process run started by :func:`launch`: ``status``, ``history``, ``summary``,
    ``result``, ``error``; ``stop()``, ``wait()``.

    ``history`` holds the main worker's rows (as ``Run.history``); ``result`` is what the training function
    returned on the main worker (for a config: ``{"status", "summary", "run_dir", "comparison"}``).
    """

    def __init__(self, observers: Sequence[Any], context: Any) -> None:
        from nbft.train.events import Events

        self.status = "pending"
        self.history: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        self.result: Any = None
        self.error: BaseException | None = None
        self._events = Events(list(observers), request_stop=self.stop)
        self._queue = context.Queue()
        self._stop = context.Event()
        self._process: Any = None
        self._listener: threading.Thread | None = None
        self._failures: list[str] = []

    def stop(self, reason: str | None = None) -> None:
        """Ask the workers to stop after the current step (with a checkpoint)."""
        self._stop.set()

    @property
    def done(self) -> bool:
        return self._listener is not None and not self._listener.is_alive()

    def wait(self, timeout: float | None = None) -> Launch:
        """Wait for the workers to finish; re-raise a worker's error. Interrupting the wait stops the run."""
        assert self._listener is not None
        try:
            self._listener.join(timeout)
        except KeyboardInterrupt:
            logger.warning("interrupted: the workers stop after the current step (with a checkpoint)")
            self.stop()
            self._listener.join()
        if self.error is not None:
            raise self.error
        return self

    def _listen(self) -> None:
        """Notebook side: hand the main worker's events to the observers until the launcher exits."""
        self.status = "running"
        exit_code: int | None = None
        while True:
            try:
                message = self._queue.get(timeout=0.2)
            except queue_module.Empty:
                if not self._process.is_alive():
                    exit_code = self._process.exitcode
                    break
                continue
            kind, payload = message
            if kind == "exit":
                exit_code = payload
                break
            if kind == "error":
                self._failures.append(payload)
            elif kind == "result":
                self.result = payload
            else:
                self._record(kind, payload)
                self._events.emit(kind, *payload)
        self._process.join()
        if self._failures or exit_code not in (0, None):
            detail = self._failures[0] if self._failures else f"the launcher exited with code {exit_code}"
            self.error = RuntimeError(f"a worker process failed: {detail}")
            self.status = "failed"
        else:
            self.status = self.summary.get("status", "completed")

    def _record(self, kind: str, payload: tuple[Any, ...]) -> None:
        if kind == "on_step":
            self.history.append({"kind": "train", **payload[0].to_dict()})
        elif kind == "on_eval":
            state, metrics = payload
            self.history.append({"kind": "eval", "step": state.step, "epoch": state.epoch, **metrics})
        elif kind == "on_monitor":
            self.history.append(payload[1])
        elif kind == "on_train_begin":
            start = payload[0].get("start_step", 0)
            self.history = [h for h in self.history if start and h.get("step", 0) <= start]
        elif kind == "on_train_end":
            self.summary = dict(payload[0])

    def __repr__(self) -> str:
        steps = sum(h["kind"] == "train" for h in self.history)
        return f"Launch(status={self.status!r}, steps={steps})"


class _Forward:
    """Worker side (the main worker runs observers): send each event to the notebook; take its stop request."""

    def __init__(self, events: Any, stop: Any) -> None:
        self.events = events
        self.stop = stop

    def _send(self, kind: str, *payload: Any) -> None:
        self.events.put((kind, payload))
        if self.stop.is_set() and kind in ("on_step", "on_monitor", "on_phase"):
            from nbft.train.events import StopTraining

            raise StopTraining("stopped from the notebook")

    def __getattr__(self, name: str) -> Any:
        if name in _EVENTS:
            return lambda *payload: self._send(name, *payload)
        raise AttributeError(name)


def launch(
    train: Callable[..., Any] | str | os.PathLike[str] | Mapping[str, Any] | JobConfig,
    *,
    num_processes: int = 2,
    observers: Sequence[Any] = (),
    args: tuple[Any, ...] = (),
    background: bool = False,
    port: int | None = None,
) -> Launch:
    """Train with ``num_processes`` processes from a notebook; returns a :class:`Launch` handle.

    ``train``: a function (run by every process with ``*args``; it calls ``nbft.finetune``/``nbft.resume`` as a
    script would), or a config file path, mapping or :class:`~nbft.job.JobConfig` (run as ``nbft train`` runs
    it; checked here first). ``observers`` receive the main worker's events in this process. With
    ``background=True`` the call returns at once, so a Stop button keeps working; ``launch(...).wait()`` blocks.

    Example::

        job = nbft.launch("train.yaml", num_processes=2, observers=[LivePlot()])
    """
    import multiprocessing

    if not isinstance(num_processes, int) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive integer, got {num_processes!r}")
    _check_device_libraries()
    target = _target(train, args)
    context = multiprocessing.get_context("fork")  # a function defined in a notebook cannot be pickled: fork
    handle = Launch(observers, context)
    port = port or _free_port()

    def worker() -> None:
        _run_worker(target, handle._queue, handle._stop)

    handle._process = context.Process(
        target=_launcher, args=(worker, num_processes, port, handle._queue), name="nbft-launcher", daemon=False
    )
    handle._process.start()
    handle._listener = threading.Thread(target=handle._listen, name="nbft-launch-events", daemon=True)
    handle._listener.start()
    return handle if background else handle.wait()


_DEVICE_LIBRARIES = ("bitsandbytes",)
"""Libraries that accelerate's notebook launcher refuses to fork after: importing them may initialise a GPU."""


def _check_device_libraries() -> None:
    """With CUDA, a library that may have initialised the GPU before the fork is a clear error here, before any
    process starts. Without CUDA it cannot have (nbft.estimate and optimizer='adamw-8bit' import bitsandbytes on CPU
    too), so the launcher process forgets it was imported and the launch goes ahead (see :func:`_launcher`)."""
    import torch

    imported = [name for name in _DEVICE_LIBRARIES if name in sys.modules]
    if imported and torch.cuda.is_available():
        raise RuntimeError(
            f"{', '.join(imported)} is already imported in this kernel (nbft.estimate or a run with "
            "optimizer='adamw-8bit' imports it), and on a GPU it may have initialised CUDA, which processes started "
            "by fork cannot use. Restart the kernel and call nbft.launch before anything imports it, or run the "
            "config from a terminal: accelerate launch --num_processes N -m nbft train CONFIG"
        )


def _target(train: Any, args: tuple[Any, ...]) -> Callable[[], Any]:
    if callable(train) and not isinstance(train, JobConfig):
        return lambda: train(*args)
    if isinstance(train, JobConfig):
        job = train
    elif isinstance(train, Mapping):
        job = job_from_dict(dict(train))
    elif isinstance(train, str | os.PathLike):
        job = load_job(Path(train))
    else:
        raise TypeError(f"launch() takes a function or a config (path, dict, JobConfig), not {type(train).__name__}")
    check_output_dir(job)  # here, not in a worker: a clear error instead of a worker's traceback

    def run() -> Any:
        from nbft.job import run_job

        return run_job(job)

    return run


def _launcher(worker: Callable[[], None], num_processes: int, port: int, events: Any) -> None:
    """The launcher process: ``notebook_launcher`` needs a main thread of its own (signal handlers)."""
    code = 0
    try:
        from accelerate import notebook_launcher
        from accelerate.state import AcceleratorState, PartialState

        # An earlier single-process run in the notebook left accelerate's state behind; this process is new.
        AcceleratorState._reset_state(reset_partial_state=True)
        PartialState._reset_state()
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        for name in [m for m in sys.modules if m.split(".")[0] in _DEVICE_LIBRARIES]:
            del sys.modules[name]  # no CUDA (launch() checked): it initialised no device; workers re-import it
        notebook_launcher(worker, num_processes=num_processes, use_port=str(port))
    except BaseException as exc:
        events.put(("error", f"{type(exc).__name__}: {exc}"))
        code = 1
    finally:
        events.put(("exit", code))
        events.close()
        events.join_thread()


def _run_worker(target: Callable[[], Any], events: Any, stop: Any) -> None:
    import torch

    from nbft.train import events as train_events

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # OpenMP cannot start threads again in a process forked after it ran
    rank = int(os.environ.get("RANK", "0"))
    train_events.PROCESS_OBSERVERS.append(_Forward(events, stop))
    try:
        result = target()
        if rank == 0:
            try:
                pickle.dumps(result)
            except Exception:
                result = repr(result)
            events.put(("result", result))
    except BaseException as exc:
        events.put(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))
        raise
    finally:
        events.close()
        events.join_thread()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
