"""The comparison table: :class:`ComparisonTable` (the results dict with its tidy views) and its renderings as
tables: the side-by-side frame and Styler, prompt-token costs, the forgetting summary, plain text, and the label
diagnostics (predicted-label shares, confusion matrices).

:func:`nbft.evaluate.compare_models` computes the results dict; this module only reads it.

Example::

    from nbft.report import side_by_side, to_text
    side_by_side(table)            # pandas Styler: tasks x (base, k-shot, tuned), Δ coloured
    print(to_text(table))
"""

from __future__ import annotations

import dataclasses
import functools
import html
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from nbft.report.style import GREEN, GREY, NO_LABEL, RED, _ci, _fmt

if TYPE_CHECKING:
    from pandas.io.formats.style import Styler

    from nbft.config import EvalConfig

__all__ = [
    "ComparisonTable",
    "confusion_frame",
    "diagnostics_html",
    "forgetting_summary",
    "label_frame",
    "prompt_tokens_frame",
    "side_by_side",
    "table_frame",
    "to_text",
]


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


def _table(table: ComparisonTable | Mapping[str, Any]) -> ComparisonTable:
    return table if isinstance(table, ComparisonTable) else ComparisonTable(table)


# --------------------------------------------------------------------------------------------------- tables
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
    rows.update(_text_probe_rows(table))  # "general text · loss per token" (lower is better), when measured
    # per task: the headline, its log-likelihood twin, then the no-label share
    order = {t: i for i, t in enumerate(table.tasks)}
    order.setdefault(_probe(table).get("row", ""), len(order))  # the probe's row comes last
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
    out = {((d["task"], d["metric"]), f"Δ {d['model']}"): bool(d["significant"]) for _, d in table.delta.iterrows()}
    out.update({((d["task"], d["metric"]), f"Δ {d['model']}"): bool(d["significant"]) for d in _probe(table)["deltas"]})
    return out


def _probe(table: ComparisonTable) -> dict[str, Any]:
    """The results' ``text_probe`` block (:mod:`nbft.evaluate.text_probe`), or an empty one."""
    return table.results.get("text_probe") or {"columns": {}, "deltas": []}


def _lower_is_better(table: ComparisonTable) -> set[tuple[str, str]]:
    """Rows whose Δ is good when negative (a loss): coloured and flagged the other way round."""
    probe = _probe(table)
    return {(probe["row"], probe["metric"])} if probe["columns"] else set()


def _text_cells(table: ComparisonTable, df: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text: points to 0.1, Δ with its sign, a loss per token (the general-text row) to 0.001."""
    df = df.copy()
    lower = [r for r in _lower_is_better(table) if r in df.index]
    for c in df.columns:
        if df[c].dtype.kind == "f":
            sign = str(c).startswith("Δ ")
            cells = df[c].map(lambda x, sign=sign: _fmt(x, sign=sign))
            for r in lower:
                cells[r] = _fmt(df.at[r, c], digits=3, sign=sign)
            df[c] = cells
    return df


def _text_probe_rows(table: ComparisonTable) -> dict[tuple[str, str], dict[str, Any]]:
    """The general-text probe's row: each column's loss per token, the base CI, and per tuned column Δ (a rise is
    the regression), in the same cells as a task's row."""
    probe = _probe(table)
    if not probe["columns"]:
        return {}
    row: dict[str, Any] = {"role": "general"}
    for col, c in probe["columns"].items():
        row[col] = c["loss"]
        if col == table.reference:
            row["CI (base)"] = f"[{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
    for d in probe["deltas"]:
        col = d["model"]
        row[f"Δ {col}"] = d["delta"]
        row[f"Δ CI {col}"] = f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        row[f"W/T/L {col}"] = f"{d['wins']}/{d['ties']}/{d['losses']}"
        if _n_seeds(d) > 1:
            row[f"seeds {col}"] = f"{d['seed_min']:+.3f} to {d['seed_max']:+.3f}"
        row[f"flag {col}"] = "▼ loss rose" if d["rose"] else ("▲ loss fell" if d["fell"] else "")
    return {(probe["row"], probe["metric"]): row}


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
    probe = _probe(table)
    for d in probe["deltas"]:  # the label-free probe: did the model stay a language model?
        verdict = "rose (worse)" if d["rose"] else "fell (better)" if d["fell"] else "no significant change"
        lines.append(
            f"{d['model']}: {probe['row']} loss per token {d['base']:.3f} → {d['value']:.3f} (Δ {d['delta']:+.3f} "
            f"[95% CI {d['ci_low']:+.3f}, {d['ci_high']:+.3f}]; lower is better): {verdict}"
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
    lower = _lower_is_better(table)

    def colour(frame: pd.DataFrame) -> pd.DataFrame:
        css = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for row in frame.index:
            for col in frame.columns:
                v = frame.at[row, col]
                if not isinstance(v, (int, float)) or math.isnan(v):
                    continue
                if significant.get((row, col)):
                    better = v < 0 if row in lower else v > 0  # a loss is better when it falls
                    css.at[row, col] = f"color: {GREEN if better else RED}; font-weight: bold"
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
    if _lower_is_better(table):
        caption += " The general-text row is a loss per token: lower is better, so a fall is green."
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
        .format("{:.3f}", subset=(list(lower), value_cols), na_rep="–")  # a loss per token needs more digits
        .format("{:+.3f}", subset=(list(lower), delta_cols), na_rep="–")
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


TEXT_WIDTH = 120  # columns of a terminal: to_text fits them; report.html and side_by_side keep every column


def _short_ci(text: str) -> str:
    """A CI for the terminal: ``'[+14.0, +43.0]'`` -> ``'[+14, +43]'`` (whole points when both bounds are 10 or
    more away from 0), ``'[-13.3, -3.9]'`` stays; ``'–'`` stays."""
    numbers = re.findall(r"[-+]?\d+\.\d+", text)
    if not numbers or any(abs(float(n)) < 10 for n in numbers):
        return text
    return re.sub(r"([-+]?)(\d+\.\d+)", lambda m: f"{m.group(1)}{float(m.group(2)):.0f}", text)


def text_frame(table: ComparisonTable | Mapping[str, Any]) -> pd.DataFrame:
    """The side-by-side table for a terminal (:func:`to_text`): each Δ with its short 95% CI and a ▲/▼ mark in one
    cell, wins/ties/losses for the trained columns only (a k-shot column's are in the full table). All cells are
    strings; :func:`table_frame` has the full-precision numbers and every column.

    Example::

        text_frame(table).loc[("sentiment", "accuracy"), "Δ tuned"]   # '+29.0 [+14, +43] ▲'
    """
    table = _table(table)
    full = table_frame(table)
    out = pd.DataFrame(index=full.index)
    lower = _lower_is_better(table)  # a loss per token (the general-text row) needs 3 decimals

    def cells(col: str, sign: bool = False) -> list[str]:
        return [_fmt(v, digits=3 if r in lower else 1, sign=sign) for r, v in full[col].items()]

    for col in (c for c in table.columns if c in full.columns):
        out[col] = cells(col)
        if col == table.reference and "CI (base)" in full.columns:
            out["95% CI"] = full["CI (base)"].map(_short_ci)
    for col in table.columns[1:]:
        if f"Δ {col}" not in full.columns:
            continue
        delta = cells(f"Δ {col}", sign=True)
        ci = full[f"Δ CI {col}"].map(_short_ci)
        mark = full[f"flag {col}"].map(lambda f: f[:1] if isinstance(f, str) and f[:1] in "▲▼" else "")
        out[f"Δ {col}"] = [d if d == "–" else f"{d} {c} {m}".rstrip() for d, c, m in zip(delta, ci, mark, strict=True)]
        if f"seeds {col}" in full.columns:
            out[f"seeds {col}"] = full[f"seeds {col}"]
        if not col.endswith("-shot") and f"W/T/L {col}" in full.columns:
            out[f"W/T/L {col}"] = full[f"W/T/L {col}"]
    return out


def _wrap(text: str, indent: str = "  ") -> str:
    """Each line of ``text`` wrapped to :data:`TEXT_WIDTH`, continuation lines indented."""
    import textwrap

    return "\n".join(
        textwrap.fill(line, TEXT_WIDTH, subsequent_indent=indent, break_on_hyphens=False) if line else line
        for line in text.splitlines()
    )


def to_text(table: ComparisonTable | Mapping[str, Any]) -> str:
    """A plain-text rendering for terminals and logs, at most :data:`TEXT_WIDTH` (120) characters a line: the
    side-by-side table (:func:`text_frame`; wider tables continue below), prompt tokens, forgetting and notes
    (values rounded to 0.1 point, Δ with its sign). ``side_by_side`` and ``export_html`` keep every column.

    Example::

        print(to_text(table))
    """
    table = _table(table)
    frame = text_frame(table)

    def block(df: pd.DataFrame) -> str:
        # pandas breaks a frame wider than line_width into blocks of columns, each ending in " \\"
        text = df.to_string(line_width=TEXT_WIDTH - 2, max_colwidth=40)
        return "\n".join(ln.rstrip() for ln in text.splitlines())

    out = [block(frame)]
    legend = "Δ vs " + table.reference + " with its paired 95% CI; ▲ gain, ▼ regression (the CI excludes 0)"
    if any(c.startswith("W/T/L ") for c in frame.columns):
        legend += "; W/T/L: examples won/tied/lost"
    out.append(_wrap(legend + ". Every column, with tenths: report.html (side_by_side)."))
    tokens = prompt_tokens_frame(table)
    if len(tokens):
        out.append("\nMean prompt tokens:\n" + block(tokens))
    if table.config.icl_n is not None and any(c.endswith("-shot") for c in table.columns):
        out.append(
            f"(k-shot columns: the first {table.config.icl_n} test examples; their Δ is against the base on those.)"
        )
    forgetting = forgetting_summary(table)
    if forgetting:
        out.append(_wrap("\nForgetting: " + forgetting))
    shares = label_frame(table)
    if not shares.empty:
        out.append("\nPredicted labels (% of examples):\n" + block(shares.map(_fmt)))
    if table.notes:
        out.append("\nNotes:\n" + _wrap("\n".join(f"- {n}" for n in table.notes)))
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
