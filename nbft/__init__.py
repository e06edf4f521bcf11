"""nbft: instruction fine-tuning in a notebook.

Build prompt → completion datasets, run a full fine-tune you can watch, stop and resume, and compare the base and
tuned models across tasks (gain on the target, forgetting on the others, in-context baselines).

Example:
    >>> import nbft
    >>> model, tokenizer = nbft.tiny_random()
    >>> rows = [{"question": f"{i}+{i}?", "answer": str(2 * i)} for i in range(20)]
    >>> data = nbft.build_instruction_dataset(rows, "qa")

Names are imported lazily, so ``import nbft`` stays fast and the training engine can run where optional
dependencies (datasets, ipywidgets) are missing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    # configuration
    "DataConfig": "nbft.config",
    "TrainConfig": "nbft.config",
    "EvalConfig": "nbft.config",
    # templates and datasets
    "PromptTemplate": "nbft.templates",
    "get_template": "nbft.templates",
    "list_templates": "nbft.templates",
    "build_instruction_dataset": "nbft.data",
    "mix": "nbft.data",
    "tokenize_for_training": "nbft.data",
    # models
    "load_model": "nbft.models",
    "tiny_random": "nbft.models",
    # training
    "finetune": "nbft.train",
    "resume": "nbft.train",
    "Run": "nbft.train",
    "StopTraining": "nbft.train",
    "TrainerObserverCallback": "nbft.train",
    "Observer": "nbft.train",
    "ProgressObserver": "nbft.train",
    "HistoryWriter": "nbft.train",
    "launch": "nbft.launcher",
    "estimate": "nbft.estimation",
    # evaluation
    "compare": "nbft.evaluate.compare",
    "ForgettingMonitor": "nbft.evaluate",
    "forgetting_experiment": "nbft.forgetting",
    "sweep": "nbft.sweeps",  # reachable as nbft.sweep / nbft.load_sweep; __all__ stays at its cap of 30 names
    "load_sweep": "nbft.sweeps",
    "get_task": "nbft.evaluate",
    "list_tasks": "nbft.evaluate",
    "Task": "nbft.evaluate",
    "ComparisonTable": "nbft.report",
    "run_demo": "nbft.demo",
    # runs on disk
    "runs": "nbft.run_dirs",
}

__all__ = [
    "ComparisonTable",
    "DataConfig",
    "EvalConfig",
    "ForgettingMonitor",
    "Observer",
    "ProgressObserver",
    "PromptTemplate",
    "Run",
    "StopTraining",
    "Task",
    "TrainConfig",
    "TrainerObserverCallback",
    "build_instruction_dataset",
    "compare",
    "estimate",
    "finetune",
    "forgetting_experiment",
    "get_task",
    "get_template",
    "launch",
    "list_tasks",
    "list_templates",
    "load_ipython_extension",
    "load_model",
    "mix",
    "resume",
    "run_demo",
    "runs",
    "tiny_random",
    "tokenize_for_training",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nbft' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbft``: registers nbft's notebook magics (thin wrappers over the API)."""
    from nbft.magics import load_ipython_extension as load

    load(ipython)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from nbft.config import DataConfig, EvalConfig, TrainConfig
    from nbft.data import build_instruction_dataset, mix, tokenize_for_training
    from nbft.demo import run_demo
    from nbft.evaluate import ForgettingMonitor, Task, get_task, list_tasks
    from nbft.evaluate.compare import compare
    from nbft.forgetting import forgetting_experiment
    from nbft.launcher import launch
    from nbft.models import load_model, tiny_random
    from nbft.report import ComparisonTable
    from nbft.run_dirs import runs
    from nbft.sweeps import load_sweep as load_sweep
    from nbft.sweeps import sweep as sweep
    from nbft.templates import PromptTemplate, get_template, list_templates
    from nbft.train import (
        HistoryWriter as HistoryWriter,
    )
    from nbft.train import (
        Observer,
        ProgressObserver,
        Run,
        StopTraining,
        TrainerObserverCallback,
        finetune,
        resume,
    )
