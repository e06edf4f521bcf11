"""Figures for the panels: the training curve as small multiples, run overlays, and HiDPI PNG encoding.

Pure functions of plain data (the metric history), drawn with matplotlib's object API (no pyplot state, so a
worker thread can draw while a notebook cell runs). PNGs are rendered at twice their CSS size and shown at their
natural size, so they are sharp on HiDPI screens and never stretched.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "Png",
    "debiased_ema",
    "loss_limits",
    "monitor_figure",
    "monitor_share",
    "png",
    "runs_figure",
    "training_figure",
]

SCALE = 2
"""Pixels per CSS pixel in every PNG (2 = sharp on HiDPI screens, shown at half its pixel width)."""
CSS_DPI = 100
"""CSS pixels per figure inch."""

_TRAIN = "#1f77b4"
_VAL = "#ff7f0e"
_GHOST = "#9aa0a6"


class Png(bytes):
    """PNG bytes that know their natural CSS width (pixel width / :data:`SCALE`)."""

    css_width: int
    css_height: int

    def __new__(cls, data: bytes, scale: int = SCALE) -> Png:
        obj = super().__new__(cls, data)
        width, height = png_size(data)
        obj.css_width = max(1, round(width / scale))
        obj.css_height = max(1, round(height / scale))
        return obj


def png_size(data: bytes) -> tuple[int, int]:
    """Pixel width and height from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return struct.unpack(">II", data[16:24])


def png(fig: Any, *, tight: bool = True) -> Png:
    """Render a matplotlib ``Figure`` as a HiDPI PNG. ``tight`` keeps titles and colour-bar labels inside."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    extra = {"bbox_inches": "tight", "pad_inches": 0.08} if tight else {}
    # compress_level 1: a fifth of the default's encoding time for ~15% larger files; the widget redraws often
    fig.savefig(buf, format="png", dpi=CSS_DPI * SCALE, pil_kwargs={"compress_level": 1}, **extra)
    return Png(buf.getvalue())


# ---------------------------------------------------------------------------------------------------- maths
def debiased_ema(values: Sequence[float], smoothing: float) -> list[float]:
    """Exponential moving average with the start-up bias removed (as TensorBoard's smoothing does).

    A plain EMA starts at the first value and lags: with smoothing 0.9 it still shows 4.3 when the raw loss has
    fallen to 1.5. Dividing by ``1 - smoothing**t`` makes every point a weighted mean of the points so far.

    Example:
        >>> [round(v, 3) for v in debiased_ema([6.5, 3.0, 1.5], 0.5)]
        [6.5, 4.167, 2.643]
    """
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(float("nan"))
            continue
        acc = smoothing * acc + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out.append(acc / weight)
    return out


def loss_limits(values: Sequence[float], extra: Sequence[float] = ()) -> tuple[float, float]:
    """y-limits that ignore the warm-up spike: the first tenth of the steps (at most 20) may go off the top.

    The bottom always shows every point; ``extra`` (validation losses) always fits.

    Example:
        >>> loss_limits([6.5, 1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.4, 0.4])
        (0.34, 1.06)
    """
    finite = [v for v in values if v is not None and math.isfinite(v)]
    extras = [v for v in extra if v is not None and math.isfinite(v)]
    if not finite and not extras:
        return 0.0, 1.0
    skip = min(20, math.ceil(0.1 * len(finite))) if len(finite) >= 5 else 0
    top = max(finite[skip:] + extras)
    bottom = min(finite + extras)
    span = max(top - bottom, 0.05 * abs(top), 1e-3)
    return round(bottom - 0.1 * span, 6), round(top + 0.1 * span, 6)


# ---------------------------------------------------------------------------------------------------- figures
def _series(history: Iterable[Mapping[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for h in history:
        if h.get("kind") == kind and h.get(key) is not None and h.get("step") is not None:
            xs.append(float(h["step"]))
            ys.append(float(h[key]))
    return xs, ys


def _monitor_series(history: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{task: {"x": [...], "y": [...], "base": float | None, "metric": str}}`` from ``kind == "monitor"`` records.

    Accepts one record per task (``task`` + ``value``/``score``, optional ``metric`` and ``base``), or one record
    per step with ``scores`` (and optional ``base``) dicts, or task names as plain numeric keys.
    """
    out: dict[str, dict[str, Any]] = {}

    def add(task: str, step: float, value: Any, metric: str = "", base: Any = None) -> None:
        if value is None or not isinstance(value, int | float) or not math.isfinite(value):
            return
        entry = out.setdefault(task, {"x": [], "y": [], "base": None, "metric": metric})
        entry["x"].append(step)
        entry["y"].append(float(value))
        if isinstance(base, int | float):
            entry["base"] = float(base)

    skip = {"kind", "step", "epoch", "elapsed_s", "time", "wall_s", "share", "phase", "total_steps"}
    for h in history:
        if h.get("kind") != "monitor" or h.get("step") is None:
            continue
        step = float(h["step"])
        if "task" in h:
            add(str(h["task"]), step, h.get("value", h.get("score")), str(h.get("metric", "")), h.get("base"))
        elif isinstance(h.get("scores"), Mapping):
            bases = h.get("base") if isinstance(h.get("base"), Mapping) else {}
            metrics = h.get("metric") if isinstance(h.get("metric"), Mapping) else {}
            for task, value in h["scores"].items():
                add(str(task), step, value, str(metrics.get(task, "")), bases.get(task))
        else:
            for key, value in h.items():
                if key not in skip and isinstance(value, int | float):
                    add(key, step, value)
    return out


def _task_loss_series(history: Iterable[Mapping[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """``{task: (steps, losses)}`` from the ``task_losses`` of training rows (a mixture of tasks)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for h in history:
        if h.get("kind") == "train" and isinstance(h.get("task_losses"), Mapping) and h.get("step") is not None:
            for task, value in h["task_losses"].items():
                if isinstance(value, int | float) and math.isfinite(value):
                    xs, ys = out.setdefault(str(task), ([], []))
                    xs.append(float(h["step"]))
                    ys.append(float(value))
    return out


def monitor_share(history: Sequence[Mapping[str, Any]], summary: Mapping[str, Any] | None = None) -> float | None:
    """The monitor's share of the wall time: from the run's summary when it ended (``monitor_s / wall_s``), else
    what the latest monitor row measured so far (``None`` before the first training step).

    Example:
        >>> monitor_share([], {"monitor_s": 3.0, "wall_s": 30.0})
        0.1
    """
    if summary and summary.get("monitor_s") is not None and summary.get("wall_s"):
        return float(summary["monitor_s"]) / float(summary["wall_s"])
    rows = [h for h in history if h.get("kind") == "monitor" and h.get("share") is not None]
    return float(rows[-1]["share"]) if rows else None


def score_limits(values: Sequence[float]) -> tuple[float, float]:
    """y-limits for scores in points: at least 5 points tall (flat or all-zero scores get a readable axis, not
    ±1e-17), never below 0 when no score is negative.

    Example:
        >>> score_limits([0.0, 0.0])
        (-0.25, 5.25)
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    low, high = min(finite), max(finite)
    if high - low < 5.0:  # flat scores: a 5-point window around them
        middle = (low + high) / 2
        low, high = middle - 2.5, middle + 2.5
        if low < 0 <= min(finite):  # scores are not negative: start the axis at 0
            low, high = 0.0, 5.0
    pad = 0.05 * (high - low)
    return round(low - pad, 6), round(high + pad, 6)


def _integer_steps(ax: Any) -> None:
    """Steps are whole numbers: no 2.5 on the x axis of a short run."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def monitor_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    summary: Mapping[str, Any] | None = None,
    markers: Sequence[tuple[float, str]] = (),
) -> Any:
    """Task scores during training: one line per task (the headline metric, points), its base-model value as a
    dashed line of the same colour, its floor (if any) dotted, and a star on the best checkpoint within the
    monitor's forgetting budget. The title gives the monitor's share of the wall time.

    Example:
        >>> rows = [{"kind": "monitor", "step": s, "scores": {"qa": 40.0 - s}, "base": {"qa": 40.0}} for s in (0, 5)]
        >>> fig = monitor_figure(rows)
        >>> len(fig.axes[0].lines)
        2
    """
    from matplotlib.figure import Figure

    series = _monitor_series(history)
    rows = [h for h in history if h.get("kind") == "monitor" and h.get("step") is not None]
    last = rows[-1] if rows else {}
    target = last.get("target")
    floors = last.get("floors") if isinstance(last.get("floors"), Mapping) else {}
    fig = Figure(figsize=(7.4, 3.0), dpi=CSS_DPI)
    fig.subplots_adjust(left=0.08, right=0.70, top=0.86, bottom=0.15)
    ax = fig.add_subplot(1, 1, 1)
    order = sorted(series, key=lambda t: (t != target, list(series).index(t)))  # the target first
    for i, task in enumerate(order):
        s = series[task]
        colour = f"C{i % 10}"
        label = task + (f" ({s['metric']})" if s["metric"] else "") + (" · target" if task == target else "")
        ax.plot(s["x"], s["y"], "o-", ms=3.5, lw=1.8 if task == target else 1.2, color=colour, label=label)
        if s["base"] is not None:
            ax.axhline(s["base"], color=colour, ls="--", lw=0.8)
            if task in floors:
                ax.axhline(float(floors[task]) * s["base"], color=colour, ls=":", lw=0.8)
    best = last.get("best_step")
    if best is not None and target in series and float(best) in series[target]["x"]:
        y = series[target]["y"][series[target]["x"].index(float(best))]
        budget = last.get("max_drop")
        within = f"within {float(budget):.0%} drop" if budget is not None else "best target score"
        ax.plot([best], [y], marker="*", ms=15, color="#f2c12e", markeredgecolor="#57606a", ls="none",
                label=f"best checkpoint ({within}): step {best}", zorder=5)  # fmt: skip
    for step, _label in markers:
        ax.axvline(step, color="#57606a", ls=":", lw=1)
    share = monitor_share(history, summary)
    title = "Task scores during training (dashed: base model"
    title += ", dotted: floor)" if floors else ")"
    if share is not None:
        title += f" · monitor {share:.0%} of wall time"
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("score (points)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25, lw=0.5)
    ax.set_xlim(left=0)
    _integer_steps(ax)
    values = [y for s in series.values() for y in s["y"]]
    values += [s["base"] for s in series.values() if s["base"] is not None]
    values += [float(floors[t]) * series[t]["base"] for t in floors if t in series and series[t]["base"] is not None]
    ax.set_ylim(*score_limits(values))
    ax.yaxis.get_major_formatter().set_useOffset(False)  # no "1e-17" offset text when every score is equal
    handles, labels = ax.get_legend_handles_labels()
    text = [(float(h["step"]), float(h["text_loss"])) for h in rows if isinstance(h.get("text_loss"), int | float)]
    if text:  # the general-text probe: a loss (lower is better) on its own right-hand axis
        right = ax.twinx()
        xs, ys = [x for x, _ in text], [y for _, y in text]
        label = "general text loss/token (right, lower is better)"
        line = right.plot(xs, ys, "s--", ms=3, lw=1, color="#57606a", label=label, gid="nbft-text-loss")[0]
        right.set_ylabel("loss per token", fontsize=8)
        right.tick_params(labelsize=7)
        handles, labels = [*handles, line], [*labels, line.get_label()]
    if handles:
        ax.legend(
            handles, labels, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.08 if text else 1.01, 1.0)
        )
    return fig


def training_figure(
    history: Sequence[Mapping[str, Any]],
    *,
    title: str = "",
    smoothing: float = 0.6,
    yscale: str = "auto",
    markers: Sequence[tuple[float, str]] = (),
    previous: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = (),
) -> Any:
    """Small multiples of a training history: loss (one dashed line per task in a mixture), learning rate,
    tokens/s, memory. Monitor scores have their own figure, :func:`monitor_figure`.

    Args:
        history: ``Run.history`` records (``kind`` ``"train"``, ``"eval"``, ``"monitor"``).
        smoothing: weight of the debiased EMA drawn over the raw loss (0 = none, 0.9 = heavy).
        yscale: ``"auto"`` (linear, warm-up spike allowed off the top), ``"log"`` or ``"linear"`` (everything).
        markers: ``(step, label)`` vertical lines, e.g. where a run stopped and resumed.
        previous: ``(label, history)`` of earlier runs, drawn faintly under the loss.

    Example:
        >>> fig = training_figure([{"kind": "train", "step": 1, "loss": 2.0, "learning_rate": 1e-4}])
        >>> len(fig.axes)
        4
    """
    from matplotlib.figure import Figure

    if yscale not in ("auto", "log", "linear"):
        raise ValueError(f"yscale must be 'auto', 'log' or 'linear', not {yscale!r}")
    n_panels = 4
    rows = math.ceil(n_panels / 2)
    fig = Figure(figsize=(7.4, 2.1 * rows + 0.5), dpi=CSS_DPI)
    fig.subplots_adjust(left=0.09, right=0.98, top=1 - 0.42 / (2.1 * rows + 0.5), bottom=0.09, wspace=0.24, hspace=0.5)
    axes = [fig.add_subplot(rows, 2, i + 1) for i in range(n_panels)]
    loss_ax, lr_ax, tps_ax, mem_ax = axes[:4]
    if title:
        fig.suptitle(title, fontsize=10)

    steps, losses = _series(history, "train", "loss")
    smooth = debiased_ema(losses, smoothing) if smoothing > 0 else list(losses)
    vx, vy = _series(history, "eval", "val_loss")
    for label, old in previous:
        ox, oy = _series(old, "train", "loss")
        if ox:
            loss_ax.plot(ox, debiased_ema(oy, smoothing) if smoothing else oy, color=_GHOST, lw=1, alpha=0.6)
            loss_ax.annotate(label, (ox[-1], debiased_ema(oy, smoothing)[-1] if smoothing else oy[-1]),
                             fontsize=7, color=_GHOST, xytext=(2, 0), textcoords="offset points")  # fmt: skip
    if steps:
        loss_ax.plot(steps, losses, color=_TRAIN, lw=0.8, alpha=0.35, label="train (raw)")
        loss_ax.plot(steps, smooth, color=_TRAIN, lw=1.6, label=f"train (EMA {smoothing:g})" if smoothing else "train")
    for i, (task, (tx_, ty_)) in enumerate(_task_loss_series(history).items()):
        # a mixture: one line per task (a replayed task is absent from some steps; its EMA spans the gaps)
        loss_ax.plot(tx_, debiased_ema(ty_, smoothing) if smoothing else ty_, color=f"C{(i + 2) % 10}", lw=1,
                     ls="--", label=f"{task}")  # fmt: skip
    if vx:
        loss_ax.plot(vx, vy, "o-", color=_VAL, ms=3.5, lw=1, label="validation")
    if yscale == "log":
        loss_ax.set_yscale("log")
    elif yscale == "auto" and steps:
        low, high = loss_limits(losses, vy)
        loss_ax.set_ylim(low, high)
        off = [(x, y) for x, y in zip(steps, losses) if y > high]
        if off:
            x, y = max(off, key=lambda p: p[1])
            loss_ax.annotate(f"↑ {y:.2f} at step {x:g}", (x, high), xytext=(3, -10), textcoords="offset points",
                             fontsize=7, color=_TRAIN)  # fmt: skip
    loss_ax.set_title("loss per completion token", fontsize=9)
    if steps or vx:
        loss_ax.legend(fontsize=7, loc="upper right", frameon=False)

    lx, lr = _series(history, "train", "learning_rate")
    lr_title = "learning rate"
    if lx:
        peak = max(abs(v) for v in lr) or 1.0
        exponent = math.floor(math.log10(peak))
        # the scale goes into the title: matplotlib's offset text would sit on top of it
        lr_ax.plot(lx, [v / 10**exponent for v in lr], color="#2ca02c", lw=1.2)
        if exponent:
            lr_title += f" (×1e{exponent})"
    lr_ax.set_title(lr_title, fontsize=9)

    tx, tps = _series(history, "train", "tokens_per_second")
    if tx:
        tps_ax.plot(tx, tps, color="#9467bd", lw=0.8, alpha=0.35)
        tps_ax.plot(tx, debiased_ema(tps, 0.8), color="#9467bd", lw=1.4)
    tps_ax.set_title("tokens / s", fontsize=9)

    mx, mem = _series(history, "train", "peak_memory_mb")
    if mx:
        mem_ax.plot(mx, [m / 1024 for m in mem], color="#8c564b", lw=1.2)
    mem_ax.set_title("peak memory (GiB)", fontsize=9)

    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, lw=0.5)
        for step, _label in markers:
            ax.axvline(step, color="#57606a", ls=":", lw=1)
        if steps:
            ax.set_xlim(left=0)
        _integer_steps(ax)
    _marker_labels(loss_ax, markers)
    for ax in axes[-2:]:
        ax.set_xlabel("step", fontsize=8)
    return fig


def _marker_labels(ax: Any, markers: Sequence[tuple[float, str]]) -> None:
    """Stop/resume/checkpoint labels: vertical, at the bottom of the loss panel (the legend is at the top), on the
    inner side of their line, clipped to the panel; markers closer than 4% of the width share one label."""
    if not markers:
        return
    from matplotlib.transforms import blended_transform_factory

    left, right = ax.get_xlim()
    span = (right - left) or 1.0
    groups: list[tuple[float, list[str]]] = []
    for step, label in sorted(markers):
        if groups and (step - groups[-1][0]) / span < 0.04:
            groups[-1][1].extend(part for part in label.split(" · ") if part not in groups[-1][1])
        else:
            groups.append((float(step), list(dict.fromkeys(label.split(" · ")))))
    where = blended_transform_factory(ax.transData, ax.transAxes)
    for step, labels in groups:
        inside_left = (step - left) / span < 0.08  # near the left edge the label goes right of its line
        ax.text(step, 0.03, " · ".join(labels), transform=where, rotation=90, va="bottom",
                ha="left" if inside_left else "right", fontsize=6.5, color="#57606a", clip_on=True,
                bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 0.6}, zorder=4,
                gid="nbft-marker-label")  # fmt: skip


def runs_figure(
    runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]], *, smoothing: float = 0.6, yscale: str = "auto"
) -> Any:
    """Loss curves of several runs overlaid (train EMA as lines, validation as dots), one colour per run.

    Example:
        >>> fig = runs_figure([("a", [{"kind": "train", "step": 1, "loss": 2.0}])])
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.4, 3.0), dpi=CSS_DPI)
    fig.subplots_adjust(left=0.09, right=0.98, top=0.88, bottom=0.15, wspace=0.24)
    train_ax, val_ax = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    all_losses: list[float] = []
    all_smooth: list[float] = []
    all_val: list[float] = []
    for i, (label, history) in enumerate(runs):
        colour = f"C{i % 10}"
        x, y = _series(history, "train", "loss")
        if x:
            smooth = debiased_ema(y, smoothing) if smoothing else y
            train_ax.plot(x, y, color=colour, lw=0.7, alpha=0.25)
            train_ax.plot(x, smooth, color=colour, lw=1.6, label=label)
            all_losses += y
            all_smooth += smooth
        vx, vy = _series(history, "eval", "val_loss")
        if vx:
            val_ax.plot(vx, vy, "o-", color=colour, ms=3.5, lw=1.2, label=label)
            all_val += vy
    if yscale == "log":
        train_ax.set_yscale("log")
        val_ax.set_yscale("log")
    elif yscale == "auto" and all_losses:
        train_ax.set_ylim(*loss_limits(all_losses, all_val))
    train_ax.set_title(f"training loss (EMA {smoothing:g})", fontsize=9)
    val_ax.set_title("validation loss", fontsize=9)
    for ax in (train_ax, val_ax):
        _integer_steps(ax)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.25, lw=0.5)
        ax.set_xlabel("step", fontsize=8)
        if ax.has_data():
            ax.legend(fontsize=7, frameon=False)
    return fig
