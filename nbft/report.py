"""Pure rendering of a comparison's results dict: styled tables, figures, per-example diffs, HTML/markdown/CSV export,
model card; and :class:`ComparisonTable`, the results dict with its tidy views, which :func:`compare` returns.

:func:`nbft.evaluate.compare_models` computes the comparison and returns a plain dict; this module only reads it.
Nothing here imports widgets or IPython, and nothing draws with pyplot's global state: figures are
``matplotlib.figure.Figure`` objects (safe in threads and in scripts), tables are pandas Stylers or DataFrames.

Example::

    import nbft
    from nbft import report
    table = nbft.compare({"base": base, "tuned": run}, ["sentiment", "qa"], target="sentiment")
    report.side_by_side(table)                     # pandas Styler: tasks x (base, k-shot, tuned), Δ coloured
    report.delta_heatmap(table)                    # seaborn heatmap of Δ (task x model)
    report.loss_curve(run.history)                 # train/validation loss
    report.weight_change_heatmap(report.weight_change(base_model, tuned_model))
    report.export_html(table, "report.html", history=run.history)

Every function that takes a ``table`` also takes the plain results dict.
"""

from __future__ import annotations

import base64
import dataclasses
import difflib
import functools
import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from pandas.io.formats.style import Styler

    from nbft.config import EvalConfig

__all__ = [
    "ComparisonTable",
    "compare",
    "confusion_frame",
    "delta_heatmap",
    "diagnostics_html",
    "example_view",
    "export_csv",
    "export_html",
    "export_markdown",
    "figure_to_png",
    "forgetting_summary",
    "label_frame",
    "loss_curve",
    "model_card_section",
    "prompt_tokens_frame",
    "side_by_side",
    "table_frame",
    "to_text",
    "weight_change",
    "weight_change_heatmap",
    "word_diff_html",
]

GREEN, RED, GREY = "#1a7f37", "#cf222e", "#6e7781"
NO_LABEL = "no label (%)"
"""How the share of generated answers with no recognisable label is named in tables (metric ``unparseable_rate``)."""


# --------------------------------------------------------------------------------------------------- the table
class ComparisonTable:
    """What :func:`nbft.compare` returns: the plain results dict of :func:`nbft.evaluate.compare_models`, with tidy
    DataFrame views and renderings. ``table.results`` (or :meth:`to_dict`) is the dict itself.

    Views (full precision; the renderings round): ``summary`` (task, role, model, metric, value, CI, n, prompt
    tokens...), ``delta`` (per task and column: base, value, Δ, paired 95% CI, wins/ties/losses, significant,
    regression), ``forgetting`` (per tuned model: G, BWT′, AF, worst drop with CIs, significant regressions),
    ``examples`` (per test example: prompt, hash, reference, overlap, each model's output, score and Δ), ``task_info``.
    A column given as several runs (seeds) shows their mean, its two-level CI and the seed range (``seeds <col>``);
    :func:`label_frame` and :func:`confusion_frame` show which labels each model predicts.

    Example::

        table.summary.query("role == 'target'")
        table.delta.round(1)
        nbft.report.export_html(table, "report.html")
    """

    def __init__(self, results: Mapping[str, Any]) -> None:
        from nbft.evaluate.results import RESULTS_FORMAT

        if results.get("format") != RESULTS_FORMAT:
            raise ValueError(
                f"not an nbft results dict (format {results.get('format')!r}, expected {RESULTS_FORMAT!r}); "
                "make one with nbft.evaluate.compare_models(...) or nbft.compare(...)"
            )
        self.results = dict(results)

    # plain fields
    @property
    def target(self) -> str | None:
        return self.results["target"]

    @property
    def tasks(self) -> list[str]:
        return list(self.results["tasks"])

    @property
    def columns(self) -> list[str]:
        return list(self.results["columns"])

    @property
    def reference(self) -> str:
        return self.results["reference"]

    @property
    def notes(self) -> list[str]:
        return list(self.results["notes"])

    @property
    def signatures(self) -> dict[str, str]:
        return dict(self.results["signatures"])

    @functools.cached_property
    def config(self) -> EvalConfig:
        from nbft.config import EvalConfig

        cfg = dict(self.results["config"])
        names = {f.name for f in dataclasses.fields(EvalConfig)}
        if cfg.get("icl_tasks") is not None:
            cfg["icl_tasks"] = tuple(cfg["icl_tasks"])
        return EvalConfig(**{k: v for k, v in cfg.items() if k in names})

    # views
    @functools.cached_property
    def summary(self) -> pd.DataFrame:
        rows = []
        for task, info in self.results["tasks"].items():
            for col in self.columns:
                r = self.results["scores"][task].get(col)
                if r is None:
                    continue
                for key, value in r["metrics"].items():
                    lo, hi = r.get("ci", {}).get(key, (math.nan, math.nan))
                    rows.append(
                        {
                            "task": task,
                            "role": info["role"],
                            "model": col,
                            "k": r["k"],
                            "metric": key,
                            "value": value,
                            "ci_low": lo,
                            "ci_high": hi,
                            "n": r["n"],
                            "prompt_tokens": r.get("prompt_tokens_mean", math.nan),
                            "empty_rate": math.nan if r["empty_rate"] is None else r["empty_rate"],
                            "is_headline": key == r["keys"][0],
                            "in_table": key in r["keys"]
                            or (key == "unparseable_rate" and r["no_label_rate"] is not None),
                            "dtype": self.results["models"].get(r["model"], {}).get("dtype", ""),
                        }
                    )
        return pd.DataFrame(rows)

    @functools.cached_property
    def delta(self) -> pd.DataFrame:
        return pd.DataFrame(self.results["deltas"])

    @functools.cached_property
    def forgetting(self) -> pd.DataFrame:
        return pd.DataFrame(self.results["forgetting"])

    @functools.cached_property
    def task_info(self) -> pd.DataFrame:
        rows = []
        for task, info in self.results["tasks"].items():
            row = {"task": task, **{k: v for k, v in info.items() if k != "overlap"}}
            row["overlap_left_out"] = info["overlap"]["left_out"]
            rows.append(row)
        return pd.DataFrame(rows)

    @functools.cached_property
    def examples(self) -> pd.DataFrame:
        ref = self.reference
        erows = []
        for task, ex in self.results["examples"].items():
            scores = self.results["scores"][task]
            cols = [c for c in self.columns if c in scores]
            where = {c: {p: j for j, p in enumerate(scores[c]["positions"])} for c in cols}
            last = next((c for c in reversed(cols) if not c.startswith(f"{ref} ")), None)
            for i, pos in enumerate(ex["position"]):
                row: dict[str, Any] = {
                    "task": task,
                    "example": pos,
                    "split_index": ex["split_index"][i],
                    "prompt": ex["prompt"][i],
                    "prompt_hash": ex["prompt_hash"][i],
                    "same_prompt": all(
                        scores[c]["prompt_hashes"][where[c][pos]] == ex["prompt_hash"][i]
                        for c in cols
                        if scores[c]["k"] == 0 and pos in where[c]
                    ),
                    "reference": ex["reference"][i],
                    "overlap": ex["overlap"][i],
                }
                for c in cols:
                    r, j = scores[c], where[c].get(pos)
                    if j is None:  # a k-shot column evaluated on the first icl_n examples only
                        row[f"output:{c}"], row[f"score:{c}"] = None, math.nan
                        if c != ref:
                            row[f"delta:{c}"] = math.nan
                        continue
                    row[f"output:{c}"] = r["outputs"][j] if r["outputs"] is not None else r["ll_choices"][j]
                    if r["ll_choices"] is not None and r["outputs"] is not None:
                        row[f"ll_choice:{c}"] = r["ll_choices"][j]
                    ekey = r.get("example_key")
                    row[f"score:{c}"] = float(r["per_example"][ekey][j]) if ekey in r["per_example"] else math.nan
                    if c != ref:
                        row[f"delta:{c}"] = row[f"score:{c}"] - row[f"score:{ref}"]
                if last and last != ref:
                    dv, out = row[f"delta:{last}"], row[f"output:{last}"]
                    row["status"] = (
                        "empty" if not str(out or "").strip()
                        else "improved" if dv > 0 else "regressed" if dv < 0 else "same" if dv == 0 else "n/a"
                    )  # fmt: skip
                row["metric"] = scores[ref]["keys"][0]
                erows.append(row)
        return pd.DataFrame(erows)

    def headline(self) -> pd.DataFrame:
        """Tasks × columns of the headline values (points), in task then column order."""
        s = self.summary[self.summary["is_headline"]]
        wide = s.pivot_table(index=["task", "metric"], columns="model", values="value", sort=False)
        return wide.reindex(columns=[c for c in self.columns if c in wide.columns])

    def to_dict(self) -> dict[str, Any]:
        """The results dict (plain data; ``json.dumps`` it for ``metrics.json``)."""
        return self.results

    def to_text(self) -> str:
        """A plain-text table for terminals: headline values per task and column, Δ with CI, forgetting, notes."""
        return to_text(self)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"ComparisonTable(tasks={self.tasks}, columns={self.columns}, target={self.target!r})"

    def _repr_html_(self) -> str:
        return side_by_side(self).to_html() + _notes_html(self)


def compare(models: Mapping[str, Any], tasks: Any, **kwargs: Any) -> ComparisonTable:
    """Base vs tuned (and in-context baselines) on several tasks: :func:`nbft.evaluate.compare_models` wrapped in a
    :class:`ComparisonTable` for display. Takes the same arguments.

    Example::

        table = nbft.compare({"base": (base, tok), "tuned": run}, ["sentiment", "qa", "reply"], target="sentiment",
                             n=200, icl_shots=(0, 3), chat_template=True)
        table                       # the side-by-side table in a notebook
        print(table.to_text())      # in a terminal

    A compared run (a ``Run``, a run directory or its ``model/`` folder) gets the result in its model card: the
    table as prose and the numbers as ``model-index`` metadata (:func:`nbft.train.card.record_comparison`).
    """
    from nbft.evaluate.runner import compare_models
    from nbft.train.card import record_comparison

    table = ComparisonTable(compare_models(models, tasks, **kwargs))
    record_comparison(models, table.results, model_card_section(table))  # each compared run's card keeps it
    return table


def _table(table: ComparisonTable | Mapping[str, Any]) -> ComparisonTable:
    return table if isinstance(table, ComparisonTable) else ComparisonTable(table)


# --------------------------------------------------------------------------------------------------- tables
def _fmt(x: Any, digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(lo: float, hi: float, sign: bool = False) -> str:
    return f"[{_fmt(lo, sign=sign)}, {_fmt(hi, sign=sign)}]"


def table_frame(table: ComparisonTable | Mapping[str, Any]) -> pd.DataFrame:
    """The side-by-side table as a plain DataFrame: one row per (task, metric) shown, one column per model,
    then per non-reference model its Δ, the paired 95% CI of Δ, wins/ties/losses and a flag.

    Values are points (0-100), full precision. Classification tasks get a ``no label (%)`` row: the share of each
    model's generated answers with no recognisable label. Example::

        df = table_frame(table); df.loc[("sentiment", "accuracy")]
    """
    table = _table(table)
    s = table.summary[table.summary["in_table"]]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for _, r in s.iterrows():
        metric = NO_LABEL if r["metric"] == "unparseable_rate" else r["metric"]
        row = rows.setdefault((r["task"], metric), {"role": r["role"]})
        row[r["model"]] = r["value"]
        if r["model"] == table.reference and metric != NO_LABEL:
            row["CI (base)"] = _ci(r["ci_low"], r["ci_high"])
    for _, d in table.delta.iterrows():
        key = (d["task"], d["metric"])
        if key not in rows:
            continue
        row = rows[key]
        col = d["model"]
        row[f"Δ {col}"] = d["delta"]
        row[f"Δ CI {col}"] = _ci(d["ci_low"], d["ci_high"], sign=True)
        row[f"W/T/L {col}"] = f"{d['wins']}/{d['ties']}/{d['losses']}"
        if _n_seeds(d) > 1:  # several runs of the column: the range of the per-seed Δ, beside the two-level CI
            row[f"seeds {col}"] = f"{_fmt(d['seed_min'], sign=True)} to {_fmt(d['seed_max'], sign=True)}"
        row[f"flag {col}"] = "▼ regression" if d["regression"] else ("▲ gain" if d["significant"] else "")
    # per task: the headline, its log-likelihood twin, then the no-label share
    order = {t: i for i, t in enumerate(table.tasks)}
    rows = dict(sorted(rows.items(), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1] == NO_LABEL)))
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["task", "metric"])
    ordered = ["role", *[c for c in table.columns if c in df.columns]]
    if "CI (base)" in df.columns:
        ordered.insert(2, "CI (base)")
    for col in table.columns[1:]:
        ordered += [
            c for c in (f"Δ {col}", f"Δ CI {col}", f"seeds {col}", f"W/T/L {col}", f"flag {col}") if c in df.columns
        ]
    # A k-shot column covers only some tasks, and a no-label row has no Δ: such text cells are "not run", not missing.
    text_cols = [c for c in df.columns if c.startswith(("Δ CI ", "W/T/L ", "flag ", "CI (base)", "seeds "))]
    df[text_cols] = df[text_cols].fillna("–")
    for c in (c for c in text_cols if c.startswith("flag ")):
        df[c] = df[c].replace("–", "")
    return df[ordered]


def _significance(table: ComparisonTable, df: pd.DataFrame) -> dict[tuple[tuple[str, str], str], bool]:
    """(row, "Δ col") -> whether that Δ's CI excludes 0."""
    return {((d["task"], d["metric"]), f"Δ {d['model']}"): bool(d["significant"]) for _, d in table.delta.iterrows()}


def prompt_tokens_frame(table: ComparisonTable | Mapping[str, Any]) -> pd.DataFrame:
    """Mean prompt tokens per task and column, rounded to whole tokens ("–" where a column did not run a task):
    what k-shot examples cost in context.

    Example::

        prompt_tokens_frame(table)      # sentiment: base 62, base 3-shot 187, tuned 62
    """
    table = _table(table)
    s = table.summary.drop_duplicates(["task", "model"])
    wide = s.pivot_table(index="task", columns="model", values="prompt_tokens", sort=False)
    wide = wide.reindex(
        index=[t for t in table.tasks if t in wide.index], columns=[c for c in table.columns if c in wide.columns]
    )
    return wide.map(lambda x: "–" if pd.isna(x) else round(float(x))).astype(object)


def forgetting_summary(table: ComparisonTable | Mapping[str, Any]) -> str:
    """One line per tuned model: target gain G with its CI, BWT′, AF and the worst drop (with CIs), and the number of
    significant regressions.

    Example::

        forgetting_summary(table)  # 'tuned: G (sentiment) = +37.0 pts [95% CI +24.0, +50.0]; BWT′ = -3.5 [...]; ...'
    """
    table = _table(table)

    def with_ci(f: Mapping[str, Any], name: str, sign: bool = True, unit: str = "") -> str:
        text = _fmt(f[name], sign=sign) + unit
        lo, hi = f.get(f"{name}_ci_low"), f.get(f"{name}_ci_high")
        seeds = ""
        if _n_seeds(f) > 1 and f.get(f"{name}_seed_min") is not None:
            seeds = f"; seeds {_fmt(f[f'{name}_seed_min'], sign=sign)} to {_fmt(f[f'{name}_seed_max'], sign=sign)}"
        if lo is not None and hi is not None and not (pd.isna(lo) or pd.isna(hi)):
            text += f" [95% CI {_fmt(lo, sign=sign)}, {_fmt(hi, sign=sign)}{seeds}]"
        elif seeds:
            text += f" [{seeds[2:]}]"
        return text

    lines = []
    for _, f in table.forgetting.iterrows():
        n_seeds = _n_seeds(f)
        parts = [f"{f['model']}" + (f" ({n_seeds} seeds, mean):" if n_seeds > 1 else ":")]
        if table.target:
            parts.append(f"G ({table.target}) = {with_ci(f, 'G', unit=' pts')}")
        if f["n_other_tasks"]:
            parts.append(f"BWT′ = {with_ci(f, 'BWT')}")
            parts.append(f"AF = {with_ci(f, 'AF', sign=False)}")
            parts.append(f"worst drop = {with_ci(f, 'worst_drop')} ({f['worst_task']})")
            parts.append(f"significant regressions = {f['significant_regressions']}/{f['n_other_tasks']}")
        lines.append("  ".join(parts[:1]) + " " + "; ".join(parts[1:]))
        lines += _probe_lines(f, with_ci)
        groups = f.get("groups")
        for group, g in groups.items() if isinstance(groups, Mapping) else ():
            if not g.get("n_other_tasks"):
                continue
            g = {**g, "n_seeds": n_seeds}
            members = ", ".join(table.results.get("task_groups", {}).get(group, []))
            lines.append(
                f"  {group} tasks ({members}): AF = {with_ci(g, 'AF', sign=False)}; worst drop = "
                f"{with_ci(g, 'worst_drop')} ({g['worst_task']}); significant regressions = "
                f"{g['significant_regressions']}/{g['n_other_tasks']}"
            )
    return "\n".join(lines)


def _probe_lines(f: Mapping[str, Any], with_ci: Any) -> list[str]:
    """The skill out of domain (probe rows), beside G and outside it: one line per probe."""
    probes = f.get("probes")
    if not isinstance(probes, list):
        return []
    lines = []
    for p in probes:
        rec = {"delta": p["delta"], "delta_ci_low": p.get("ci_low"), "delta_ci_high": p.get("ci_high"),
               "delta_seed_min": p.get("seed_min"), "delta_seed_max": p.get("seed_max"),
               "n_seeds": p.get("n_seeds")}  # fmt: skip
        lines.append(f"  out of domain ({p['of']} skill; not in G, BWT′ or AF): {p['task']} Δ {p['metric']} = "
                     f"{with_ci(rec, 'delta', unit=' pts')}")  # fmt: skip
    return lines


def _n_seeds(record: Mapping[str, Any]) -> int:
    """How many runs a record averages (1 for a single model; a missing or NaN field in a mixed frame is 1)."""
    n = record.get("n_seeds")
    return 1 if n is None or (isinstance(n, float) and math.isnan(n)) else int(n)


def side_by_side(table: ComparisonTable | Mapping[str, Any]) -> Styler:
    """The main table as a pandas Styler: tasks as rows; base, k-shot and tuned columns; a Δ is green or red only
    when its paired 95% CI excludes 0 (grey otherwise); significant regressions flagged; the forgetting summary as
    the caption. Task and model names are HTML-escaped.

    Example::

        side_by_side(table)          # displays in a notebook
    """
    table = _table(table)
    df = table_frame(table)
    delta_cols = [c for c in df.columns if c.startswith("Δ ") and not c.startswith("Δ CI")]
    flag_cols = [c for c in df.columns if c.startswith("flag ")]
    value_cols = [c for c in table.columns if c in df.columns]
    significant = _significance(table, df)

    def colour(frame: pd.DataFrame) -> pd.DataFrame:
        css = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for row in frame.index:
            for col in frame.columns:
                v = frame.at[row, col]
                if not isinstance(v, (int, float)) or math.isnan(v):
                    continue
                if significant.get((row, col)):
                    css.at[row, col] = f"color: {GREEN if v > 0 else RED}; font-weight: bold"
                else:  # the CI includes 0: no evidence of a change either way
                    css.at[row, col] = f"color: {GREY}"
        return css

    def flag(v: Any) -> str:
        if isinstance(v, str) and v.startswith("▼"):
            return f"background-color: #ffebe9; color: {RED}; font-weight: bold"
        if isinstance(v, str) and v.startswith("▲"):
            return f"color: {GREEN}"
        return ""

    ref = html.escape(table.reference)
    caption = (
        f"Headline metrics in points (0-100); Δ vs {ref} with paired bootstrap 95% CI "
        f"(coloured only when the CI excludes 0)."
    )
    if table.config.icl_n is not None and any(c.endswith("-shot") for c in table.columns):
        n_icl = table.config.icl_n
        caption += f" k-shot columns use the first {n_icl} test examples; their Δ is paired with the base on those."
    forgetting = forgetting_summary(table)
    if forgetting:
        caption += "<br>" + html.escape(forgetting).replace("\n", "<br>")
    styler = (
        df.style.format("{:.1f}", subset=value_cols, na_rep="–")
        .format("{:+.1f}", subset=delta_cols, na_rep="–")
        .format(escape="html", subset=[c for c in df.columns if c not in value_cols + delta_cols])
        .format_index(escape="html", axis=0)
        .format_index(escape="html", axis=1)
        .apply(colour, axis=None, subset=delta_cols)
        .map(flag, subset=flag_cols)
        .set_caption(caption)
        .set_table_styles(
            [
                {"selector": "caption", "props": "caption-side: bottom; text-align: left; padding-top: 6px"},
                {"selector": "th, td", "props": "padding: 3px 8px"},
            ]
        )
    )
    return styler


def _notes_html(table: ComparisonTable) -> str:
    if not table.notes:
        return ""
    return "<ul class='nbft-notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in table.notes) + "</ul>"


def to_text(table: ComparisonTable | Mapping[str, Any]) -> str:
    """A plain-text rendering for terminals and logs: the side-by-side table, prompt tokens, forgetting and notes
    (values rounded to 0.1 point, Δ with its sign)."""
    table = _table(table)
    df = table_frame(table).drop(columns=["role"])
    for c in df.columns:
        if df[c].dtype.kind == "f":
            sign = str(c).startswith("Δ ")
            df[c] = df[c].map(lambda x, sign=sign: _fmt(x, sign=sign))
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.max_colwidth", 40):
        out = [df.to_string()]
        tokens = prompt_tokens_frame(table)
        if len(tokens):
            out.append("\nMean prompt tokens:\n" + tokens.to_string())
    if table.config.icl_n is not None and any(c.endswith("-shot") for c in table.columns):
        out.append(
            f"(k-shot columns: the first {table.config.icl_n} test examples; their Δ is against the base on those.)"
        )
    forgetting = forgetting_summary(table)
    if forgetting:
        out.append("\nForgetting: " + forgetting)
    shares = label_frame(table)
    if not shares.empty:
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            out.append("\nPredicted labels (% of examples):\n" + shares.map(_fmt).to_string())
    if table.notes:
        out.append("\nNotes:\n" + "\n".join(f"- {n}" for n in table.notes))
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------- labels
def _label_source(entry: Mapping[str, Any], source: str | None) -> str | None:
    if source is not None:
        return source if source in entry else None
    return next((s for s in ("generate", "loglik") if s in entry), None)


def label_frame(
    table: ComparisonTable | Mapping[str, Any], *, source: str | None = None, k_shot: bool = False
) -> pd.DataFrame:
    """Predicted-label shares (% of examples) per classification task beside the references': one row per (task,
    label), a ``references`` column, then one column per model (``(no label)``: answers that name no label).

    ``source`` is ``"generate"`` (labels parsed from the generated answers) or ``"loglik"`` (the most likely label);
    by default the generated answers where there are any. A model with several runs shows the pooled shares.

    Example::

        label_frame(table)        # sentiment / neutral: references 34.0, base 30.0, tuned 51.0
    """
    table = _table(table)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for task, diag in table.results.get("diagnostics", {}).items():
        for col, entry in diag["models"].items():
            if col.endswith("-shot") and not k_shot:
                continue
            src = _label_source(entry, source)
            if src is None:
                continue
            d = entry[src]
            for label in d["predicted_labels"]:
                row = rows.setdefault((task, label), {})
                if label in d["reference_share"] and "references" not in row:
                    row["references"] = d["reference_share"][label]
                row[col] = d["predicted_share"][label]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["task", "label"])
    cols = ["references", *[c for c in table.columns if c in df.columns]]
    return df[[c for c in cols if c in df.columns]]


def confusion_frame(
    table: ComparisonTable | Mapping[str, Any], task: str, model: str | None = None, *, source: str | None = None
) -> pd.DataFrame:
    """The confusion matrix (scikit-learn's ``confusion_matrix``, counts) of ``model`` (default: the last column) on a
    classification task: rows are the references, columns the predictions then ``(no label)``.

    Example::

        confusion_frame(table, "sentiment", "tuned")
    """
    table = _table(table)
    diag = table.results.get("diagnostics", {}).get(task)
    if diag is None:
        known = list(table.results.get("diagnostics", {}))
        raise ValueError(f"no label diagnostics for task {task!r}: classification tasks with them are {known}")
    model = model or [c for c in table.columns if c in diag["models"]][-1]
    if model not in diag["models"]:
        from nbft._utils import did_you_mean

        raise ValueError(f"no model {model!r} in task {task!r}'s diagnostics.{did_you_mean(model, diag['models'])}")
    src = _label_source(diag["models"][model], source)
    if src is None:
        raise ValueError(f"{model!r} has no {source!r} predictions on {task!r}")
    d = diag["models"][model][src]
    frame = pd.DataFrame(d["confusion"], index=d["labels"], columns=d["predicted_labels"])
    frame.index.name, frame.columns.name = "reference", "predicted"
    return frame


def diagnostics_html(table: ComparisonTable | Mapping[str, Any]) -> str:
    """The label diagnostics as HTML: predicted-label shares beside the references' and, per classification task, the
    confusion matrix of every model ("" when no task is a classification task). Labels are HTML-escaped."""
    table = _table(table)
    shares = label_frame(table)
    if shares.empty:
        return ""
    parts = [
        "<h3>Predicted labels (% of examples)</h3>",
        shares.style.format("{:.0f}", na_rep="–").format_index(escape="html", axis=0)
        .format_index(escape="html", axis=1).to_html(),
    ]  # fmt: skip
    for task, diag in table.results.get("diagnostics", {}).items():
        models = [c for c in table.columns if c in diag["models"] and not c.endswith("-shot")]
        cells = []
        for col in models:
            src = _label_source(diag["models"][col], None)
            if src is None:
                continue
            frame = confusion_frame(table, task, col)
            how = "generated answers" if src == "generate" else "log-likelihood"
            cells.append(
                f"<div style='display:inline-block;margin-right:1.5em;vertical-align:top'><b>{html.escape(col)}</b> "
                f"({how})" + frame.style.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
                .to_html() + "</div>"
            )  # fmt: skip
        if cells:
            parts += [f"<h4>Confusion matrix · {html.escape(task)} (rows: references)</h4>", "".join(cells)]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------- figures
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


# --------------------------------------------------------------------------------------------------- weight change
_LAYER = re.compile(r"(?:layers|layer|h|block|blocks)\.(\d+)\.")


def _module_type(name: str) -> str:
    n = name.lower()
    if any(k in n for k in ("embed", "wte", "wpe", "lm_head", "shared")):
        return "embeddings"
    if "norm" in n or re.search(r"(^|\.)ln_?\w*\.", n):
        return "norms"
    if any(k in n for k in ("attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj")):
        return "attention"
    if any(k in n for k in ("mlp", "ffn", "feed_forward", "gate_proj", "up_proj", "down_proj", "fc", "dense")):
        return "mlp"
    return "other"


def _tensors(source: Any) -> Iterable[tuple[str, Any]]:
    """(name, tensor) pairs from a model, a state dict, or a folder/file of safetensors (read one at a time)."""
    if isinstance(source, (str, Path)):
        from safetensors import safe_open

        path = Path(source)
        files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"no *.safetensors files in {path}")
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    yield key, f.get_tensor(key)
        return
    if hasattr(source, "named_parameters"):
        yield from source.named_parameters()
        return
    yield from dict(source).items()


def weight_change(base: Any, tuned: Any, *, chunk_rows: int = 4096) -> pd.DataFrame:
    """Relative L2 change ‖W_tuned − W_base‖ / ‖W_base‖ per layer and module type, computed streaming.

    ``base`` and ``tuned`` are models, state dicts, or folders of safetensors (read one tensor at a time). The
    difference is formed ``chunk_rows`` rows at a time, so no third copy of the model is ever held in memory.
    Returns a tidy DataFrame: layer (int, -1 for non-layer parameters), module (attention, mlp, embeddings, norms,
    other), rel_change, n_params.

    Example::

        wc = weight_change(base_model, run.model)
        weight_change_heatmap(wc)
    """
    import torch

    base_map = dict(_tensors(base)) if not isinstance(base, (str, Path)) else None
    # named_parameters() lists a tied weight (embeddings = lm_head) once, so it is counted once.
    acc: dict[tuple[int, str], list[float]] = {}

    def lookup(name: str) -> Any:
        if base_map is not None:
            return base_map.get(name)
        return None

    if base_map is None:  # base on disk: stream base tensors, look tuned ones up by name
        tuned_map = dict(_tensors(tuned))
        pairs: Iterable[tuple[str, Any, Any]] = ((n, t, tuned_map.get(n)) for n, t in _tensors(base))
    else:
        pairs = ((n, lookup(n), t) for n, t in _tensors(tuned))
    with torch.no_grad():
        for name, b, t in pairs:
            if b is None or t is None or b.shape != t.shape:
                continue
            b2 = b.detach().reshape(b.shape[0], -1) if b.dim() > 1 else b.detach().reshape(1, -1)
            t2 = t.detach().reshape(b2.shape)
            diff_sq = base_sq = 0.0
            for i in range(0, b2.shape[0], chunk_rows):
                bb = b2[i : i + chunk_rows].float()
                tt = t2[i : i + chunk_rows].to(bb.device).float()
                diff_sq += float(torch.sum((tt - bb) ** 2))
                base_sq += float(torch.sum(bb**2))
            m = _LAYER.search(name)
            group = (int(m.group(1)) if m else -1, _module_type(name))
            slot = acc.setdefault(group, [0.0, 0.0, 0])
            slot[0] += diff_sq
            slot[1] += base_sq
            slot[2] += int(b.numel())
    if not acc:  # an empty table would read as "nothing changed"
        raise ValueError(
            "weight_change: the two models share no parameter of the same name and shape (different architectures "
            "or sizes?); compare a tuned model with the base it was trained from"
        )
    rows = [
        {"layer": layer, "module": module, "rel_change": math.sqrt(d) / math.sqrt(bsq) if bsq > 0 else math.nan,
         "n_params": int(npar)}
        for (layer, module), (d, bsq, npar) in sorted(acc.items())
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["layer", "module", "rel_change", "n_params"])


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


# --------------------------------------------------------------------------------------------------- examples
def word_diff_html(before: str, after: str) -> str:
    """Word-level diff as HTML: removed words struck through in red, added words in green (difflib).

    Example::

        word_diff_html("the cat sat", "the dog sat")
    """
    a, b = str(before).split(), str(after).split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(html.escape(" ".join(a[i1:i2])))
            continue
        if op in ("delete", "replace"):
            out.append(f'<del style="color:{RED}">{html.escape(" ".join(a[i1:i2]))}</del>')
        if op in ("insert", "replace"):
            out.append(f'<ins style="color:{GREEN};text-decoration:none">{html.escape(" ".join(b[j1:j2]))}</ins>')
    return " ".join(out)


def example_view(
    table: ComparisonTable | Mapping[str, Any],
    *,
    task: str | None = None,
    model: str | None = None,
    n: int = 20,
    as_html: bool = False,
) -> pd.DataFrame | str:
    """Per-example view sorted by the worst regression first: prompt text and hash, reference, outputs and scores,
    and a word-level diff of base vs ``model`` outputs.

    ``model`` defaults to the last (tuned) model. ``as_html=True`` returns an HTML table with the diffs rendered.

    Example::

        example_view(table, task="qa", n=10)
    """
    table = _table(table)
    ex = table.examples
    if task is not None:
        ex = ex[ex["task"] == task]
    others = [c for c in table.columns[1:] if f"output:{c}" in ex.columns and not c.endswith("-shot")]
    model = model or (others[-1] if others else None)
    base = table.reference
    cols = ["task", "example", "prompt", "prompt_hash", "reference", f"output:{base}", f"score:{base}"]
    if model:
        ex = ex.sort_values(f"delta:{model}", na_position="last", kind="stable")
        cols += [f"output:{model}", f"score:{model}", f"delta:{model}"]
        if "status" in ex.columns:
            cols.append("status")
    view = ex[[c for c in cols if c in ex.columns]].head(n).copy()
    if model:
        view["diff"] = [
            word_diff_html(b, t) for b, t in zip(view[f"output:{base}"], view[f"output:{model}"], strict=True)
        ]
    if not as_html:
        return view.reset_index(drop=True)

    # every cell but the diff (built from escaped words) is text from data or models: escape it
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return _fmt(v)
        return "–" if v is None else html.escape(str(v))

    view.columns = [html.escape(str(c)) for c in view.columns]
    formatters = {c: cell for c in view.columns if c != "diff"}
    return view.to_html(escape=False, index=False, na_rep="–", formatters=formatters)


# --------------------------------------------------------------------------------------------------- export
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
    df = table_frame(table).reset_index()
    for c in df.columns:
        if df[c].dtype.kind == "f":
            sign = str(c).startswith("Δ ")
            df[c] = df[c].map(lambda x, sign=sign: _fmt(x, sign=sign))
        elif df[c].dtype.kind == "O":  # task and model names: shown as text, never as markup
            df[c] = df[c].map(lambda x: _md(x) if isinstance(x, str) else x)
    df.columns = [_md(str(c)) for c in df.columns]
    text = df.to_markdown(index=False) if _has_tabulate() else _markdown_table(df)
    forgetting = forgetting_summary(table)
    if forgetting:  # it names the models and tasks: escaped like the table
        text += "\n\n**Forgetting.** " + "  \n".join(_md(line) for line in forgetting.splitlines())
    if table.notes:
        text += "\n\n**Notes.**\n" + "\n".join(f"- {_md(n)}" for n in table.notes)
    text += "\n\nValues are points (0-100); Δ CIs are paired bootstrap 95% intervals over the same test examples."
    if path is not None:
        from nbft._utils import atomic_path

        with atomic_path(path, kind="file") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
    return text


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def _md(text: str) -> str:
    """``text`` as literal markdown: HTML escaped (markdown renders it) and the characters that would format it
    (``|`` ends a table cell, ``*``/``_`` emphasise, backticks open code, brackets make links) backslash-escaped.

    Example:
        >>> print(_md("tuned|*v2*_<b>"))
        tuned\\|\\*v2\\*\\_&lt;b&gt;
    """
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False)).replace("\n", " ")


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
