"""Figures of a comparison and a run: Δ heatmap, loss curve, weight-change heatmap, and PNG bytes of any of them.

Nothing draws with pyplot's global state: each function returns a ``matplotlib.figure.Figure`` (safe in threads and
in scripts). The weight changes themselves are computed by :func:`nbft.weights.weight_change`.

Example::

    from nbft.report import delta_heatmap, loss_curve
    delta_heatmap(table).savefig("delta.png")
    loss_curve(run.history)
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from nbft.report.style import _fmt
from nbft.report.table import ComparisonTable, _table

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["delta_heatmap", "figure_to_png", "loss_curve", "weight_change_heatmap"]


def _figure(width: float = 6.0, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_to_png(fig: Figure) -> bytes:
    """PNG bytes of a figure (for saving, embedding, or an ipywidgets Image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def delta_heatmap(table: ComparisonTable | Mapping[str, Any]) -> Figure:
    """seaborn heatmap of headline Δ (points) per task (rows) and model (columns), centred at 0; significant
    cells are marked with ``*``.

    Example::

        delta_heatmap(table).savefig("delta.png")
    """
    table = _table(table)
    import seaborn as sns

    d = table.delta[table.delta["is_headline"]] if len(table.delta) else table.delta
    fig = _figure(1.8 + 1.3 * max(1, d["model"].nunique() if len(d) else 1), 1.2 + 0.45 * max(1, len(table.tasks)))
    ax = fig.add_subplot()
    if not len(d):
        ax.text(0.5, 0.5, "no Δ: compare needs at least two models", ha="center", va="center")
        ax.set_axis_off()
        return fig
    cols = [c for c in table.columns if c in set(d["model"])]
    wide = d.pivot_table(index="task", columns="model", values="delta", sort=False).reindex(
        index=[t for t in table.tasks if t in set(d["task"])], columns=cols
    )
    sig = d.pivot_table(index="task", columns="model", values="significant", aggfunc="max", sort=False).reindex_like(
        wide
    )
    annot = wide.map(lambda v: _fmt(v)) + sig.map(lambda s: "*" if s is True or s == 1 else "")
    lim = float(np.nanmax(np.abs(wide.to_numpy()))) if np.isfinite(wide.to_numpy()).any() else 1.0
    sns.heatmap(
        wide.astype(float), annot=annot, fmt="", cmap="RdYlGn", center=0, vmin=-lim or -1, vmax=lim or 1,
        cbar_kws={"label": f"Δ vs {table.reference} (points)"}, ax=ax, linewidths=0.5,
    )  # fmt: skip
    ax.set_title("Δ headline metric (* = 95% CI excludes 0)")
    ax.set_xlabel("")
    ax.set_ylabel("")
    return fig


def loss_curve(history: Iterable[Mapping[str, Any]], *, title: str = "Loss") -> Figure:
    """Train loss (and validation loss, when present) against the optimizer step, from a run's history.

    ``history`` is a list of dicts with ``step`` and ``loss`` and/or ``val_loss`` (other keys are ignored).

    Example::

        loss_curve([{"step": 1, "loss": 2.3}, {"step": 2, "loss": 1.9, "val_loss": 2.0}])
    """
    rows = list(history)
    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and r.get("step") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None and r.get("step") is not None]
    if train:
        x, y = zip(*train, strict=True)
        ax.plot(x, y, color="#0969da", lw=1, alpha=0.35 if len(train) > 20 else 1.0, label="train loss")
        if len(train) > 20:  # a moving average shows the trend through step-to-step noise
            w = max(5, len(train) // 20)
            smooth = pd.Series(y).rolling(w, min_periods=1).mean()
            ax.plot(x, smooth, color="#0969da", lw=2, label=f"train (mean of {w})")
    if val:
        x, y = zip(*val, strict=True)
        ax.plot(x, y, "o-", color="#bf3989", lw=2, ms=4, label="validation loss")
    if not train and not val:
        ax.text(0.5, 0.5, "no loss values in the history", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend(frameon=False)
    return fig


def weight_change_heatmap(changes: pd.DataFrame, *, title: str = "What the full fine-tune changed") -> Figure:
    """seaborn heatmap of relative L2 weight change: module type (rows) × layer (columns; "-" = not in a layer)."""
    import seaborn as sns

    fig = _figure(2 + 0.35 * max(1, changes["layer"].nunique()), 2.6)
    ax = fig.add_subplot()
    if changes.empty:
        ax.text(0.5, 0.5, "no matching parameters", ha="center", va="center")
        ax.set_axis_off()
        return fig
    wide = changes.pivot_table(index="module", columns="layer", values="rel_change", aggfunc="mean")
    wide.columns = ["–" if c == -1 else str(c) for c in wide.columns]
    sns.heatmap(wide, cmap="magma_r", ax=ax, cbar_kws={"label": "‖ΔW‖ / ‖W‖"}, linewidths=0.3)
    ax.set_xlabel("layer")
    ax.set_ylabel("")
    ax.set_title(title)
    return fig
