"""A comparison written out: a self-contained HTML report, markdown, CSV files, and a model card section.

Every file is written atomically (a failed export leaves no half-written file) and never replaces a folder.

Example::

    from nbft.report import export_html, model_card_section
    export_html(table, "runs/demo/report.html", history=run.history)
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from nbft.report.examples import example_view
from nbft.report.figures import delta_heatmap, figure_to_png, loss_curve, weight_change_heatmap
from nbft.report.style import _md
from nbft.report.table import (
    ComparisonTable,
    _lower_is_better,
    _table,
    _text_cells,
    diagnostics_html,
    forgetting_summary,
    prompt_tokens_frame,
    side_by_side,
    table_frame,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


__all__ = ["export_csv", "export_html", "export_markdown", "model_card_section"]


def _img(fig: Figure, alt: str) -> str:
    data = base64.b64encode(figure_to_png(fig)).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def export_html(
    table: ComparisonTable | Mapping[str, Any],
    path: str | Path,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    weight_changes: pd.DataFrame | None = None,
    title: str = "nbft comparison",
    examples_per_task: int = 10,
) -> Path:
    """A self-contained HTML report (figures embedded as base64 PNG): the side-by-side table, forgetting, Δ heatmap,
    loss curve, weight change, prompt-token costs, the task list and the worst regressions per task.

    Example::

        export_html(table, "runs/demo/report.html", history=run.history)
    """
    table = _table(table)
    from nbft._utils import atomic_path, check_target

    check_target(path, "file")  # before the figures are drawn: a folder is never replaced by this file
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:13px}th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"
        "img{max-width:100%}caption{font-size:13px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Side by side</h2>",
        side_by_side(table).to_html(),
        "<h2>Δ heatmap</h2>",
        _img(delta_heatmap(table), "delta heatmap"),
    ]
    if history:
        parts += ["<h2>Training loss</h2>", _img(loss_curve(history), "loss curve")]
    if weight_changes is not None and not weight_changes.empty:
        parts += ["<h2>Weight change</h2>", _img(weight_change_heatmap(weight_changes), "weight change")]
    parts += [
        "<h2>Prompt tokens (mean per example)</h2>",
        prompt_tokens_frame(table).to_html(),
        "<h2>Tasks</h2>",
        table.task_info.to_html(index=False),
    ]
    labels = diagnostics_html(table)
    if labels:
        parts += ["<h2>Labels</h2>", labels]
    if table.signatures:
        parts += ["<h3>Metric signatures</h3><ul>"]
        parts += [f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in table.signatures.items()]
        parts += ["</ul>"]
    if table.notes:
        parts += ["<h3>Notes</h3><ul>", *[f"<li>{html.escape(n)}</li>" for n in table.notes], "</ul>"]
    if len(table.columns) > 1:
        parts.append("<h2>Worst regressions per task</h2>")
        for t in table.tasks:
            parts += [f"<h3>{html.escape(t)}</h3>", example_view(table, task=t, n=examples_per_task, as_html=True)]
    parts.append("</body></html>")
    path = Path(path)
    with atomic_path(path, kind="file") as tmp:
        tmp.write_text("\n".join(str(p) for p in parts), encoding="utf-8")
    return path


def export_markdown(table: ComparisonTable | Mapping[str, Any], path: str | Path | None = None) -> str:
    """The side-by-side table and forgetting summary as markdown; written to ``path`` when given."""
    table = _table(table)
    if path is not None:
        from nbft._utils import check_target

        check_target(path, "file")
    df = _text_cells(table, table_frame(table)).reset_index()
    for c in df.columns:
        if df[c].dtype.kind == "O":  # task and model names: shown as text, never as markup
            df[c] = df[c].map(lambda x: _md(x) if isinstance(x, str) else x)
    df.columns = [_md(str(c)) for c in df.columns]
    text = df.to_markdown(index=False) if _has_tabulate() else _markdown_table(df)
    forgetting = forgetting_summary(table)
    if forgetting:  # it names the models and tasks: escaped like the table
        text += "\n\n**Forgetting.** " + "  \n".join(_md(line) for line in forgetting.splitlines())
    if table.notes:
        text += "\n\n**Notes.**\n" + "\n".join(f"- {_md(n)}" for n in table.notes)
    text += "\n\nValues are points (0-100); Δ CIs are paired bootstrap 95% intervals over the same test examples."
    if _lower_is_better(table):
        text += " The general-text row is a loss per token (lower is better), its CI over the same text chunks."
    if path is not None:
        from nbft._utils import atomic_path

        with atomic_path(path, kind="file") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return text


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _markdown_table(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:  # names arrive escaped by _md; numbers hold no markup
        return str(v).replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def export_csv(table: ComparisonTable | Mapping[str, Any], folder: str | Path) -> list[Path]:
    """Write summary.csv, delta.csv, forgetting.csv and examples.csv into ``folder``."""
    from nbft._utils import atomic_path

    table = _table(table)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file: give a folder for the CSV files, e.g. {folder.with_suffix('')}")
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("summary", "delta", "forgetting", "examples"):
        with atomic_path(folder / f"{name}.csv", kind="file") as tmp:
            getattr(table, name).to_csv(tmp, index=False)
        out.append(folder / f"{name}.csv")
    return out


def model_card_section(table: ComparisonTable | Mapping[str, Any], *, heading: str | None = None) -> str:
    """Markdown for a model card: the side-by-side table, forgetting and how it was measured.

    Without ``heading`` it is a section body, for ``nbft.train.update_model_card(model_dir, "Evaluation", body)``.

    Example::

        update_model_card("runs/sentiment-1/model", "Evaluation", model_card_section(table))
    """
    table = _table(table)
    cfg = table.config
    lines = [f"## {heading}", ""] if heading else []
    lines += [
        export_markdown(table),
        "",
        f"Measured with `nbft.compare`: n ≤ {cfg.n} test examples per task, greedy decoding, batch size "
        f"{cfg.batch_size}, chat template {'on' if cfg.chat_template else 'off'}, classification scored by "
        f"{cfg.scoring}, {cfg.n_boot} bootstrap resamples. Tasks: "
        + "; ".join(f"{r['task']} ({r['description']})" for _, r in table.task_info.iterrows()),
    ]
    return "\n".join(lines) + "\n"
