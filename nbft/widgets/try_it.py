"""TryPanel: type a prompt (or pick a test example of a task) and see base, tuned and any checkpoint answer side by
side, streamed as they generate.

The answers come from :func:`nbft.evaluate.answer.answer` (one way in: a script calls the same function). The prompt
goes through the task's training template and the chat format when those boxes are ticked, so the models see what
training showed them; "what the model sees" shows that text. Generation runs in a worker thread that only updates
widget values (``TextIteratorStreamer`` inside :func:`~nbft.evaluate.answer.stream_answer`). Models given as paths
are loaded once, on the first Ask, and kept. :meth:`TryPanel.from_run_dir` works on a run directory after a
restart: the run's final model (or newest checkpoint), its base from ``run.json`` and its checkpoints.

Example::

    from nbft.widgets import TryPanel
    panel = TryPanel.from_run_dir("runs/sentiment-1", tasks=["sentiment", "qa"])
    panel                       # type a tweet, tick "training template", click Ask
    panel.ask("The film was a waste of time."); panel.wait()     # {'base': '...', 'tuned': 'negative'}
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from nbft.widgets._common import (
    LogArea,
    StaticResult,
    check_models,
    close_tree,
    display_with_static,
    placeholder_html,
    status_html,
    tidy,
)

__all__ = ["TryPanel"]

_NO_TASK = "(none: the text as typed)"
_TYPED = -1
_WIDE = {"description_width": "120px"}


def _answer_html(text: str, pending: bool = False) -> str:
    body = html.escape(text) if text else ("…" if pending else "(empty answer)")
    return (
        "<pre class='nbft-answer' style='white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px;"
        f"background:#f6f8fa;padding:6px;min-height:3em'>{body}</pre>"
    )


def _tip(widget: widgets.Widget, text: str) -> None:
    """A description for screen readers and hover: ``tooltip`` (ipywidgets 8), ``description_tooltip`` (7)."""
    if widget.has_trait("tooltip"):
        widget.tooltip = text
    elif widget.has_trait("description_tooltip"):
        widget.description_tooltip = text


def _find_setting(meta: Any, key: str) -> Any:
    """``key`` anywhere in run.json (the data's tokenization settings may sit under ``data`` or ``config``)."""
    if isinstance(meta, Mapping):
        if key in meta and isinstance(meta[key], bool):
            return meta[key]
        for value in meta.values():
            found = _find_setting(value, key)
            if found is not None:
                return found
    return None


class TryPanel(widgets.VBox):
    """Ask several models the same prompt and watch their answers side by side.

    Args:
        models: ``{name: model}`` as :func:`nbft.compare` takes them (a loaded model, ``(model, tokenizer)``, a
            folder or Hub name, a run directory, a checkpoint folder, a ``Run``), or a zero-argument function that
            returns it on the first Ask (e.g. ``lambda: {"base": base, "tuned": train_panel.model}``).
        tasks: task names or :class:`~nbft.evaluate.Task` objects whose templates and test examples are offered.
        checkpoints: ``{label: checkpoint folder}`` offered as an extra column (``from_run_dir`` fills it).
        tokenizer: for models given without one.
        chat: tick "chat format" at first (match how the models were trained).
        max_new_tokens: the answer length at first (a task's own limit applies when a task is chosen).
        n_examples: how many test examples of a task to offer.

    Attributes:
        answers: ``{name: answer}`` of the last Ask.
        prompt_text: the text the models saw (template and chat format applied; per the first model's tokenizer).
        error: the exception of the last Ask, if it failed.

    Example::

        panel = TryPanel({"base": (base, tok), "tuned": run}, tasks=["sentiment"])
        panel.ask("I loved every minute.", task="sentiment"); panel.wait()
    """

    def __init__(
        self,
        models: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        *,
        tasks: Sequence[Any] = (),
        checkpoints: Mapping[str, Any] | None = None,
        tokenizer: Any = None,
        chat: bool = False,
        max_new_tokens: int = 64,
        n_examples: int = 20,
    ) -> None:
        from nbft.evaluate import get_task

        check_models(models)
        if isinstance(tasks, str):
            tasks = [tasks]
        self.models = models
        self.tasks = {t if isinstance(t, str) else t.name: get_task(t) for t in tasks}  # unknown names fail here
        self.checkpoints = dict(checkpoints or {})
        self.tokenizer = tokenizer
        self.n_examples = n_examples
        self.answers: dict[str, str] = {}
        self.prompt_text = ""
        self.error: BaseException | None = None
        self.log_area = LogArea()
        self.static = StaticResult()
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._examples: list[dict[str, Any]] = []
        self._picked: tuple[dict[str, Any], str] | None = None  # (example, the text it put in the box)
        self._thread: threading.Thread | None = None

        self.prompt = widgets.Textarea(
            placeholder="Type a prompt, or pick a test example of a task",
            description="prompt",
            layout=widgets.Layout(width="100%", min_width="240px", height="6em"),
        )
        self.task = widgets.Dropdown(
            options=[_NO_TASK, *self.tasks], value=_NO_TASK, description="task",
        )  # fmt: skip
        self.example = widgets.Dropdown(
            options=[("(type a prompt)", _TYPED)], value=_TYPED, description="test example", disabled=True,
        )  # fmt: skip
        self.template = widgets.Checkbox(
            value=True, description="training template", indent=False,
        )  # fmt: skip
        self.chat = widgets.Checkbox(
            value=chat, description="chat format", indent=False,
        )  # fmt: skip
        self.decoding = widgets.ToggleButtons(
            options=["greedy", "sampled"], value="greedy", description="decoding",
            tooltips=["the most likely token each step (what compare() uses)", "draw tokens (temperature, top-p)"],
        )  # fmt: skip
        self.temperature = widgets.FloatText(value=0.7, step=0.1, description="temperature")  # fmt: skip
        self.seed = widgets.IntText(value=0, description="seed")
        self.max_new_tokens = widgets.IntText(
            value=max_new_tokens, description="max new tokens",
        )  # fmt: skip
        self.checkpoint = widgets.Dropdown(
            options=[("(none)", None), *((label, label) for label in self.checkpoints)], value=None,
            description="checkpoint",
            disabled=not self.checkpoints,
        )  # fmt: skip
        for w in (self.prompt, self.task, self.example, self.temperature, self.seed, self.max_new_tokens,
                  self.checkpoint, self.decoding):  # fmt: skip
            w.style = _WIDE
        tips = {
            self.prompt: "The prompt every model is asked",
            self.task: "A task's training template, stop strings and test examples",
            self.example: "A test example of the task (its reference answer is shown)",
            self.template: "Put the typed text into the task's template, as training phrased its examples",
            self.chat: "Wrap the prompt as a user turn of the tokenizer's chat template",
            self.decoding: "Greedy: the most likely token each step (as compare() decodes); sampled: drawn tokens",
            self.temperature: "Sampling temperature (sampled only)",
            self.seed: "Seed of the sampled answers (the same seed gives the same answer)",
            self.max_new_tokens: "The longest answer, in tokens (a chosen task's own limit applies)",
            self.checkpoint: "Add a checkpoint's answer as a column",
        }
        for w, tip in tips.items():
            _tip(w, tip)
        self.ask_button = widgets.Button(
            description="Ask", icon="play", button_style="primary", tooltip="Ask every model this prompt"
        )
        self.status_label = widgets.HTML(status_html("ready", "type a prompt and click Ask"))
        self.reference = widgets.HTML("")
        self.seen = widgets.HTML("")
        self.outputs = widgets.HBox(
            [widgets.HTML(placeholder_html("The answers appear here, side by side, as they are generated."))],
            layout=widgets.Layout(flex_flow="row wrap", width="100%"),
        )
        self.task.observe(self._on_task, names="value")
        self.example.observe(self._on_example, names="value")
        self.prompt.observe(self._on_prompt, names="value")
        self.decoding.observe(lambda _: self._sync_sampling(), names="value")
        self.ask_button.on_click(lambda _: self._safely(self.ask))
        self._sync_sampling()
        wrap = widgets.Layout(flex_flow="row wrap", align_items="center")
        super().__init__(
            [
                widgets.HBox([self.task, self.example], layout=wrap),
                self.prompt,
                widgets.HBox([self.template, self.chat, self.checkpoint, self.max_new_tokens], layout=wrap),
                widgets.HBox([self.decoding, self.temperature, self.seed], layout=wrap),
                widgets.HBox([self.ask_button, self.status_label], layout=wrap),
                self.reference,
                self.seen,
                self.outputs,
                self.log_area.widget,
                self.static.style_widget,
            ]
        )
        self.add_class("nbft-try-panel")
        self.add_class("nbft-panel")  # the panels' focus ring and narrow-window rules
        tidy(self)

    # ------------------------------------------------------------------------------------------------ run dirs
    @classmethod
    def from_run_dir(
        cls,
        run_dir: str | Path,
        *,
        base: Any = None,
        tasks: Sequence[Any] = (),
        **kwargs: Any,
    ) -> TryPanel:
        """A panel over a run directory, e.g. after a kernel restart: its final model (or newest checkpoint) as
        ``tuned``, its base model (``run.json``'s ``base_model``, or ``base=``) as ``base``, and its checkpoints in
        the checkpoint list. The chat format starts as the run was trained (when ``run.json`` records it). The
        folder of a demo or a sweep (``sweep.json``) opens its main run (the demo's tuned model).

        Example::

            TryPanel.from_run_dir("runs/sentiment-1", tasks=["sentiment"])
        """
        from nbft.run_dirs import main_run_dir
        from nbft.train.checkpoint import list_checkpoints

        run_dir = main_run_dir(run_dir)  # a demo's or sweep's folder: its main run (the demo's tuned model)
        meta_path = run_dir / "run.json"
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{run_dir} is not an nbft run directory (no run.json); list the runs with nbft.runs('runs')"
            )
        meta = json.loads(meta_path.read_text())
        found = list_checkpoints(run_dir)
        if (run_dir / "model" / "config.json").is_file():
            tuned: Any = run_dir / "model"
        elif found:
            tuned = found[-1]
        else:
            raise FileNotFoundError(f"{run_dir} has neither a final model/ nor a checkpoint yet: nothing to ask")
        base = base if base is not None else meta.get("base_model")
        if base is None:
            raise ValueError(
                f"{meta_path} records no base model (the run started from a model built in memory): pass "
                "base=... (a folder, a Hub name or a (model, tokenizer) pair)"
            )
        chat = _find_setting(meta, "chat_template")
        kwargs.setdefault("chat", bool(chat))
        checkpoints = {f"step {int(p.name.removeprefix('step-'))}": p for p in found}
        return cls({"base": base, "tuned": tuned}, tasks=tasks, checkpoints=checkpoints, **kwargs)

    # ------------------------------------------------------------------------------------------------ actions
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def pick_example(self, index: int) -> dict[str, Any]:
        """Put test example ``index`` of the chosen task into the prompt box (what choosing it in the list does)."""
        if not self._examples:
            raise ValueError("choose a task first: its test examples are offered then")
        if not 0 <= index < len(self._examples):
            raise IndexError(f"example {index} is out of range: the task offers {len(self._examples)} examples")
        self.example.value = index
        return self._examples[index]

    def ask(self, prompt: str | None = None, *, task: str | None = None) -> threading.Thread:
        """Ask every model (and the chosen checkpoint) in a worker thread: what Ask does. ``prompt`` and ``task``
        set the boxes first."""
        if self.running:
            raise RuntimeError("the models are still answering")
        if task is not None:
            self.task.value = task
        if prompt is not None:
            self.prompt.value = prompt
        chosen = self.tasks.get(self.task.value)
        spec: str | dict[str, Any]
        if self._picked is not None and self.prompt.value == self._picked[1]:
            spec, template = self._picked[0], True
        else:
            spec, template = self.prompt.value, self.template.value
        if isinstance(spec, str) and not spec.strip():
            raise ValueError("the prompt is empty: type a prompt, or pick a test example of a task")
        if self.max_new_tokens.value < 1:
            raise ValueError(f"max new tokens must be at least 1, got {self.max_new_tokens.value}")
        settings = {
            "task": chosen,
            "template": template,
            "chat": self.chat.value,
            # the box is the limit when no task is chosen; a task keeps its own (as compare() generates)
            "max_new_tokens": None if chosen is not None else self.max_new_tokens.value,
            "sample": self.decoding.value == "sampled",
            "temperature": self.temperature.value,
            "seed": self.seed.value,
        }
        self.error = None
        self.answers = {}
        self.log_area.clear()
        self.ask_button.disabled = True
        self._set_status("running", "loading the models" if not self._loaded else "generating")
        self._thread = threading.Thread(target=self._work, args=(spec, settings), name="nbft-try", daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> dict[str, str]:
        """Block until the answers are complete; return them (re-raise the error if the Ask failed)."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.answers

    def close(self) -> None:
        """Close the panel and let go of the models it loaded or was given."""
        close_tree(self)
        self.models, self._loaded, self.checkpoints = {}, {}, {}
        super().close()

    def static_html(self) -> str:
        """The HTML that the saved notebook keeps for this panel (the prompt and the answers)."""
        return self.static.html

    # ------------------------------------------------------------------------------------------------ handlers
    def _on_task(self, change: Any) -> None:
        task = self.tasks.get(change["new"])
        self._picked = None
        self.reference.value = ""
        if task is None:
            self._examples = []
            self.example.options = [("(type a prompt)", _TYPED)]
            self.example.disabled = True
            return
        try:
            self._examples = task.sample(self.n_examples)
        except Exception as exc:  # the task's data may be unavailable offline: typing still works
            self._examples = []
            self._set_status("error", f"test examples of {task.name!r} not available: {exc}")
        labels = [(f"{i + 1}: {' '.join(task.template.render(ex).split())[:70]}", i) for i, ex in
                  enumerate(self._examples)]  # fmt: skip
        self.example.options = [("(type a prompt)", _TYPED), *labels]
        self.example.value = _TYPED
        self.example.disabled = not self._examples
        self.template.disabled = len(task.template.fields) != 1

    def _on_example(self, change: Any) -> None:
        index = change["new"]
        task = self.tasks.get(self.task.value)
        if index == _TYPED or task is None or index is None:
            self._picked = None
            self.reference.value = ""
            return
        example = self._examples[index]
        text = task.template.render(example)
        self._picked = (example, text)
        self.prompt.value = text
        ref = html.escape(task.reference(example))
        self.reference.value = f"<div class='nbft-reference' style='font-size:12px'><b>reference:</b> {ref}</div>"

    def _on_prompt(self, change: Any) -> None:
        if self._picked is not None and change["new"] != self._picked[1]:
            self._picked = None  # edited: from now on it is typed text
            self.reference.value = ""

    def _sync_sampling(self) -> None:
        sampled = self.decoding.value == "sampled"
        self.temperature.disabled = self.seed.disabled = not sampled

    # ------------------------------------------------------------------------------------------------ worker
    def _specs(self) -> dict[str, Any]:
        models = dict(self.models() if callable(self.models) else self.models)
        label = self.checkpoint.value
        if label is not None:
            models[label] = self.checkpoints[label]
        return models

    def _work(self, spec: str | dict[str, Any], settings: dict[str, Any]) -> None:
        from nbft._quiet import quiet
        from nbft.evaluate.answer import answer, load_models, make_prompt

        try:
            with quiet(sink=self.log_area.add):
                specs = self._specs()
                missing = {n: s for n, s in specs.items() if n not in self._loaded}
                if missing:
                    self._loaded.update(load_models(missing, self.tokenizer))
                models = {n: self._loaded[n] for n in specs}
                first_tok = next(iter(models.values()))[1]
                shown = make_prompt(spec, first_tok, task=settings["task"], template=settings["template"],
                                    chat=settings["chat"])  # fmt: skip
                self.prompt_text = shown.text
                self.seen.value = (
                    "<details class='nbft-seen' open><summary style='font-size:12px'>what the model sees</summary>"
                    + _answer_html(shown.text) + "</details>"
                )  # fmt: skip
                cells = {name: widgets.HTML(_answer_html("", pending=True)) for name in models}
                self.outputs.children = [
                    widgets.VBox(
                        [widgets.HTML(f"<b>{html.escape(name)}</b>"), cell],
                        layout=widgets.Layout(flex="1 1 220px", min_width="200px", margin="0 6px 6px 0"),
                    )
                    for name, cell in cells.items()
                ]
                self._set_status("running", "generating")

                def show(name: str, text: str) -> None:
                    cells[name].value = _answer_html(text, pending=True)
                    self.answers[name] = text

                answers = answer(models, spec, on_text=show, **settings)
                for name, text in answers.items():
                    cells[name].value = _answer_html(text)
            self.answers = answers
            mode = "sampled" if settings["sample"] else "greedy"
            self._set_status("done", f"{len(answers)} answer{'s' if len(answers) != 1 else ''} ({mode})")
            self.static.update(self._static_body(), "\n".join(f"{n}: {a}" for n, a in answers.items()))
        except Exception as exc:
            self.error = exc
            self._set_status("failed", f"{type(exc).__name__}: {exc}")
        finally:
            self.ask_button.disabled = False

    def _static_body(self) -> str:
        cells = "".join(
            f"<td style='vertical-align:top;padding:4px 8px'><b>{html.escape(n)}</b>{_answer_html(a)}</td>"
            for n, a in self.answers.items()
        )
        return f"{self.seen.value}{self.reference.value}<table><tr>{cells}</tr></table>{self.log_area.html()}"

    def _safely(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except Exception as exc:
            self._set_status("error", f"{type(exc).__name__}: {exc}")

    def _set_status(self, status: str, detail: str) -> None:
        self.status_label.value = status_html(status, detail)

    def _ipython_display_(self, **kwargs: Any) -> None:
        display_with_static(self, self.static, lambda: super(TryPanel, self)._ipython_display_(**kwargs))
