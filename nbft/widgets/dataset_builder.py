"""DatasetBuilder: choose a task, its instruction phrasings, the data and how it is cut; see what the model will learn.

While you edit, a preview (debounced) is built from a sample of the data with the same function Build calls,
:func:`nbft.data.build_instruction_dataset`: the first training pairs with their line breaks, and the **label mask**
of one example as coloured tokens (prompt tokens carry no loss, completion tokens are learned, tokens cut by
``max_length`` struck through), with the truncation report. Build makes the full dataset, mixes in other tasks for
replay when asked (:func:`nbft.data.mix`), and shows token-length statistics and a histogram; Export writes it with
:func:`nbft.data.save_dataset`. Column mapping covers data whose columns are named differently from the template's
fields. Tasks whose data only the Hugging Face Hub has are marked, and refused with a clear message, when offline.

Example::

    from nbft.widgets import DatasetBuilder
    builder = DatasetBuilder(task="sentiment", tokenizer=tok)
    builder                        # pick templates, map columns, set max_length, Build, Export
    data = builder.dataset         # DatasetDict: train / validation / test
"""

from __future__ import annotations

import html
import logging
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbft._utils import OWNER_MARKER
from nbft.widgets._common import (
    LogArea,
    StaticResult,
    close_tree,
    display_with_static,
    image_html,
    natural_image,
    placeholder_html,
    set_image,
    set_tooltip,
    status_html,
    tidy,
)

__all__ = ["DatasetBuilder", "label_mask_html", "length_histogram"]

logger = logging.getLogger(__name__)

_WIDE = {"description_width": "110px"}
_HIST_EXAMPLES = 2000  # enough for the shape of a histogram; tokenizing all of a big set would only cost time
_SAME = "(same name)"
_TOKEN_BOX = "border-radius:3px;padding:0 1px;margin:0 1px 1px 0;display:inline-block;white-space:pre"
_STALE_CSS = "<style>.nbft-dataset-builder .nbft-stale { opacity: 0.4; filter: grayscale(1); }</style>"
_CELL = "white-space: pre-wrap; text-align: left; vertical-align: top; font-family: var(--jp-code-font-family, monospace); font-size: 12px"  # noqa: E501


# ------------------------------------------------------------------------------------------------- task data
def _load_task_data(task: str, n: int | None, seed: int) -> Any:
    """Raw examples of a built-in task's *train* split (its test split stays with the task for :func:`nbft.compare`):
    the one place DatasetBuilder reads a task's examples for the preview and the column list."""
    from nbft.evaluate import get_task

    train = get_task(task).load()["train"]
    if n is not None and n < len(train):
        train = train.shuffle(seed=seed).select(range(n))
    return train


def _build_task_data(task: str, templates: Any, n: int | None, seed: int) -> Any:
    """A built-in task's instruction data, built from its own train/validation splits (never its test split)."""
    from nbft.data import build_instruction_dataset

    return build_instruction_dataset(task=task, templates=templates, n=n, seed=seed)


def _hub_only_tasks() -> set[str]:
    """Tasks whose built-in data exists only on the Hugging Face Hub."""
    from nbft.sources import builtin_names

    return set(builtin_names()) - set(builtin_names(offline_only=True))


def _tasks() -> list[str]:
    from nbft.templates import list_templates

    return sorted({t.task for t in list_templates()})


def _template_options(task: str) -> list[tuple[str, str]]:
    from nbft.templates import list_templates

    options = []
    for t in list_templates(task):
        first = next((ln for ln in t.instruction.splitlines() if ln.strip() and "{{" not in ln), t.instruction)
        options.append((f"{t.id}: {textwrap.shorten(first.strip(), 72, placeholder=' …')}", t.id))
    return options


def _describe(source: Any) -> str:
    rows = getattr(source, "num_rows", None)
    if rows is None and hasattr(source, "__len__"):
        rows = len(source)
    if isinstance(rows, dict):  # a DatasetDict reports rows per split
        rows = sum(rows.values())
    return f"{type(source).__name__}" + (f", {rows} rows" if rows is not None else "")


# ------------------------------------------------------------------------------------------------- rendering
def _token_text(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    return text if text else tokenizer.convert_ids_to_tokens(token_id)


def label_mask_html(
    tokenizer: Any,
    prompt: str,
    completion: str,
    *,
    max_length: int = 1024,
    chat_template: bool = False,
    overflow: str = "truncate",
) -> str:
    """One example as coloured tokens: what training sees (grey: prompt, no loss; green: completion, learned;
    struck through: cut by ``max_length``), tokenized and cut by :func:`nbft.dataset_settings.training_cut`, the
    encoding and the cut of :func:`nbft.data.tokenize_for_training`.

    Example:
        >>> from nbft.models import tiny_random
        >>> _, tok = tiny_random()
        >>> "nbft-tok-completion" in label_mask_html(tok, "Say hi:\\n", "hi")
        True
    """
    from nbft.dataset_settings import training_cut

    cut = training_cut(
        tokenizer, prompt, completion, max_length=max_length, chat_template=chat_template, overflow=overflow
    )

    def spans(ids: Sequence[int], kind: str, style: str) -> str:
        out = []
        for tid in ids:
            text = _token_text(tokenizer, tid)
            shown = html.escape(text).replace("\n", "↵<br/>") or "∅"
            out.append(
                f'<span class="nbft-tok nbft-tok-{kind}" title="{kind} token {tid}" style="{style};{_TOKEN_BOX}">'
                f"{shown}</span>"
            )
        return "".join(out)

    cut_style = "background:#ffebe9;color:#cf222e;text-decoration:line-through"
    learned = "background:#dafbe1;color:#116329;font-weight:600"
    if cut.dropped:
        body = spans(cut.cut_prompt, "cut", cut_style) + spans(cut.cut_completion, "cut", cut_style)
    else:
        # a completion cut short keeps its EOS: the cut tokens sit between its start and its end
        tail = cut.completion[-1:] if cut.cut_completion else []
        head = cut.completion[:-1] if cut.cut_completion else cut.completion
        body = (
            spans(cut.cut_prompt, "cut", cut_style)
            + spans(cut.prompt, "prompt", "background:#eaeef2;color:#57606a")
            + spans(head, "completion", learned)
            + spans(cut.cut_completion, "cut", cut_style)
            + spans(tail, "completion", learned)
        )
    n_cut = len(cut.cut_prompt) + len(cut.cut_completion)
    if cut.dropped:
        cut_note = f"longer than max_length={max_length}: left out of training (overflow='drop'), {n_cut} tokens"
    else:
        cut_note = f"cut by max_length={max_length}: {n_cut}"
    no_answer = " · no answer token left, only the EOS" * (not cut.dropped and cut.answer_tokens == 0)
    legend = (
        f'<div class="nbft-mask-legend" style="font-size:12px;margin-bottom:4px">'
        f'<span style="background:#eaeef2;padding:0 4px">prompt: '
        f"{len(cut.prompt)} tokens, no loss (label −100)</span> "
        f'<span style="background:#dafbe1;padding:0 4px">completion: {len(cut.completion)} tokens, learned'
        f"{no_answer}</span>"
        + (f' <span style="background:#ffebe9;padding:0 4px">{cut_note}</span>' * bool(n_cut))
        + "</div>"
    )
    return (
        f'<div class="nbft-label-mask" data-prompt-tokens="{len(cut.prompt)}" '
        f'data-completion-tokens="{len(cut.completion)}" data-cut-tokens="{n_cut}" '
        f'style="line-height:1.9;font-family:var(--jp-code-font-family,monospace);font-size:12px">{legend}{body}</div>'
    )


def _preview_table(data: Any, rows: int) -> str:
    train = data["train"]
    n = min(rows, len(train))
    cells = []
    for i in range(n):
        ex = train[i]
        cells.append(
            "<tr>"
            + "".join(
                f'<td style="{_CELL}">{html.escape(str(ex.get(col, "")))}</td>'
                for col in ("template_id", "prompt", "completion")
            )
            + "</tr>"
        )
    head = "".join(f"<th style='text-align:left'>{c}</th>" for c in ("template", "prompt", "completion"))
    return (
        f"<b>First {n} training examples</b> (line breaks as the model sees them)"
        f"<div style='overflow-x:auto;max-width:100%'><table class='nbft-preview'><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(cells)}</tbody></table></div>"
    )


def stats_table(stats: Any) -> Any:
    """:func:`nbft.data.length_stats` turned on its side: one column per split (and task), one row per statistic,
    so it fits beside the preview."""
    frame = stats.copy()
    several_tasks = frame["task"].nunique() > 1 if "task" in frame else False
    frame.index = [f"{r.split} · {r.task}" if several_tasks else str(r.split) for r in frame.itertuples()]
    frame = frame.drop(columns=[c for c in ("split", "task") if c in frame])
    out = frame.T
    out.index = [name.replace("_", " ") for name in out.index]
    return out


def length_histogram(data: Any, tokenizer: Any, *, chat_template: bool = False) -> Any:
    """A seaborn histogram (matplotlib ``Figure``) of prompt + completion tokens per example, one colour per split.

    Tokens are counted with :func:`nbft.data.encode_pair`, as training counts them.
    """
    import pandas as pd
    import seaborn as sns
    from matplotlib.figure import Figure

    from nbft.data import encode_pair

    rows = []
    for split, ds in data.items():
        sample = ds.select(range(min(len(ds), _HIST_EXAMPLES)))
        for prompt, completion in zip(sample["prompt"], sample["completion"]):
            p, c = encode_pair(tokenizer, prompt, completion, chat_template)
            rows.append({"split": split, "tokens": len(p) + len(c)})
    fig = Figure(figsize=(6, 2.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if rows:
        sns.histplot(pd.DataFrame(rows), x="tokens", hue="split", multiple="stack", bins=30, ax=ax)
    ax.set_xlabel("prompt + completion tokens per example")
    ax.set_title("Token lengths (choose max_length above the long tail)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------------------- the panel
class DatasetBuilder(widgets.VBox):
    """Pick task, templates, source, columns, split, max_length and replay; preview live; Build; Export.

    Args:
        source: your own data (anything :func:`nbft.data.load_source` takes: DataFrame, list of dicts, file path,
            ``datasets.Dataset``). Left out: the task's built-in data, or a file path / Hub name typed into the
            *source* box.
        task: the task selected at first.
        tokenizer: counts tokens for the label mask, truncation report, statistics and histogram (left out: none).
        n: how many examples to keep (0: all).
        split: train, validation and test fractions.
        seed: the same seed gives the same dataset.
        max_length: the training ``max_length`` to check examples against.
        chat_template: wrap prompts in the tokenizer's chat template (when it has one).
        overflow: what training does with longer examples: ``"truncate"`` (cut the prompt's start) or ``"drop"``.
        debounce: seconds of quiet after an edit before the preview is rebuilt (``0``: at once, in the same thread;
            ``None``: no live preview, only :meth:`refresh` and Build).
        preview_sample: how many examples the live preview is built from.

    Attributes:
        dataset: the last built ``DatasetDict`` (``None`` before Build). It carries the builder's tokenization
            settings (:attr:`settings`: template ids, chat format, ``max_length``, overflow), which
            ``nbft.finetune``, ``TrainPanel``, ``compare`` and the ``ForgettingMonitor`` follow
            (:mod:`nbft.dataset_settings`). truncation: the last truncation report (per task too).

    The label mask and the truncation line always show the current settings (they are computed by training's own
    encoding and cut). After a Build, an edit marks the built views (mixture, statistics, histogram) as out of
    date until the next Build; switching the task clears the previous task's example at once.

    Example::

        builder = DatasetBuilder(my_dataframe, task="sentiment", tokenizer=tok)
        builder.build()              # what the Build button does; returns builder.dataset
        builder.export("data/sentiment", "jsonl")
    """

    def __init__(
        self,
        source: Any = None,
        *,
        task: str = "sentiment",
        tokenizer: Any = None,
        n: int = 1000,
        split: tuple[float, float, float] = (0.8, 0.1, 0.1),
        seed: int = 0,
        max_length: int = 512,
        chat_template: bool = False,
        overflow: str = "truncate",
        debounce: float | None = 0.4,
        preview_sample: int = 200,
        preview_rows: int = 5,
    ) -> None:
        from nbft.config import DataConfig, check_int

        tasks = _tasks()
        if task not in tasks:
            from nbft._utils import unknown

            raise unknown("task", str(task), tasks)
        n = check_int("DatasetBuilder(n=...)", n, 0, "the number of examples, e.g. n=1000 (0: all)")
        seed = check_int("DatasetBuilder(seed=...)", seed, 0, "e.g. seed=0")
        split = DataConfig(split=split).split  # three fractions summing to 1
        if not 0.5 <= split[0] <= 0.95:
            raise ValueError(f"DatasetBuilder(split=...): the train share must be in [0.5, 0.95], got {split[0]}")
        max_length = check_int("DatasetBuilder(max_length=...)", max_length, 2, "e.g. max_length=512 (in tokens)")
        if overflow not in ("truncate", "drop"):
            raise ValueError(f"DatasetBuilder(overflow=...): use 'truncate' or 'drop', not {overflow!r}")
        if not isinstance(chat_template, bool):
            raise TypeError(f"DatasetBuilder(chat_template=...) must be True or False, not {chat_template!r}")
        self.source = source
        self.tokenizer = tokenizer
        self.dataset: Any = None
        self.stats: Any = None
        self.truncation: Any = None
        self.debounce = debounce
        self.preview_sample = preview_sample
        self.preview_rows = preview_rows
        self.log_area = LogArea()
        self.static = StaticResult()
        self._cache: dict[Any, Any] = {}
        self._lock = threading.RLock()  # preview (timer thread) and Build (click) never compute at once
        self._timer: threading.Timer | None = None
        self._generation = 0
        self._preview_data: Any = None
        self._offline: bool | None = None
        self._hub_only = _hub_only_tasks()
        self._written: set[str] = set()  # what this builder exported since it was opened: it may replace those
        self._auto_path = ""  # the export path the builder filled in (it follows the task until the user edits it)
        self._built_task: str | None = None
        self._built_key: Any = None  # the settings the built dataset was made with
        self._shown_key: Any = None  # the settings the preview, mask and truncation line were made with
        self._confirm: tuple[str, str] | None = None  # the export the next click replaces, once the user was asked

        self.task = widgets.Dropdown(
            options=self._task_options(tasks), value=task if task in tasks else tasks[0], description="task"
        )
        self.templates = widgets.SelectMultiple(
            description="templates", rows=4, layout={"width": "100%", "max_width": "680px"}
        )
        given = f"your data ({_describe(source)})" if source is not None else ""
        self.source_text = widgets.Text(
            value="",
            placeholder=given or "empty: the task's built-in data; or a file path / Hub dataset name",
            description="source",
            continuous_update=False,
            layout={"width": "100%", "max_width": "680px"},
        )
        self.columns_box = widgets.HBox([], layout=widgets.Layout(flex_flow="row wrap"))
        self.column_maps: dict[str, widgets.Dropdown] = {}
        self.n = widgets.IntText(value=n, description="examples (0=all)", layout={"width": "220px"})
        self.seed = widgets.IntText(value=seed, description="seed", layout={"width": "220px"})
        self.train_frac = widgets.FloatSlider(
            value=split[0], min=0.5, max=0.95, step=0.05, description="train", continuous_update=False
        )
        self.val_frac = widgets.FloatSlider(
            value=split[1], min=0.0, max=0.3, step=0.025, description="validation", continuous_update=False
        )
        self.test_label = widgets.Label()
        self.max_length = widgets.IntText(value=max_length, description="max_length", layout={"width": "220px"})
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if chat_template and not has_chat:
            raise ValueError(
                "DatasetBuilder(chat_template=True) but the tokenizer has no chat template; use an instruct model's "
                "tokenizer or chat_template=False"
            )
        self.chat_template = widgets.Checkbox(value=chat_template, description="chat template", disabled=not has_chat)
        self.overflow = widgets.Dropdown(
            options=[("truncate (cut the prompt's start)", "truncate"), ("drop the example", "drop")],
            value=overflow,
            description="overflow",
            layout={"width": "300px"},
        )
        self.example = widgets.IntSlider(value=0, min=0, max=max(0, preview_rows - 1), description="example")
        self.replay = widgets.FloatSlider(
            value=0.0, min=0.0, max=0.5, step=0.05, description="replay share", continuous_update=False
        )
        self.replay_tasks = widgets.SelectMultiple(description="replay tasks", rows=3, layout={"width": "320px"})
        for w in (
            self.task, self.templates, self.source_text, self.n, self.seed, self.train_frac, self.val_frac,
            self.max_length, self.example, self.replay, self.replay_tasks,
        ):  # fmt: skip
            w.style = _WIDE
        self.build_button = widgets.Button(description="Build", icon="cogs", button_style="primary")
        self.status_label = widgets.HTML(status_html("ready", "edit the settings: the preview follows"))
        self.status_label.add_class("nbft-builder-status")
        self.export_format = widgets.Dropdown(options=["jsonl", "parquet", "disk"], value="jsonl", description="export")
        self.export_path = widgets.Text(value="", placeholder="data/<task>", layout={"width": "300px"})
        self.export_button = widgets.Button(description="Export", icon="download", disabled=True)
        self.export_label = widgets.HTML("")
        self.export_format.style = _WIDE
        self.export_path.description = "to folder"
        for w, tip in (
            (self.task, "The task: its instruction templates and, without your own data, its built-in data"),
            (self.templates, "Instruction phrasings: each example gets one of those selected (Ctrl/Shift+click)"),
            (self.source_text, "Your data: a file path or a Hub dataset name; empty: the task's built-in data"),
            (self.n, "How many examples to keep (0: all of them)"),
            (self.seed, "The same seed gives the same sample, split and template choice"),
            (self.train_frac, "Share of the examples for training"),
            (self.val_frac, "Share of the examples for validation; the rest is the test split"),
            (self.max_length, "Training max_length in tokens: longer examples are cut (the mask shows where)"),
            (self.chat_template, "Wrap prompts in the tokenizer's chat template, as training will"),
            (self.overflow, "What training does with an example longer than max_length"),
            (self.example, "Which preview example the label mask shows"),
            (self.replay, "Share of the training mix taken from other tasks, against forgetting"),
            (self.replay_tasks, "The tasks replayed in the training mix (Ctrl/Shift+click for several)"),
            (self.build_button, "Build the full dataset: train, validation and test splits"),
            (self.export_format, "File format of the export"),
            (self.export_path, "Folder to write the dataset to (default: data/<task>)"),
            (self.export_button, "Write the built dataset to the folder"),
        ):
            set_tooltip(w, tip)

        self.preview = widgets.HTML(placeholder_html("The first training pairs appear here."))
        self.mask = widgets.HTML("")
        self.truncation_label = widgets.HTML("")
        self.stats_html = widgets.HTML("", layout=widgets.Layout(overflow="auto", max_width="100%"))
        self.mix_html = widgets.HTML("")
        self.histogram = natural_image()
        self.stale_note = widgets.HTML("")
        self.stale_note.add_class("nbft-stale-note")
        self._stale_css = widgets.HTML(_STALE_CSS, layout=widgets.Layout(height="0px"))

        self.task.observe(lambda _: self._task_changed(), names="value")
        self.templates.observe(lambda _: self._columns_changed(), names="value")
        self.source_text.observe(lambda _: self._columns_changed(), names="value")
        for w in (
            self.n, self.seed, self.train_frac, self.val_frac, self.max_length, self.chat_template, self.overflow,
        ):  # fmt: skip
            w.observe(lambda _: self._schedule(), names="value")
        for w in (self.replay, self.replay_tasks):  # Build-only settings: the built views go out of date
            w.observe(lambda _: self._mark_stale(), names="value")
        self.train_frac.observe(lambda _: self._show_test(), names="value")
        self.val_frac.observe(lambda _: self._show_test(), names="value")
        self.example.observe(lambda _: self._safely(self._show_mask_quietly, clear=False), names="value")
        self.build_button.on_click(lambda _: self._safely(self.build))
        self.export_button.on_click(lambda _: self._safely(self._export_clicked, clear=False))
        self.export_path.observe(lambda _: self._reset_confirm(), names="value")
        self.export_format.observe(lambda _: self._reset_confirm(), names="value")

        self._updating = True  # filling the controls below must not start three previews
        self._fill_templates()
        self._fill_replay_tasks()
        self._show_test()
        self._updating = False
        super().__init__(
            [
                widgets.HBox([self.task, self.n, self.seed]),
                self.templates,
                self.source_text,
                self.columns_box,
                widgets.HBox([self.train_frac, self.val_frac, self.test_label]),
                widgets.HBox([self.max_length, self.chat_template, self.overflow, self.example]),
                widgets.HBox([self.replay, self.replay_tasks]),
                widgets.HBox([self.build_button, self.status_label]),
                self.stale_note,
                widgets.HBox([self.export_format, self.export_path, self.export_button, self.export_label]),
                self.preview,
                self.mask,
                self.truncation_label,
                self.mix_html,
                self.stats_html,
                self.histogram,
                self.log_area.widget,
                self.static.style_widget,
                self._stale_css,
            ]
        )
        self.add_class("nbft-dataset-builder")
        self.add_class("nbft-panel")
        tidy(self)
        self._columns_changed()

    # ------------------------------------------------------------------------------------------- state
    @property
    def split(self) -> tuple[float, float, float]:
        train, val = round(self.train_frac.value, 4), round(self.val_frac.value, 4)
        return train, val, round(1.0 - train - val, 4)

    @property
    def settings(self) -> Any:
        """The tokenization settings the controls hold now (:class:`nbft.dataset_settings.TokenizationSettings`):
        what Build attaches to :attr:`dataset`, and what the label mask and truncation line show."""
        from nbft.dataset_settings import TokenizationSettings

        return TokenizationSettings(
            task=self.task.value,
            templates=tuple(self.templates.value),
            chat_template=bool(self.chat_template.value),
            max_length=max(2, int(self.max_length.value)),
            overflow=self.overflow.value,
        )

    def _key(self) -> tuple[Any, ...]:
        """Every setting a built dataset depends on: when it changes, what Build showed is out of date."""
        return (
            self.task.value, tuple(self.templates.value), self.source_text.value.strip(),
            tuple(sorted(self.columns.items())), self.n.value, self.seed.value, self.split, self.max_length.value,
            self.chat_template.value, self.overflow.value, self.replay.value, tuple(self.replay_tasks.value),
        )  # fmt: skip

    def _preview_key(self) -> tuple[Any, ...]:
        return _preview_part(self._key())

    @property
    def out_of_date(self) -> bool:
        """True when the settings changed since the last Build (the built views are then marked so)."""
        return self.dataset is not None and self._key() != self._built_key

    def _mark_stale(self) -> None:
        """Dim what no longer follows the settings, and say so: the built views after an edit (until Build), the
        preview while its update is pending."""
        if getattr(self, "_updating", False):
            return
        stale_build = self.out_of_date
        for w in (self.stats_html, self.mix_html, self.histogram):
            (w.add_class if stale_build else w.remove_class)("nbft-stale")
        stale_preview = self._shown_key is not None and self._shown_key != self._preview_key()
        for w in (self.preview, self.mask, self.truncation_label):
            (w.add_class if stale_preview else w.remove_class)("nbft-stale")
        notes = []
        if stale_build:
            notes.append(
                "settings changed since Build — press Build (the statistics, histogram and mixture below, and "
                "builder.dataset, are still the earlier build's)"
            )
        if stale_preview:
            notes.append(
                "the preview is updating to the new settings"
                if self.debounce is not None
                else "the preview is from earlier settings — press Build (or call builder.refresh())"
            )
        self.stale_note.value = (
            f"<div class='nbft-out-of-date' style='color:#9a6700;font-weight:600'>{html.escape('; '.join(notes))}</div>"
            if notes
            else ""
        )

    @property
    def columns(self) -> dict[str, str]:
        """``{template field: data column}`` for the fields mapped to a differently named column."""
        return {f: d.value for f, d in self.column_maps.items() if d.value not in (None, _SAME) and d.value != f}

    def _is_offline(self) -> bool:
        if self._offline is None:
            from nbft._registry import hub_reachable

            self._offline = not hub_reachable()
        return self._offline

    def _task_options(self, tasks: list[str]) -> list[tuple[str, str]]:
        options = []
        for t in tasks:
            label = t
            if t in self._hub_only and self.source is None:
                label += " · needs the Hugging Face Hub" + (" (offline now)" if self._is_offline() else "")
            options.append((label, t))
        return options

    def _needs_hub_offline(self) -> bool:
        return (
            self.task.value in self._hub_only
            and self.source is None
            and not self.source_text.value.strip()
            and self._is_offline()
        )

    def _fill_templates(self) -> None:
        options = _template_options(self.task.value)
        self.templates.options = options
        self.templates.value = tuple(v for _, v in options)  # all phrasings: instruction diversity, as in FLAN

    def _fill_replay_tasks(self) -> None:
        others = [t for t in _tasks() if t != self.task.value and not (t in self._hub_only and self._is_offline())]
        self.replay_tasks.options = others
        self.replay_tasks.value = tuple(t for t in ("qa", "reply") if t in others)[:1]

    def _show_test(self) -> None:
        test = self.split[2]
        self.test_label.value = f"test {test:.3f}" if test > 0 else "test: none left, lower train or validation"

    def _task_changed(self) -> None:
        # never show the previous task's example as current: clear it now, the new task's preview follows
        self._preview_data = None
        self.preview.value = placeholder_html(f"The {self.task.value} task's first training pairs appear here.")
        self.mask.value = ""
        self.truncation_label.value = ""
        self._shown_key = None
        self._updating = True
        try:
            self._fill_templates()
            self._fill_replay_tasks()
        finally:
            self._updating = False
        self._follow_task()
        self._columns_changed()

    def _columns_changed(self) -> None:
        """Rebuild the column mapping for the selected templates' fields, then the preview."""
        if self._updating:
            return
        from nbft.templates import get_template

        fields: list[str] = []
        for tid in self.templates.value:
            t = get_template(tid)
            for f in (*t.fields, t.target):
                if f not in fields:
                    fields.append(f)
        try:
            columns = list(self._source_columns())
        except Exception:  # the source itself is the problem: the preview will say why
            columns = []
        old = {f: d.value for f, d in self.column_maps.items()}
        self.column_maps = {}
        for f in fields:
            options = [_SAME, *[c for c in columns if c != f]]
            value = old.get(f, _SAME)
            dropdown = widgets.Dropdown(
                options=options, value=value if value in options else _SAME, description=f"{f} ←",
                style={"description_width": "initial"}, layout=widgets.Layout(width="250px"),
            )  # fmt: skip
            set_tooltip(dropdown, f"The data column that holds the template field {f!r}")
            dropdown.observe(lambda _: self._schedule(), names="value")
            self.column_maps[f] = dropdown
        missing = [f for f in fields if f not in columns] if columns else []
        hint = (
            widgets.HTML(f"<i style='color:#9a6700'>map: {', '.join(missing)} (the data has {', '.join(columns)})</i>")
            if missing
            else widgets.HTML("<span style='color:#57606a;font-size:12px'>columns</span>")
        )
        self.columns_box.children = [hint, *self.column_maps.values()]
        self._schedule()

    # ------------------------------------------------------------------------------------------- data
    def _source_columns(self) -> list[str]:
        if not (self.source_text.value.strip() or self.source is not None):
            return []  # the task's own data has the template's field names: nothing to map, nothing to load yet
        data = self._given()
        return list(getattr(data, "column_names", None) or _columns_of(data))

    def _given(self) -> Any:
        from nbft.data import load_source

        typed = self.source_text.value.strip()
        key = ("given", typed)
        if key not in self._cache:
            self._cache[key] = load_source(typed) if typed else load_source(self.source)
        return self._cache[key]

    def _task_data(self, task: str, n: int | None) -> Any:
        if task in self._hub_only and self._is_offline():
            raise RuntimeError(
                f"the {task!r} task's built-in data is on the Hugging Face Hub, which this machine cannot reach: "
                "type a file path into 'source', pass your own data (DatasetBuilder(my_data, task=...)), or choose "
                "an offline task (sentiment, qa, reply, entities)"
            )
        key = ("task", task, n, self.seed.value)
        if key not in self._cache:
            self._cache[key] = _load_task_data(task, n, self.seed.value)
        return self._cache[key]

    def _examples(self) -> int | None:
        """The examples field as the API takes it (0 = all: ``None``), checked in the field's own words."""
        value = self.n.value
        if value < 0:
            raise ValueError(
                f"the examples (0=all) field is {value}: type how many examples to keep, or 0 = all of them"
            )
        return value or None

    def load(self, sample: int | None = None) -> Any:
        """The examples Build starts from: the typed path/Hub name, else the given source, else the task's data."""
        if self.source_text.value.strip() or self.source is not None:
            data = self._given()
            if sample is not None and hasattr(data, "select") and len(data) > sample:
                data = data.select(range(sample))
            return data
        n = self._examples()
        return self._task_data(self.task.value, min(n, sample) if n and sample else (sample or n))

    def _build(self, sample: int | None) -> Any:
        from nbft.data import build_instruction_dataset

        if not self.templates.value:
            raise ValueError("select at least one template")
        if not (self.source_text.value.strip() or self.source is not None):
            # Built-in data: the task's own splits, so nothing built here is ever scored by compare().
            n = self._examples()
            if sample is not None:
                n = min(n, sample) if n else sample
            return _build_task_data(self.task.value, list(self.templates.value), n, self.seed.value)
        return build_instruction_dataset(
            self.load(sample),
            list(self.templates.value),
            task=self.task.value,
            split=self.split,
            seed=self.seed.value,
            columns=self.columns or None,
            max_examples=self._examples() if sample is None else None,
        )

    # ------------------------------------------------------------------------------------------- preview
    def _schedule(self) -> None:
        if self._updating:
            return
        self._mark_stale()
        if self.debounce is None:
            return
        self._generation += 1
        if self._timer is not None:
            self._timer.cancel()
        if not self.debounce:
            self._safely(self.refresh)
            return
        self._timer = threading.Timer(self.debounce, self._refresh_if_current, args=(self._generation,))
        self._timer.daemon = True
        self._timer.start()

    def _refresh_if_current(self, generation: int) -> None:
        if generation == self._generation:
            self._safely(self.refresh)

    def refresh(self) -> None:
        """Rebuild the live preview now from a sample of the data (what every edit does after ``debounce``)."""
        from nbft._quiet import quiet

        generation = self._generation
        key = self._key()
        if self._needs_hub_offline():
            self._task_data(self.task.value, None)  # raises the clear offline message
        self.build_button.disabled = False
        # the whole preview is quiet: the truncation report tokenizes too (a "tokenize" bar under the builder)
        with self._lock, quiet(sink=self.log_area.add):
            data = self._build(self.preview_sample)
            if generation != self._generation:
                return  # an edit came in meanwhile; its own preview follows
            self._preview_data = data
            self._shown_key = _preview_part(key)
            self.preview.value = _preview_table(data, self.preview_rows)
            self.example.max = max(0, min(self.preview_rows, len(data["train"])) - 1)
            self._show_mask()
            self._show_truncation(data, sample=True)
        self._mark_stale()
        sizes = ", ".join(f"{name} {len(ds)}" for name, ds in data.items())
        self._set_status("preview", f"from {self.preview_sample} examples ({sizes}); Build makes the full dataset")

    def _show_mask_quietly(self) -> None:
        from nbft._quiet import quiet

        with quiet(sink=self.log_area.add):
            self._show_mask()

    def _show_mask(self) -> None:
        # the built dataset while it is current, else the preview of the current settings (never an older build's)
        data = self.dataset if self.dataset is not None and not self.out_of_date else self._preview_data
        if data is None or self.tokenizer is None or not len(data["train"]):
            self.mask.value = ""
            return
        ex = data["train"][min(self.example.value, len(data["train"]) - 1)]
        self.mask.value = (
            f"<b>What training sees</b> (example {self.example.value}, template {html.escape(ex['template_id'])})"
            + label_mask_html(
                self.tokenizer,
                ex["prompt"],
                ex["completion"],
                max_length=max(2, self.max_length.value),
                chat_template=self.chat_template.value,
                overflow=self.overflow.value,
            )
        )

    def _show_truncation(self, data: Any, sample: bool) -> None:
        if self.tokenizer is None:
            self.truncation_label.value = ""
            return
        from nbft.data import tokenize_for_training

        if self.max_length.value < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {self.max_length.value}")
        _, report = tokenize_for_training(
            data["train"], self.tokenizer, max_length=self.max_length.value,
            chat_template=self.chat_template.value, overflow=self.overflow.value, return_report=True,
        )  # fmt: skip
        self.truncation = report
        colour = "#9a6700" if report.n_over or report.n_no_answer else "#1a7f37"
        scope = " (in the preview sample)" if sample else ""
        per_task = "".join(
            f"<li class='nbft-truncation-task' data-task='{html.escape(task)}'>{html.escape(task)}: "
            f"{html.escape(report.task_line(task))}</li>"
            for task in report.per_task
        )
        self.truncation_label.value = (
            f"<div class='nbft-truncation' style='color:{colour}'>max_length: "
            f"{html.escape(str(report).split('; per task: ')[0])}{scope}"
            + (f"<ul style='margin:2px 0'>{per_task}</ul>" if len(report.per_task) > 1 else "")
            + "</div>"
        )

    # ------------------------------------------------------------------------------------------- build
    def build(self) -> Any:
        """Build the full dataset with :func:`nbft.data.build_instruction_dataset` (what Build does) and show it."""
        from nbft._quiet import quiet
        from nbft.data import length_stats, mix, mix_report
        from nbft.dataset_settings import with_settings

        self._generation += 1  # a pending preview is out of date now
        key = self._key()
        settings = self.settings
        self._set_status("building", "")
        with self._lock, quiet(sink=self.log_area.add):
            data = self._build(None)
            mixed_html = ""
            if self.replay.value > 0:
                if not self.replay_tasks.value:
                    raise ValueError("replay share > 0 needs at least one replay task; select one or set it to 0")
                parts = {self.task.value: data["train"]}
                for other in self.replay_tasks.value:
                    other_data = self._build_other(other)
                    parts[other] = other_data["train"]
                data["train"] = mix(parts, replay=self.replay.value, seed=self.seed.value)
                mixed_html = "<b>Training mixture</b>" + mix_report(data["train"]).to_html(
                    index=False, float_format=lambda x: f"{x:.1%}", classes="nbft-mix"
                )
            data = with_settings(data, settings)  # finetune, TrainPanel, compare and the monitor follow them
            self.dataset = data
            self._built_task = self.task.value
            self._built_key = key
            self._shown_key = _preview_part(key)
            self._preview_data = data
            self.preview.value = _preview_table(data, self.preview_rows)
            self.mix_html.value = mixed_html
            self._show_mask()
            hist_png = None
            if self.tokenizer is not None:
                from nbft.widgets._figures import png

                self._show_truncation(data, sample=False)
                self.stats = length_stats(data, self.tokenizer, chat_template=self.chat_template.value)
                self.stats_html.value = "<b>Token lengths</b>" + stats_table(self.stats).astype(float).to_html(
                    classes="nbft-length-stats", float_format=_number
                )
                hist_png = png(length_histogram(data, self.tokenizer, chat_template=self.chat_template.value))
                set_image(self.histogram, hist_png)
        self._mark_stale()
        sizes = ", ".join(f"{name} {len(ds)}" for name, ds in data.items())
        self._set_status("built", f"{sizes} · {settings.describe()}")
        self.export_button.disabled = False
        self._follow_task()
        body = (
            f"<div class='nbft-summary'><b>built</b> {html.escape(sizes)}</div>"
            + self.preview.value
            + self.mask.value
            + self.truncation_label.value
            + self.mix_html.value
            + self.stats_html.value
            + (image_html(hist_png, "token-length histogram") if hist_png is not None else "")
        )
        self.static.update(body + self.log_area.html(), f"built: {sizes}", png=hist_png)
        return data

    def _build_other(self, task: str) -> Any:
        if task in self._hub_only and self._is_offline():
            self._task_data(task, None)  # raises the offline error that names what to do
        return _build_task_data(task, None, self._examples(), self.seed.value)

    def close(self) -> None:
        """Close the builder and let go of its data (the built dataset, the loaded sources)."""
        if getattr(self, "_timer", None) is not None:  # a constructor that refused its arguments set none
            self._timer.cancel()
        close_tree(self)
        self.dataset = self._preview_data = self.source = None
        if getattr(self, "_cache", None) is not None:
            self._cache.clear()
        super().close()

    def static_html(self) -> str:
        """The HTML that the saved notebook keeps for this panel (preview, label mask, statistics, histogram)."""
        return self.static.html

    def export(self, path: str | None = None, format: str | None = None, *, overwrite: bool = False) -> Any:
        """Write the built dataset with :func:`nbft.data.save_dataset` (what Export does); returns the path.

        The path defaults to ``data/<task>`` and follows the task until you edit it. An export never replaces what
        this builder did not write since it was opened (another dataset, a file, a folder) unless
        ``overwrite=True``; the Export button asks first (it turns into *Replace*).

        Example::

            builder.export("data/sentiment", "jsonl")
        """
        from nbft._quiet import quiet
        from nbft.data import save_dataset

        if self.dataset is None:
            raise RuntimeError("nothing to export yet: click Build first")
        if self._built_task is not None and self._built_task != self.task.value:
            raise RuntimeError(
                f"the built dataset is the {self._built_task!r} task's, but the task is now {self.task.value!r}: "
                "click Build first (or set the task back)"
            )
        if self.out_of_date:
            raise RuntimeError(
                "the settings changed since Build: click Build first, so the export holds what the builder shows"
            )
        target = path or self.export_path.value.strip() or f"data/{self.task.value}"
        if not overwrite and _key(target) not in self._written and _occupied(Path(target).expanduser()):
            raise ExportWouldReplace(
                f"{target} already holds {_what_is_there(Path(target).expanduser())} that this builder did not write "
                "since it was opened: choose another path, or replace it with export(..., overwrite=True)"
            )
        with quiet(sink=self.log_area.add):
            written = save_dataset(self.dataset, target, format or self.export_format.value, overwrite=overwrite)
        self._written.add(_key(target))
        self.export_label.value = f"<span style='color:#1a7f37'>wrote {html.escape(str(written))}</span>"
        self.static.finish(f"Exported to {written}. Run this cell again for the builder's controls.")
        return written

    def _export_clicked(self) -> None:
        """Export (the button); a target this builder did not write is replaced only on a second, confirming click."""
        target = self.export_path.value.strip() or f"data/{self.task.value}"
        asked = (target, self.export_format.value)
        confirmed = self._confirm == asked
        self._reset_confirm()
        folder = Path(target).expanduser()
        # a confirmed click replaces a file or a folder nbft wrote; a folder of the user's files stays refused
        replaceable = folder.is_file() or (folder / OWNER_MARKER).is_file()
        try:
            self.export(overwrite=confirmed and replaceable)
        except ExportWouldReplace:
            if not replaceable:
                raise
            self._confirm = asked
            self.export_button.description = "Replace"
            self.export_button.button_style = "warning"
            self.export_label.value = (
                f"<span style='color:#9a6700'>{html.escape(target)} already holds "
                f"{html.escape(_what_is_there(folder))} that this builder did not write: click Replace to replace "
                "it, or edit the path</span>"
            )

    def _reset_confirm(self) -> None:
        self._confirm = None
        self.export_button.description = "Export"
        self.export_button.button_style = ""

    def _follow_task(self) -> None:
        """The export path follows the task (``data/<task>``) until the user types another."""
        if self.export_path.value.strip() in ("", self._auto_path):
            self._auto_path = f"data/{self.task.value}"
            self.export_path.value = self._auto_path

    # ------------------------------------------------------------------------------------------- helpers
    def _clear(self) -> None:
        self._preview_data = None
        self.dataset = None
        self._built_key = self._shown_key = None
        self._mark_stale()
        self.preview.value = ""
        self.mask.value = ""
        self.truncation_label.value = ""
        self.mix_html.value = ""
        self.stats_html.value = ""
        self.histogram.layout.display = "none"
        self.export_button.disabled = True

    def _safely(self, action: Any, clear: bool = True) -> None:
        try:
            action()
        except Exception as exc:
            logger.debug("DatasetBuilder: %s", exc)
            if clear:
                self._clear()  # an error never leaves the previous preview standing as if it were current
            self._set_status("error", f"{type(exc).__name__}: {exc}")
            if self._needs_hub_offline():
                self.build_button.disabled = True

    def _set_status(self, status: str, detail: str) -> None:
        self.status_label.value = status_html(status, detail)

    def _ipython_display_(self, **kwargs: Any) -> None:
        display_with_static(self, self.static)


class ExportWouldReplace(FileExistsError):
    """An export would replace a dataset (or files) that this builder did not write since it was opened."""


def _key(target: str) -> str:
    return str(Path(target).expanduser().resolve())


def _occupied(path: Path) -> bool:
    return path.is_file() or path.is_symlink() or (path.is_dir() and any(path.iterdir()))


def _what_is_there(path: Path) -> str:
    if path.is_file():
        return "a file"
    if (path / OWNER_MARKER).is_file():
        return f"a dataset ({', '.join(sorted(p.name for p in path.iterdir() if p.name != OWNER_MARKER)[:4])})"
    return "files nbft did not write"


def _preview_part(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """The part of a builder's settings key the preview depends on: all but the replay share and tasks (the last
    two), which only Build uses."""
    return key[:-2]


def _number(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _columns_of(data: Any) -> list[str]:
    if hasattr(data, "columns"):  # a pandas DataFrame
        return [str(c) for c in data.columns]
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return list(data[0])
    if isinstance(data, dict):
        return list(data)
    return []
