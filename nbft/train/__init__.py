"""nbft's full fine-tuning engine: an own loop on ``accelerate.Accelerator``, observed through plain events.

Public names (also exported from ``nbft``): :func:`finetune`, :func:`resume`, :class:`Run`, :class:`StopTraining`,
:class:`Observer`, :class:`StepState`, :class:`ProgressObserver`, :class:`HistoryWriter`,
:class:`TrainerObserverCallback`, :class:`~nbft.config.TrainConfig`. Also here: :class:`Monitor` (the measuring
observer protocol, see :mod:`nbft.train.events`). ``finetune``/``resume`` are in :mod:`nbft.train.api`, the
:class:`Run` handle in :mod:`nbft.train.run`, the loop itself (``setup`` / ``train_step`` / ``cleanup``) in
:mod:`nbft.train.loop` with its state in :mod:`nbft.train.state`; gradient synchronisation in
:mod:`nbft.train.sync`; the attention layout in :mod:`nbft.train.layout`. Several processes: ``accelerate launch``
or :func:`nbft.launch`.

Names are imported on first use, so ``import nbft`` stays light (torch loads when training starts).

Example:
    >>> from nbft.train import finetune, TrainConfig  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "finetune": "nbft.train.api",
    "resume": "nbft.train.api",
    "Run": "nbft.train.run",
    "TrainingError": "nbft.train.sync",
    "StopTraining": "nbft.train.events",
    "Observer": "nbft.train.events",
    "StepState": "nbft.train.events",
    "Monitor": "nbft.train.events",
    "ProgressObserver": "nbft.train.events",
    "HistoryWriter": "nbft.train.events",
    "TrainerObserverCallback": "nbft.train.hf_callback",
    "update_model_card": "nbft.train.card",
    "BaseSnapshot": "nbft.train.variants",
    "TrainConfig": "nbft.config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nbft.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
