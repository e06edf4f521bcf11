"""Compare runs: overlay their loss curves and show the settings that differ (a static output, saved with the
notebook).

Example::

    from nbft.widgets import compare_runs
    compare_runs(["runs/lr-1e-4", "runs/lr-3e-4"])          # run directories, Run objects or TrainPanels
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["RunComparison", "compare_runs"]


class RunComparison:
    """Loss curves of several runs on one figure, a summary per run and a table of the settings that differ.

    Displays as plain HTML with the figure embedded (no widget), so it stays in the saved notebook.

    Attributes:
        histories: ``{label: history}``; summary: one row per run; config_diff: differing settings (rows) by run.
    """

    def __init__(
        self,
        histories: Mapping[str, list[dict[str, Any]]],
        configs: Mapping[str, Mapping[str, Any]],
        summary: Any,
        *,
        smoothing: float = 0.6,
        yscale: str = "auto",
    ) -> None:
        from nbft.run_dirs import config_diff

        self.histories = dict(histories)
        self.configs = dict(configs)
        self.summary = summary
        self.config_diff = config_diff(configs)
        self.smoothing = smoothing
        self.yscale = yscale

    def figure(self) -> Any:
        from nbft.widgets._figures import runs_figure

        return runs_figure(list(self.histories.items()), smoothing=self.smoothing, yscale=self.yscale)

    def png(self) -> bytes:
        from nbft.widgets._figures import png

        return png(self.figure())

    def _repr_html_(self) -> str:
        from nbft.widgets._common import image_html

        diff = (
            self.config_diff.to_html(classes="nbft-config-diff", na_rep="–")
            if len(self.config_diff)
            else "<p>The runs have the same settings.</p>"
        )
        return (
            f"<div class='nbft-run-comparison'>{image_html(self.png(), 'loss curves of the runs')}"
            f"<b>Runs</b>{self.summary.to_html(index=False, classes='nbft-run-summary', na_rep='–', float_format=lambda x: f'{x:.4f}')}"  # noqa: E501
            f"<b>Settings that differ</b>{diff}</div>"
        )

    def __repr__(self) -> str:
        return f"RunComparison(runs={list(self.histories)}, differing settings={list(self.config_diff.index)})"


def _label(item: Any, used: set[str]) -> str:
    base = str(getattr(item, "run_dir", None) or item)
    label = Path(base).name or base
    k, out = 2, label
    while out in used:
        out, k = f"{label} ({k})", k + 1
    used.add(out)
    return out


def compare_runs(runs: Sequence[Any], *, smoothing: float = 0.6, yscale: str = "auto") -> RunComparison:
    """Overlay the loss curves of ``runs`` and list the settings that differ between them.

    Args:
        runs: run directories (read from ``history.jsonl`` and ``run.json``), ``nbft.train.Run`` objects,
            :class:`~nbft.widgets.TrainPanel` s, or ``(label, history)`` pairs.
        smoothing, yscale: as in :class:`~nbft.widgets.LivePlot`.

    Example::

        compare_runs(nbft.runs("runs").path[:3])
    """
    import dataclasses

    import pandas as pd

    from nbft.run_dirs import read_run

    if isinstance(runs, str | Path) or not len(runs):
        raise ValueError("compare_runs takes a list of runs, e.g. compare_runs(['runs/a', 'runs/b'])")
    histories: dict[str, list[dict[str, Any]]] = {}
    configs: dict[str, dict[str, Any]] = {}
    rows = []
    used: set[str] = set()
    for item in runs:
        item = getattr(item, "run", None) or item  # a TrainPanel: its current run
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            label, history, config, status = item[0], list(item[1]), {}, None
            used.add(label)
        elif isinstance(item, str | Path):
            info = read_run(item)
            label, history, config, status = _label(info.path, used), info.history, info.config, info.status
        elif hasattr(item, "history") and hasattr(item, "config"):
            label, history, status = _label(item, used), list(item.history), getattr(item, "status", None)
            cfg = item.config
            config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg or {})
        else:
            raise TypeError(
                f"cannot compare {type(item).__name__}: pass run directories, Run objects, TrainPanels or "
                "(label, history) pairs"
            )
        histories[label] = history
        configs[label] = config
        train = [h for h in history if h.get("kind") == "train"]
        evals = [h for h in history if h.get("kind") == "eval" and h.get("val_loss") is not None]
        rows.append(
            {
                "run": label,
                "status": status,
                "steps": train[-1].get("step") if train else None,
                "final loss": train[-1].get("loss") if train else None,
                "best val_loss": min(h["val_loss"] for h in evals) if evals else None,
                "tok/s": (sum(h.get("tokens_per_second", 0) for h in train) / len(train)) if train else None,
            }
        )
    return RunComparison(histories, configs, pd.DataFrame(rows), smoothing=smoothing, yscale=yscale)
