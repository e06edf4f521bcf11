"""Notebook panels over nbft's public functions (ipywidgets 7.7+ and 8; no extra JavaScript).

Each panel calls the same function a script calls ("one way in"):

- :class:`DatasetBuilder` → :func:`nbft.data.build_instruction_dataset` and :func:`nbft.data.length_stats`
- :class:`TrainPanel` → :func:`nbft.train.finetune` (``background=True``), ``Run.stop()``, :func:`nbft.train.resume`
- :class:`LivePlot` → a training observer that draws :func:`nbft.report.loss_curve` as a PNG, at most once a second
- :class:`ComparePanel` → :func:`nbft.evaluate.compare` and :func:`nbft.report.side_by_side`

Example::

    from nbft.widgets import TrainPanel
    panel = TrainPanel(model, tokenizer, data["train"], val=data["validation"], run_dir="runs/demo")
    panel          # click Train; Stop keeps a checkpoint; Resume continues it
"""

from nbft.widgets.compare_panel import ComparePanel
from nbft.widgets.dataset_builder import DatasetBuilder
from nbft.widgets.liveplot import LivePlot, Throttle
from nbft.widgets.train_panel import TrainPanel

__all__ = ["ComparePanel", "DatasetBuilder", "LivePlot", "Throttle", "TrainPanel"]
