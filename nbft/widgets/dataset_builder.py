"""DatasetBuilder: choose a task, its instruction phrasings, the data, the split and the seed; see the result.

Build calls :func:`nbft.data.build_instruction_dataset` (the function a script calls) and shows a preview table,
the split sizes, :func:`nbft.data.length_stats` and a token-length histogram. The result is ``builder.dataset``.

Example::

    from nbft.widgets import DatasetBuilder
    builder = DatasetBuilder(task="sentiment", tokenizer=tok)
    builder                        # pick templates, move the sliders, click Build
    data = builder.dataset         # DatasetDict: train / validation / test
"""

from __future__ import annotations

import html
import logging
from typing import Any

import ipywidgets as widgets

__all__ = ["DatasetBuilder"]

logger = logging.getLogger(__name__)

_WIDE = {"description_width": "110px"}
_HIST_EXAMPLES = 2000  # enough for the shape of a histogram; tokenizing all of a big set would only cost time


def _tasks() -> list[str]:
    from nbft.templates import list_templates

    return sorted({t.task for t in list_templates()})


def _template_options(task: str) -> list[tuple[str, str]]:
    from nbft.templates import list_templates

    options = []
    for t in list_templates(task):
        first = next((ln for ln in t.instruction.splitlines() if ln.strip() and "{{" not in ln), t.instruction)
        options.append((f"{t.id}: {first.strip()[:60]}", t.id))
    return options


def _describe(source: Any) -> str:
    rows = getattr(source, "num_rows", None)
    if rows is None and hasattr(source, "__len__"):
        rows = len(source)
    if isinstance(rows, dict):  # a DatasetDict reports rows per split
        rows = sum(rows.values())
    return f"{type(source).__name__}" + (f", {rows} rows" if rows is not None else "")


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
    fig = Figure(figsize=(6, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    if rows:
        sns.histplot(pd.DataFrame(rows), x="tokens", hue="split", multiple="stack", bins=30, ax=ax)
    ax.set_xlabel("prompt + completion tokens per example")
    ax.set_title("Token lengths (choose max_length above the long tail)")
    return fig


class DatasetBuilder(widgets.VBox):
    """Pick task, templates, source, split and seed; Build makes an instruction ``DatasetDict``.

    Args:
        source: your own data (anything :func:`nbft.data.load_source` takes: DataFrame, list of dicts, file path,
            ``datasets.Dataset``). Left out: the task's built-in data, from the task's own train and validation
            splits (its test split stays for :func:`nbft.compare`), or a file path / Hub name typed into the
            *source* box.
        task: the task selected at first.
        tokenizer: counts tokens for the length statistics and histogram (left out: no token statistics).
        n: how many examples to keep (0: all).
        split: train, validation and test fractions.
        seed: the same seed gives the same dataset.

    Attributes:
        dataset: the last built ``DatasetDict`` (``None`` before Build).

    Example::

        builder = DatasetBuilder(my_dataframe, task="sentiment", tokenizer=tok)
        builder.build()              # what the Build button does; returns builder.dataset
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
    ) -> None:
        self.source = source
        self.tokenizer = tokenizer
        self.dataset: Any = None
        self.stats: Any = None
        tasks = _tasks()
        self.task = widgets.Dropdown(options=tasks, value=task if task in tasks else tasks[0], description="task")
        self.templates = widgets.SelectMultiple(description="templates", rows=4, layout={"width": "560px"})
        given = f"your data ({_describe(source)})" if source is not None else ""
        self.source_text = widgets.Text(
            value="",
            placeholder=given or "empty: the task's built-in data; or a file path / Hub dataset name",
            description="source",
            layout={"width": "560px"},
        )
        self.n = widgets.IntText(value=n, description="examples (0=all)")
        self.train_frac = widgets.FloatSlider(value=split[0], min=0.5, max=0.95, step=0.05, description="train")
        self.val_frac = widgets.FloatSlider(value=split[1], min=0.0, max=0.3, step=0.025, description="validation")
        self.test_label = widgets.Label()
        self.seed = widgets.IntText(value=seed, description="seed")
        for w in (self.task, self.templates, self.source_text, self.n, self.train_frac, self.val_frac, self.seed):
            w.style = _WIDE
        self.build_button = widgets.Button(description="Build", icon="cogs", button_style="primary")
        self.status_label = widgets.HTML("")
        self.preview = widgets.HTML("")
        self.stats_html = widgets.HTML("")
        self.histogram = widgets.Image(format="png")

        self.task.observe(lambda _: self._fill_templates(), names="value")
        self.train_frac.observe(lambda _: self._show_test(), names="value")
        self.val_frac.observe(lambda _: self._show_test(), names="value")
        self.build_button.on_click(lambda _: self._safely(self.build))
        self._fill_templates()
        self._show_test()
        super().__init__(
            [
                self.task,
                self.templates,
                self.source_text,
                widgets.HBox([self.n, self.seed]),
                widgets.HBox([self.train_frac, self.val_frac, self.test_label]),
                widgets.HBox([self.build_button, self.status_label]),
                self.preview,
                self.stats_html,
                self.histogram,
            ]
        )
        self.add_class("nbft-dataset-builder")

    # ------------------------------------------------------------------------------------------- state
    @property
    def split(self) -> tuple[float, float, float]:
        train, val = round(self.train_frac.value, 4), round(self.val_frac.value, 4)
        return train, val, round(1.0 - train - val, 4)

    def _fill_templates(self) -> None:
        options = _template_options(self.task.value)
        self.templates.options = options
        self.templates.value = tuple(v for _, v in options)  # all phrasings: instruction diversity, as in FLAN

    def _show_test(self) -> None:
        test = self.split[2]
        self.test_label.value = f"test {test:.3f}" if test > 0 else "test: none left, lower train or validation"

    # ------------------------------------------------------------------------------------------- build
    def load(self) -> Any:
        """The examples Build starts from: the typed path/Hub name, else the given source, else ``None`` (the
        task's built-in data, split by the task)."""
        from nbft.data import load_source

        typed = self.source_text.value.strip()
        if typed:
            return load_source(typed)
        return self.source

    def build(self) -> Any:
        """Build the dataset with :func:`nbft.data.build_instruction_dataset` (what Build does) and show it."""
        from nbft.data import build_instruction_dataset, length_stats

        if not self.templates.value:
            raise ValueError("select at least one template")
        self.status_label.value = "<i>building…</i>"
        source = self.load()
        if source is None:  # built-in data: the task's train/validation splits, never its test split
            data = build_instruction_dataset(
                task=self.task.value, templates=list(self.templates.value), n=self.n.value or None, seed=self.seed.value
            )
        else:
            data = build_instruction_dataset(
                source,
                list(self.templates.value),
                task=self.task.value,
                split=self.split,
                seed=self.seed.value,
                max_examples=self.n.value or None,
            )
        self.dataset = data
        sizes = ", ".join(f"{name} {len(ds)}" for name, ds in data.items())
        self.status_label.value = f"<b>built</b>: {html.escape(sizes)}"
        self.preview.value = self._preview_html(data)
        if self.tokenizer is not None:
            from nbft.report import figure_to_png

            self.stats = length_stats(data, self.tokenizer)
            self.stats_html.value = self.stats.round(1).to_html(index=False, classes="nbft-length-stats")
            self.histogram.value = figure_to_png(length_histogram(data, self.tokenizer))
        return data

    @staticmethod
    def _preview_html(data: Any, rows: int = 5) -> str:
        frame = data["train"].select(range(min(rows, len(data["train"])))).to_pandas()
        frame = frame[["template_id", "prompt", "completion"]]
        # pre-wrap keeps the template's line breaks visible, which is what a reader needs to check
        table = frame.to_html(index=False, escape=True, classes="nbft-preview").replace(
            "<td>", '<td style="white-space: pre-wrap; text-align: left; vertical-align: top">'
        )
        return f"<b>First {len(frame)} training examples</b>{table}"

    def _safely(self, action: Any) -> None:
        try:
            action()
        except Exception as exc:
            logger.warning("DatasetBuilder: %s", exc)
            message = html.escape(f"{type(exc).__name__}: {exc}")
            self.status_label.value = f'<span style="color:#cf222e">{message}</span>'
