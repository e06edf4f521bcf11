"""Notebook panels over nbft's public functions (ipywidgets 7.7+ and 8; no extra JavaScript).

Each panel calls the same function a script calls ("one way in"):

- :class:`DatasetBuilder` → :func:`nbft.data.build_instruction_dataset`, :func:`nbft.data.tokenize_for_training`
  (label mask, truncation report), :func:`nbft.data.mix`, :func:`nbft.data.length_stats`, :func:`nbft.data.save_dataset`
- :class:`TrainPanel` → :func:`nbft.train.finetune` (``background=True``), ``Run.stop()``, :func:`nbft.train.resume`;
  :meth:`TrainPanel.from_run_dir` after a restart; :meth:`TrainPanel.for_trainer` for a ``transformers.Trainer``
- :class:`LivePlot` → a training observer that draws the history as small multiples (PNG), rationed in time
- :class:`ComparePanel` → :func:`nbft.compare` and :func:`nbft.report.side_by_side`
- :class:`TryPanel` → :func:`nbft.evaluate.answer.answer`: base, tuned and checkpoints answer a prompt side by side
  (streamed); :meth:`TryPanel.from_run_dir` after a restart
- :func:`compare_runs` → loss curves of several runs overlaid, and the settings that differ
- :func:`show_figure` → any matplotlib figure as a sharp (HiDPI) static output at its natural width

Every panel leaves a static copy of its result (figure and tables as HTML) in the saved notebook when its work ends.

Example::

    from nbft.widgets import TrainPanel
    panel = TrainPanel(model, tokenizer, data["train"], val=data["validation"], run_dir="runs/demo")
    panel          # click Train; Stop keeps a checkpoint; Resume continues it
"""

from nbft.widgets._common import show_figure
from nbft.widgets.compare_panel import ComparePanel
from nbft.widgets.compare_runs import RunComparison, compare_runs
from nbft.widgets.dataset_builder import DatasetBuilder
from nbft.widgets.liveplot import LivePlot, Throttle
from nbft.widgets.train_panel import TrainPanel
from nbft.widgets.try_it import TryPanel

__all__ = [
    "ComparePanel",
    "DatasetBuilder",
    "LivePlot",
    "RunComparison",
    "Throttle",
    "TrainPanel",
    "TryPanel",
    "compare_runs",
    "show_figure",
]
